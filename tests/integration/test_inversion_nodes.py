"""DDIMInvert + InversionReplaySampler as graphs run by ComfyUI's own executor, on the test
checkpoints of both model families."""
from __future__ import annotations

import pytest
import torch

from pack_testing import GraphError, checkpoint_path, relative_error

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"
SDXL = "test_sdxl.safetensors"


def roundtrip_prompt(ckpt: str, mode: str, steps: int, cfg: float, skip: int = 0, *, size: int = 64,
                     v_prediction: bool = False, replay_ckpt: str | None = None, replay_size: int | None = None,
                     scheduler_sigmas: bool = False, seed: int = 0, negative: bool = True,
                     regularize: bool = False) -> dict:
    """image latent (sampled from the model itself) -> DDIMInvert -> SamplerCustom(replay)."""
    model = ["1", 0]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
    }
    if v_prediction:
        prompt["20"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "v_prediction", "zsnr": False}}
        model = ["20", 0]
    invert_inputs = {
        "model": model, "positive": ["2", 0], "latent": ["5", 0], "mode": mode, "steps": steps, "cfg": cfg,
        "scheduler": "ddim_uniform", "skip_steps": skip, "seed": seed, "noise_regularization": regularize,
        "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5,
    }
    if negative:
        invert_inputs["negative"] = ["3", 0]
    prompt["6"] = {"class_type": "DDIMInvert", "inputs": invert_inputs}
    prompt["7"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["6", 1], "exact_final_step": True}}
    replay_model, replay_pos, replay_neg, replay_latent = model, ["2", 0], ["3", 0], ["6", 0]
    if replay_ckpt is not None:
        prompt["30"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": replay_ckpt}}
        prompt["31"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat", "clip": ["30", 1]}}
        replay_model, replay_pos, replay_neg = ["30", 0], ["31", 0], ["31", 0]
    if replay_size is not None:
        prompt["32"] = {"class_type": "EmptyLatentImage", "inputs": {"width": replay_size, "height": replay_size, "batch_size": 1}}
        replay_latent = ["32", 0]
    sigmas = ["6", 2]
    if scheduler_sigmas:
        prompt["33"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "karras", "steps": steps, "denoise": 1.0}}
        sigmas = ["33", 0]
    prompt["8"] = {"class_type": "SamplerCustom", "inputs": {
        "model": replay_model, "add_noise": False, "noise_seed": 0, "cfg": cfg, "positive": replay_pos,
        "negative": replay_neg, "sampler": ["7", 0], "sigmas": sigmas, "latent_image": replay_latent}}
    prompt["9"] = {"class_type": "Capture", "inputs": {"key": "original", "value": ["5", 0]}}
    prompt["10"] = {"class_type": "Capture", "inputs": {"key": "reconstruction", "value": ["8", 0]}}
    prompt["11"] = {"class_type": "Capture", "inputs": {"key": "inversion", "value": ["6", 1]}}
    prompt["12"] = {"class_type": "Capture", "inputs": {"key": "inverted", "value": ["6", 0]}}
    return prompt


@pytest.fixture(scope="module", params=[SD15, SDXL])
def ckpt(request):
    checkpoint_path(request.param)
    return request.param


@pytest.mark.parametrize("v_prediction", [False, True])
def test_edit_friendly_replay_reconstructs_the_input(graph, ckpt, v_prediction):
    out = graph.run(roundtrip_prompt(ckpt, "edit_friendly_ddpm", steps=10, cfg=3.5, skip=3, v_prediction=v_prediction))
    original, recon = out["original"]["samples"], out["reconstruction"]["samples"]
    assert torch.isfinite(recon).all()
    assert relative_error(recon, original) < 1e-4, relative_error(recon, original)
    inversion = out["inversion"]
    assert inversion.mode == "edit_friendly_ddpm" and inversion.start_step == 3
    assert len(inversion.noise_maps) == 7 and len(inversion.latents) == 8
    # the inverted latent is noisy: far from the input
    assert relative_error(out["inverted"]["samples"], original) > 0.5


def test_edit_friendly_replay_under_other_conditioning_edits(graph, ckpt):
    prompt = roundtrip_prompt(ckpt, "edit_friendly_ddpm", steps=10, cfg=3.5, skip=3)
    prompt["40"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a watercolor of a blue dog", "clip": ["1", 1]}}
    prompt["8"]["inputs"]["positive"] = ["40", 0]
    out = graph.run(prompt)
    assert relative_error(out["reconstruction"]["samples"], out["original"]["samples"]) > 1e-2


@pytest.mark.parametrize("v_prediction", [False, True])
def test_ddim_reconstruction_error_falls_as_steps_grow(graph, v_prediction):
    checkpoint_path(SD15)
    errors = []
    for steps in (4, 8, 20):
        out = graph.run(roundtrip_prompt(SD15, "ddim", steps=steps, cfg=1.0, v_prediction=v_prediction))
        errors.append(relative_error(out["reconstruction"]["samples"], out["original"]["samples"]))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_stock_ddim_sampler_replays_a_ddim_inversion_like_the_replay_sampler(graph):
    """For mode 'ddim' the stock KSamplerSelect('ddim') works too: same steps, same result."""
    checkpoint_path(SD15)
    prompt = roundtrip_prompt(SD15, "ddim", steps=4, cfg=1.0)
    ours = graph.run(prompt)["reconstruction"]["samples"]
    prompt["41"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    prompt["8"]["inputs"]["sampler"] = ["41", 0]
    stock = graph.run(prompt)["reconstruction"]["samples"]
    assert relative_error(stock, ours) < 1e-5


def _stock_sampler_run(patcher, clip, loop, out: dict) -> torch.Tensor:
    """``loop`` (a k-diffusion style sampler function) run by a stock KSAMPLER through ComfyUI's own
    sample_custom, from the graph's original latent, under the graph's caption at cfg 1, on the
    inversion's schedule: the model evaluations the node's inversion must equal."""
    import comfy.sample
    import comfy.samplers

    with torch.inference_mode():
        tokens = clip.tokenize("a photo of a red cat")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        positive = [[cond, {"pooled_output": pooled}]]
        original = out["original"]["samples"]
        return comfy.sample.sample_custom(
            patcher, torch.zeros_like(original), 1.0, comfy.samplers.KSAMPLER(loop),
            out["inversion"].sigmas, positive, positive, original)


def test_ddim_inversion_node_matches_diffusers_on_the_test_model(graph):
    """The node's inversion equals diffusers' DDIMInverseScheduler stepping with the same model's
    predictions (ComfyUI's own guided x0, run through a stock KSAMPLER)."""
    diffusers = pytest.importorskip("diffusers")
    import comfy.sd

    steps = 10
    out = graph.run(roundtrip_prompt(SD15, "ddim", steps=steps, cfg=1.0))

    patcher, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint_path(SD15)), output_vae=False)
    sampling = patcher.get_model_object("model_sampling")
    scheduler = diffusers.DDIMInverseScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=True, steps_offset=1,
    )
    scheduler.set_timesteps(steps)

    def diffusers_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for t in scheduler.timesteps:  # x is the VP latent; the UNet sees it at timestep t
            sigma = sampling.sigmas[int(t)].to(x.device).reshape(1)
            x_in = x * (sigma**2 + 1) ** 0.5  # the sigma-space latent whose model input is x
            eps = (x_in - model(x_in, sigma.expand(x.shape[0]), **extra_args)) / sigma
            x = scheduler.step(eps, t, x).prev_sample
        return x * (float(sampling.sigmas[int(scheduler.timesteps[-1])]) ** 2 + 1) ** 0.5

    reference = _stock_sampler_run(patcher, clip, diffusers_inversion, out)
    ours = out["inverted"]["samples"]
    assert relative_error(ours, reference) < 1e-4, relative_error(ours, reference)
    assert relative_error(ours, out["original"]["samples"]) > 0.5  # and it did move


