"""DDIMInvert + InversionReplaySampler on rectified-flow (FLUX-layout) models, through ComfyUI's own
executor and stock loaders: the Euler inversion of the flow ODE and its exact-replay counterpart."""
from __future__ import annotations

import pytest
import torch

from pack_testing import (FLUX_SCHNELL, GraphError, flux_loaders, flux_model_for_host, needs_narrow_flux,
                          relative_error)

pytestmark = pytest.mark.integration


def flow_roundtrip(unet: str, mode: str, steps: int, *, cfg: float = 1.0, skip: int = 0, guidance: float = -1.0,
                   scheduler: str = "simple", convention: str = "diffusers", regularize: bool = False,
                   size: int = 64, replay: bool = True, sample_guidance: float | None = 3.5) -> dict:
    """A latent sampled from the model itself -> DDIMInvert -> SamplerCustom(Inversion Replay Sampler)."""
    prompt, model, clip, vae = flux_loaders(unet)
    positive = ["4", 0]
    prompt.update({
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat", "clip": clip}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    })
    if sample_guidance is not None:
        prompt["7"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": sample_guidance}}
        positive = ["7", 0]
    prompt["8"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 7, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": positive, "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}}
    prompt["9"] = {"class_type": "DDIMInvert", "inputs": {
        "model": model, "positive": positive, "negative": ["5", 0], "latent": ["8", 0], "mode": mode, "steps": steps,
        "cfg": cfg, "scheduler": scheduler, "skip_steps": skip, "seed": 3, "noise_regularization": regularize,
        "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5,
        "convention": convention, "guidance": guidance}}
    prompt["20"] = {"class_type": "Capture", "inputs": {"key": "original", "value": ["8", 0]}}
    prompt["21"] = {"class_type": "Capture", "inputs": {"key": "inversion", "value": ["9", 1]}}
    prompt["22"] = {"class_type": "Capture", "inputs": {"key": "inverted", "value": ["9", 0]}}
    if replay:
        prompt["10"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["9", 1],
                                                                           "exact_final_step": True}}
        prompt["11"] = {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": False, "noise_seed": 0, "cfg": cfg, "positive": positive,
            "negative": ["5", 0], "sampler": ["10", 0], "sigmas": ["9", 2], "latent_image": ["9", 0]}}
        prompt["23"] = {"class_type": "Capture", "inputs": {"key": "reconstruction", "value": ["11", 0]}}
    return prompt


@pytest.fixture(scope="module")
def flux_unet(host):
    return flux_model_for_host()


def test_exact_replay_reconstructs_the_input(graph, flux_unet):
    out = graph.run(flow_roundtrip(flux_unet, "edit_friendly_ddpm", steps=6, skip=1))
    original, recon = out["original"]["samples"], out["reconstruction"]["samples"]
    inversion = out["inversion"]
    assert inversion.process == "rectified_flow" and inversion.model_family == "Flux"
    assert len(inversion.noise_maps) == 5 and len(inversion.latents) == 6
    assert torch.isfinite(recon).all()
    assert relative_error(recon, original) < 1e-4, relative_error(recon, original)
    # the inverted latent is noise at the start level, far from the input
    assert relative_error(out["inverted"]["samples"], original) > 0.3


def test_euler_inversion_ends_at_sigma_one_and_its_error_falls_as_steps_grow(graph, flux_unet):
    """The full schedule starts at sigma 1 (pure noise), where a stock sampler's noise scaling would
    erase the latent (and its inverse scaling divide by zero): the inversion and its replay are finite,
    and the reconstruction error of the deterministic inversion falls with the number of steps."""
    errors = []
    for steps in (3, 6, 12):
        out = graph.run(flow_roundtrip(flux_unet, "ddim", steps=steps))
        inversion = out["inversion"]
        assert float(inversion.sigmas[0]) == pytest.approx(1.0)
        noise = out["inverted"]["samples"]
        assert torch.isfinite(noise).all() and float(noise.abs().mean()) > 0
        errors.append(relative_error(out["reconstruction"]["samples"], out["original"]["samples"]))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_exact_replay_with_true_cfg_on_a_schnell_layout(graph):
    needs_narrow_flux()
    out = graph.run(flow_roundtrip(FLUX_SCHNELL, "edit_friendly_ddpm", steps=5, cfg=2.5, sample_guidance=None))
    assert relative_error(out["reconstruction"]["samples"], out["original"]["samples"]) < 1e-4


def test_guidance_input_sets_the_distilled_guidance_of_the_inversion(graph, flux_unet):
    base = graph.run(flow_roundtrip(flux_unet, "ddim", steps=3, replay=False))
    low = graph.run(flow_roundtrip(flux_unet, "ddim", steps=3, guidance=1.0, replay=False))
    same = graph.run(flow_roundtrip(flux_unet, "ddim", steps=3, guidance=3.5, replay=False))
    assert relative_error(low["inverted"]["samples"], base["inverted"]["samples"]) > 1e-3
    assert torch.allclose(same["inverted"]["samples"], base["inverted"]["samples"])


def test_guidance_is_refused_for_a_model_without_distilled_guidance(graph):
    needs_narrow_flux()
    with pytest.raises(GraphError, match="guidance: 1.0 is set but this model takes no distilled guidance"):
        graph.run(flow_roundtrip(FLUX_SCHNELL, "ddim", steps=3, guidance=1.0, replay=False, sample_guidance=None))


@pytest.mark.parametrize("setting, message", [
    ({"regularize": True}, "noise_regularization: pix2pix-zero's regularisation"),
    ({"convention": "pix2pix_zero", "scheduler": "ddim_uniform"}, "convention: pix2pix_zero is defined on the DDIM"),
])
def test_eps_model_only_settings_are_refused_on_flow_models(graph, flux_unet, setting, message):
    with pytest.raises(GraphError, match=message):
        graph.run(flow_roundtrip(flux_unet, "ddim", steps=3, replay=False, **setting))
