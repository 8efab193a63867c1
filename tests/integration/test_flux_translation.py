"""EditDirection + CutLossGuidance (pix2pix-zero / pix2pix-zeroCon) on FLUX-layout models: the joint
attention's image-to-text probabilities as the maps (host.backbone's FLUX adapter), the Euler
inversion, distilled guidance at cfg 1 and true CFG."""
from __future__ import annotations

import pytest
import torch

from pack_testing import FLUX_SCHNELL, GraphError, flux_loaders, needs_narrow_flux, relative_error

pytestmark = pytest.mark.integration

CAPTION = "a photo of a cat"
GUIDANCE = {"cfg": 1.0, "lambda_xa": 1.0, "lambda_cut": 3.0, "step_size": 0.1, "guidance_start_step": 0,
            "guidance_end_step": 1000, "num_patches": 64, "tau": 0.07, "offload_to_cpu": False}


def flux_base(unet: str, steps: int = 3, distilled: bool = True) -> dict:
    """A model-made latent, inverted (Euler, cfg 1), and its replay with the Inversion Replay Sampler."""
    prompt, model, clip, _ = flux_loaders(unet)
    prompt.update({
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": CAPTION, "clip": clip}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 7, "steps": 3, "cfg": 1.0 if distilled else 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "8": {"class_type": "DDIMInvert", "inputs": {
            "model": model, "positive": ["4", 0], "latent": ["7", 0], "mode": "ddim", "steps": steps, "cfg": 1.0,
            "scheduler": "simple", "skip_steps": 0, "seed": 0, "noise_regularization": False, "lambda_ac": 20.0,
            "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5}},
        "9": {"class_type": "DisableNoise", "inputs": {}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["8", 1], "exact_final_step": True}},
        "12": {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["4", 0],
            "negative": ["4", 0], "sampler": ["11", 0], "sigmas": ["8", 2], "latent_image": ["8", 0]}},
        "13": {"class_type": "Capture", "inputs": {"key": "replay", "value": ["12", 0]}},
    })
    return prompt


def add_flux_edit(prompt: dict, name: str, node: int, *, multiplier: float = 1.0, negative: bool = False,
                  **guidance) -> None:
    model, clip = prompt["8"]["inputs"]["model"], prompt["4"]["inputs"]["clip"]
    prompt[str(node)] = {"class_type": "EditDirection", "inputs": {
        "clip": clip, "source": "cat", "target": "dog", "caption": CAPTION, "multiplier": multiplier,
        "source_sentences": "", "target_sentences": ""}}
    inputs = {"model": model, "positive": ["4", 0], "direction": [str(node), 0], **{**GUIDANCE, **guidance}}
    if negative:
        inputs["negative"] = ["4", 0]
    prompt[str(node + 1)] = {"class_type": "CutLossGuidance", "inputs": inputs}
    prompt[str(node + 2)] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["9", 0], "guider": [str(node + 1), 0], "sampler": ["10", 0], "sigmas": ["8", 2],
        "latent_image": ["8", 0]}}
    prompt[str(node + 3)] = {"class_type": "Capture", "inputs": {"key": name, "value": [str(node + 2), 0]}}


@pytest.fixture(scope="module")
def flux_unet(host):
    from pack_testing import flux_model_for_host

    return flux_model_for_host()


def test_zero_edit_is_the_euler_replay_and_guidance_edits(graph, flux_unet):
    """No direction, no guidance: the guider's lockstep passes with the stock euler sampler start from
    the inverted latent at sigma 1 (no noise scaling erases it) and retrace the Euler replay; the
    direction and the guidance each change the result."""
    prompt = flux_base(flux_unet)
    add_flux_edit(prompt, "zero", 20, multiplier=0.0, step_size=0.0)
    add_flux_edit(prompt, "guided_only", 30, multiplier=0.0)
    add_flux_edit(prompt, "edit", 40)
    out = graph.run(prompt)
    replay = out["replay"]["samples"]
    assert relative_error(out["zero"]["samples"], replay) < 1e-5, relative_error(out["zero"]["samples"], replay)
    for name in ("guided_only", "edit"):  # the wide random model (0.3.75) moves least: ~5e-4 for guided_only
        assert torch.isfinite(out[name]["samples"]).all()
        assert relative_error(out[name]["samples"], replay) > 1e-4, name


def test_true_cfg_on_a_model_without_distilled_guidance(graph):
    needs_narrow_flux()
    prompt = flux_base(FLUX_SCHNELL, distilled=False)
    add_flux_edit(prompt, "edit", 40, negative=True, cfg=2.5)
    out = graph.run(prompt)
    assert torch.isfinite(out["edit"]["samples"]).all()


def test_a_negative_a_distilled_model_ignores_is_refused(graph, flux_unet):
    prompt = flux_base(flux_unet)
    add_flux_edit(prompt, "edit", 40, negative=True)
    with pytest.raises(GraphError, match="negative: this model is guidance-distilled"):
        graph.run(prompt)


def test_cfg_above_one_needs_a_negative(graph, flux_unet):
    prompt = flux_base(flux_unet)
    add_flux_edit(prompt, "edit", 40, cfg=2.0)
    with pytest.raises(GraphError, match="negative: cfg is 2.0, so both passes need a negative"):
        graph.run(prompt)