def test_pix2pix_zero_convention_equals_the_official_loop_on_the_test_model(graph):
    """convention pix2pix_zero: the official loop (labels r+1 .. (N-2)r+1, the UNet at the current
    level, start at alphas_cumprod[r], end at alphas_cumprod[(N-1)r]) written out in VP latents with
    the same model's eps through a stock KSAMPLER; the edit reads x_T at label (N-1)r+1."""
    import comfy.sd

    steps = 10
    prompt = roundtrip_prompt(SD15, "ddim", steps=steps, cfg=1.0)
    prompt["6"]["inputs"]["convention"] = "pix2pix_zero"
    out = graph.run(prompt)

    patcher, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint_path(SD15)), output_vae=False)
    sampling = patcher.get_model_object("model_sampling")
    alphas_cumprod = 1.0 / (sampling.sigmas.double() ** 2 + 1.0)
    stride = 1000 // steps

    def official_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
        z = x.double()  # the clean VP latent, read as the latent at alphas_cumprod[stride]
        for t in range(stride + 1, (steps - 2) * stride + 2, stride):
            sigma = sampling.sigmas[t].to(x.device).reshape(1)
            x_in = (z * (sigma.double() ** 2 + 1) ** 0.5).to(x.dtype)  # sigma-space latent whose UNet input is z
            eps = ((x_in - model(x_in, sigma.expand(x.shape[0]), **extra_args)) / sigma).double()
            a_cur, a_next = alphas_cumprod[t - 1], alphas_cumprod[t - 1 + stride]
            x0 = (z - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
            z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return (z * (float(sigmas[0]) ** 2 + 1) ** 0.5).to(x.dtype)  # read at the edit's first label

    reference = _stock_sampler_run(patcher, clip, official_inversion, out)
    ours = out["inverted"]["samples"]
    assert relative_error(ours, reference) < 1e-4, relative_error(ours, reference)
    diffusers_convention = graph.run(roundtrip_prompt(SD15, "ddim", steps=steps, cfg=1.0))["inverted"]["samples"]
    assert relative_error(ours, diffusers_convention) > 1e-3
    # replaying it back lands near the input (the two lowest levels were never inverted)
    assert relative_error(out["reconstruction"]["samples"], out["original"]["samples"]) < 0.5


@pytest.mark.parametrize("changes, message", [
    ({"mode": "edit_friendly_ddpm"}, "convention: pix2pix_zero is a DDIM inversion"),
    ({"scheduler": "karras"}, "set scheduler to ddim_uniform"),
])
def test_pix2pix_zero_convention_refuses_what_it_is_not_defined_for(graph, changes, message):
    prompt = roundtrip_prompt(SD15, "ddim", steps=4, cfg=1.0)
    prompt["6"]["inputs"].update({"convention": "pix2pix_zero", **changes})
    with pytest.raises(GraphError, match=message):
        graph.run(prompt)


def test_noise_regularization_changes_the_inversion_deterministically(graph):
    checkpoint_path(SD15)
    plain = graph.run(roundtrip_prompt(SD15, "ddim", steps=4, cfg=1.0))["inverted"]["samples"]
    reg = graph.run(roundtrip_prompt(SD15, "ddim", steps=4, cfg=1.0, regularize=True, seed=1))["inverted"]["samples"]
    again = graph.run(roundtrip_prompt(SD15, "ddim", steps=4, cfg=1.0, regularize=True, seed=2))
    assert relative_error(reg, plain) > 1e-4
    assert torch.isfinite(reg).all()
    # same seed, same result (a fresh graph with the same inputs would be cached: compare seeds 1 vs 2 runs)
    assert torch.isfinite(again["inverted"]["samples"]).all()


def test_progress_bar_and_interrupt(graph):
    import comfy.model_management
    import comfy.utils

    checkpoint_path(SD15)
    calls = []
    saved = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        calls.append((value, total))
        if len(calls) == 2 and interrupt:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        interrupt = False
        graph.run(roundtrip_prompt(SD15, "ddim", steps=5, cfg=1.0, seed=11))
        assert (5, 5) in calls  # DDIMInvert and the replay each report steps/total
        calls.clear()
        interrupt = True
        with pytest.raises(GraphError):
            graph.run(roundtrip_prompt(SD15, "ddim", steps=6, cfg=1.0, seed=12))
        assert any(e == "execution_interrupted" for e, _ in graph.server.messages)
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
        comfy.model_management.interrupt_current_processing(False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(skip=10), "skip_steps"),
        (dict(cfg=3.0, negative=False), "negative"),
        (dict(replay_size=128), "latent_image: shape"),
        (dict(scheduler_sigmas=True), "sigmas: the sampler's schedule"),
    ],
)
def test_bad_inputs_name_the_input(graph, kwargs, message):
    checkpoint_path(SD15)
    base = dict(mode="edit_friendly_ddpm", steps=10, cfg=1.0)
    base.update(kwargs)
    with pytest.raises(GraphError, match=message):
        graph.run(roundtrip_prompt(SD15, **base))


