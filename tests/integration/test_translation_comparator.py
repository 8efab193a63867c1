"""The bench's comparator (bench/translation.py: pix2pix-zero's official editing loop as plain PyTorch over the
same UNet) and CutLossGuidance with ``lambda_cut`` 0 give the same edit on the SD1.5 test checkpoint, so the
bench's time and memory ratios between them compare equal work (issue 23)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pack_testing import checkpoint_path, relative_error

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"
CAPTION = "a photo of a cat"
STEPS = 3

BENCH_TRANSLATION = Path(__file__).resolve().parents[2] / "bench" / "translation.py"


@pytest.fixture(scope="module")
def comparator(graph):
    spec = importlib.util.spec_from_file_location("bench_translation", BENCH_TRANSLATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register()
    return module


def test_official_loop_and_cut_loss_guidance_without_the_cut_loss_give_the_same_edit(graph, comparator):
    checkpoint_path(SD15)
    prompt = {  # a model-made latent, inverted (ddim, cfg 1); the caption as positive and negative
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": CAPTION, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "DDIMInvert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["5", 0], "mode": "ddim", "steps": STEPS, "cfg": 1.0,
            "scheduler": "ddim_uniform", "skip_steps": 0, "seed": 0, "noise_regularization": False,
            "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5}},
        "20": {"class_type": "EditDirection", "inputs": {
            "clip": ["1", 1], "source": "cat", "target": "dog", "caption": CAPTION, "multiplier": 1.0,
            "source_sentences": "", "target_sentences": ""}},
        "21": {"class_type": "CutLossGuidance", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "direction": ["20", 0], "cfg": 5.0,
            "lambda_xa": 1.0, "lambda_cut": 0.0, "step_size": 0.1, "guidance_start_step": 0,
            "guidance_end_step": 1000, "num_patches": 256, "tau": 0.07, "offload_to_cpu": False}},
        "22": {"class_type": "DisableNoise", "inputs": {}},
        "23": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["22", 0], "guider": ["21", 0], "sampler": ["23", 0], "sigmas": ["6", 2],
            "latent_image": ["6", 0]}},
        "25": {"class_type": "Capture", "inputs": {"key": "pack", "value": ["24", 0]}},
    }
    for name, node, step_size in (("official", 30, 0.1), ("official_unguided", 32, 0.0)):
        prompt[str(node)] = {"class_type": "BenchOfficialTranslation", "inputs": {
            "ckpt_name": SD15, "latent": ["6", 0], "sigmas": ["6", 2], "positive": ["2", 0], "negative": ["2", 0],
            "direction": ["20", 0], "cfg": 5.0, "step_size": step_size, "run": 0}}
        prompt[str(node + 1)] = {"class_type": "Capture", "inputs": {"key": name, "value": [str(node), 0]}}
    out = graph.run(prompt)
    pack, official = out["pack"]["samples"], out["official"]["samples"]
    difference = relative_error(pack, official)
    assert difference < 1e-4, difference
    # the guidance step is part of what is compared: without it the official edit is far from the pack's
    assert relative_error(pack, out["official_unguided"]["samples"]) > 100 * max(difference, 1e-6)
    assert len(comparator.BenchOfficialTranslation.last_losses) == STEPS