def test_zero_steps_is_refused_by_validation(graph):
    checkpoint_path(SD15)
    ok, _error, _outputs, node_errors = graph.validate(roundtrip_prompt(SD15, "ddim", steps=0, cfg=1.0))
    # ComfyUI drops the outputs that depend on the bad node and names the node and input
    errors = node_errors["6"]["errors"]
    assert "steps: 0 is below the minimum 1; give a value between 1 and 1000" in errors[0]["details"], errors


def test_inversion_from_another_model_family_is_refused(graph):
    checkpoint_path(SD15)
    checkpoint_path(SDXL)
    with pytest.raises(GraphError, match="inversion: made with a SD15 model but the sampler's model is SDXL"):
        graph.run(roundtrip_prompt(SD15, "edit_friendly_ddpm", steps=4, cfg=1.0, replay_ckpt=SDXL))


@pytest.mark.parametrize("sampling", ["x0", "lcm"])
def test_prediction_types_other_than_eps_and_v_are_refused(graph, sampling):
    """Every ComfyUI prediction class derives from EPS, so an isinstance check lets X0, LCM, EDM
    and the image-to-image types through; the check names the prediction type instead."""
    prompt = roundtrip_prompt(SD15, "ddim", 3, 1.0)
    prompt["20"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": sampling,
                                                                       "zsnr": False}}
    prompt["6"]["inputs"]["model"] = ["20", 0]
    with pytest.raises(GraphError, match=f"model: this model predicts with {sampling.upper()}; this node supports"):
        graph.run(prompt)

