"""EditDirection + CutLossGuidance (pix2pix-zero / pix2pix-zeroCon) as graphs run by ComfyUI's own
executor, on the SD1.x and SDXL test checkpoints (64 px, 2 steps)."""
from __future__ import annotations

import pytest
import torch

from pack_testing import GraphError, checkpoint_path, relative_error

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"
SDXL = "test_sdxl.safetensors"
CAPTION = "a photo of a cat"
STEPS = 2

GUIDANCE_DEFAULTS = {"cfg": 5.0, "lambda_xa": 1.0, "lambda_cut": 3.0, "step_size": 0.1, "guidance_start_step": 0,
                     "guidance_end_step": 1000, "num_patches": 256, "tau": 0.07, "offload_to_cpu": False}


def base_prompt(ckpt: str, *, size: int = 64, steps: int = STEPS) -> dict:
    """A model-made image latent, inverted with DDIMInvert (ddim, cfg 1), the caption used as
    positive and negative, and the stock pieces SamplerCustomAdvanced needs."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": CAPTION, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "DDIMInvert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["5", 0], "mode": "ddim", "steps": steps, "cfg": 1.0,
            "scheduler": "ddim_uniform", "skip_steps": 0, "seed": 0, "noise_regularization": False,
            "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5}},
        "9": {"class_type": "DisableNoise", "inputs": {}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "12": {"class_type": "CFGGuider", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "cfg": GUIDANCE_DEFAULTS["cfg"]}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["9", 0], "guider": ["12", 0], "sampler": ["10", 0], "sigmas": ["6", 2], "latent_image": ["6", 0]}},
        "14": {"class_type": "Capture", "inputs": {"key": "plain", "value": ["13", 0]}},
    }


def add_edit(prompt: dict, name: str, node: int, *, multiplier: float = 1.0, **guidance) -> None:
    """EditDirection (cat -> dog) -> CutLossGuidance -> SamplerCustomAdvanced, captured as ``name``."""
    prompt[str(node)] = {"class_type": "EditDirection", "inputs": {
        "clip": ["1", 1], "source": "cat", "target": "dog", "caption": CAPTION, "multiplier": multiplier,
        "source_sentences": "", "target_sentences": ""}}
    prompt[str(node + 1)] = {"class_type": "CutLossGuidance", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "direction": [str(node), 0],
        **{**GUIDANCE_DEFAULTS, **guidance}}}
    prompt[str(node + 2)] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["9", 0], "guider": [str(node + 1), 0], "sampler": ["10", 0], "sigmas": ["6", 2],
        "latent_image": ["6", 0]}}
    prompt[str(node + 3)] = {"class_type": "Capture", "inputs": {"key": name, "value": [str(node + 2), 0]}}
    prompt[str(node + 4)] = {"class_type": "Capture", "inputs": {"key": name + "_guider", "value": [str(node + 1), 0]}}


@pytest.fixture(scope="module", params=[SD15, SDXL])
def ckpt(request):
    checkpoint_path(request.param)
    return request.param


def test_end_to_end_zero_edit_reproduces_the_reconstruction_and_guidance_edits(graph, ckpt):
    full = ckpt == SD15  # the SDXL test model is slow on CPU: only the zero edit and the full edit there
    prompt = base_prompt(ckpt)
    add_edit(prompt, "zero", 20, multiplier=0.0, step_size=0.0)
    add_edit(prompt, "edit", 40)
    names = ["zero", "edit"]
    if full:
        add_edit(prompt, "guided_only", 30, multiplier=0.0)
        add_edit(prompt, "pix2pix_zero", 50, lambda_cut=0.0)
        names += ["guided_only", "pix2pix_zero"]
    out = graph.run(prompt)
    plain = out["plain"]["samples"]
    for name in names:
        assert out[name]["samples"].shape == plain.shape and torch.isfinite(out[name]["samples"]).all(), name
    # no direction, no guidance: exactly the stock CFG sampler's reconstruction of the inversion
    assert torch.allclose(out["zero"]["samples"], plain, rtol=1e-5, atol=1e-5), relative_error(out["zero"]["samples"], plain)
    assert relative_error(out["edit"]["samples"], plain) > 1e-3
    if full:
        # the gradient guidance alone moves the result; the direction moves it further; lambda_cut matters
        assert relative_error(out["guided_only"]["samples"], plain) > 1e-4
        assert relative_error(out["edit"]["samples"], out["guided_only"]["samples"]) > 1e-3
        assert relative_error(out["edit"]["samples"], out["pix2pix_zero"]["samples"]) > 1e-4
    from exemplar_edit.nodes import host

    losses = host.stepwise_runner(out["edit_guider"]).program.last_losses
    assert len(losses) == STEPS and all(set(step) == {"positive", "negative"} for step in losses)
    assert all(v > 0 and v == v for step in losses for v in step.values())


def test_reference_memory_does_not_grow_with_the_number_of_steps(graph):
    """The reference pass runs in lockstep with the edit pass: the largest store of reference maps
    and features is one step's, for 4 guided steps as for 10 (it was the whole pass before)."""
    from exemplar_edit.nodes import host

    peaks = {}
    for steps in (4, 10):  # ddim_uniform gives exactly these (1000 is a multiple of each)
        prompt = base_prompt(SD15, steps=steps)
        add_edit(prompt, "edit", 20)
        out = graph.run(prompt)
        program = host.stepwise_runner(out["edit_guider"]).program
        assert len(program.last_losses) == steps  # every step was guided
        peaks[steps] = program.peak_store_bytes
    assert peaks[4] > 0 and peaks[10] == peaks[4], peaks


def test_another_packs_sampler_wrapper_still_runs_under_the_guidance(graph):
    """CutLossGuidance runs inside the stock CFGGuider through wrappers: a SAMPLER_SAMPLE wrapper of
    another pack on the same model still runs, and being a pass-through it changes nothing."""
    import pack_testing

    prompt = base_prompt(SD15)
    add_edit(prompt, "edit", 20)
    add_edit(prompt, "wrapped", 40)
    prompt["60"] = {"class_type": "OtherPacksSamplerWrapper", "inputs": {"model": ["1", 0], "key": "other_pack"}}
    prompt["41"]["inputs"]["model"] = ["60", 0]
    pack_testing.WRAPPER_CALLS.clear()
    out = graph.run(prompt)
    assert pack_testing.WRAPPER_CALLS.get("other_pack", 0) >= 1
    assert torch.allclose(out["wrapped"]["samples"], out["edit"]["samples"], atol=1e-6)


def test_shared_model_is_unchanged_by_guidance(graph):
    """A plain sampler run on the loaded model gives the same output before and after CutLossGuidance."""
    from exemplar_edit.nodes import host
    import comfy.samplers

    checkpoint_path(SD15)
    prompt = base_prompt(SD15)
    prompt["15"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["1", 0]}}
    prompt["16"] = {"class_type": "Capture", "inputs": {"key": "caption", "value": ["2", 0]}}
    prompt["17"] = {"class_type": "Capture", "inputs": {"key": "inverted", "value": ["6", 0]}}
    prompt["18"] = {"class_type": "Capture", "inputs": {"key": "sigmas", "value": ["6", 2]}}
    out = graph.run(prompt)
    model, caption = out["model"], out["caption"]

    def plain_run() -> torch.Tensor:
        with torch.inference_mode():
            return host.run_sampler(model, comfy.samplers.sampler_object("ddim"), out["sigmas"], caption, caption,
                                    5.0, out["inverted"], 0)

    before = plain_run()
    add_edit(prompt, "edit", 40, step_size=0.12)
    edited = graph.run(prompt)
    assert relative_error(edited["edit"]["samples"], before) > 1e-3
    assert torch.equal(plain_run(), before)


def test_one_guidance_step_lowers_the_combined_loss(graph):
    import comfy.samplers

    checkpoint_path(SD15)
    prompt = base_prompt(SD15)
    add_edit(prompt, "edit", 40, multiplier=0.5)
    prompt["17"] = {"class_type": "Capture", "inputs": {"key": "inverted", "value": ["6", 0]}}
    prompt["18"] = {"class_type": "Capture", "inputs": {"key": "sigmas", "value": ["6", 2]}}
    out = graph.run(prompt)
    from exemplar_edit.nodes import host

    guider = out["edit_guider"]
    runner = host.stepwise_runner(guider)
    program = runner.program
    record: dict = {}

    def probe(steps, x):
        program.state.store.clear()
        program.state.generator = torch.Generator().manual_seed(0)
        program.reference_step(steps, x, 0)
        x_kept, offset, losses = program.guidance_step(steps, x, 0)
        record["before"] = losses
        record["after"] = {
            "negative": float(program.loss_at(steps, x_kept, 0, "negative", grad=False)[0]),
            "positive": float(program.loss_at(steps, x_kept + offset, 0, "positive", grad=False)[0]),
        }
        program.state.store.clear()
        return x

    runner.program = probe
    try:
        latent = out["inverted"]["samples"]
        with torch.inference_mode():
            guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object("ddim"), out["sigmas"], seed=0)
    finally:
        runner.program = program
    for role in ("negative", "positive"):
        assert record["after"][role] < record["before"][role], record


def test_bad_inputs_name_the_input(graph):
    from exemplar_edit.nodes import translation as nt
    from exemplar_edit.nodes.host import InputError

    checkpoint_path(SD15)
    prompt = base_prompt(SD15)
    add_edit(prompt, "edit", 40)
    prompt["40"]["inputs"]["source"] = "  "
    with pytest.raises(GraphError, match="source: empty concept"):
        graph.run(prompt)

    prompt = base_prompt(SD15)
    prompt["15"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["1", 0]}}
    prompt["16"] = {"class_type": "Capture", "inputs": {"key": "caption", "value": ["2", 0]}}
    out = graph.run(prompt)
    model, caption = out["model"], out["caption"]
    settings = dict(GUIDANCE_DEFAULTS)
    sdxl_like = nt.EditDirection(tokens=torch.zeros(1, 77, 2048), pooled=torch.zeros(1, 1280), encoders=("g", "l"),
                                 source="cat", target="dog")
    with pytest.raises(InputError, match=r"^direction: .*clip_g\+clip_l.*2048.*768"):
        nt.CutLossGuidance.execute(model=model, positive=caption, negative=caption, direction=sdxl_like, **settings)
    sd15_direction = nt.EditDirection(tokens=torch.zeros(1, 77, 768), pooled=None, encoders=("l",),
                                      source="cat", target="dog")
    wide = [[torch.zeros(1, 77, 2048), {}]]
    with pytest.raises(InputError, match=r"^positive: .*2048"):
        nt.CutLossGuidance.execute(model=model, positive=wide, negative=caption, direction=sd15_direction, **settings)
    with pytest.raises(InputError, match=r"^negative: .*2048"):
        nt.CutLossGuidance.execute(model=model, positive=caption, negative=wide, direction=sd15_direction, **settings)
    long_caption = [[torch.zeros(1, 100, 768), {}]]
    with pytest.raises(InputError, match=r"^positive: 100 tokens"):
        nt.CutLossGuidance.execute(model=model, positive=long_caption, negative=caption, direction=sd15_direction,
                                   **settings)
    with pytest.raises(InputError, match=r"^guidance_end_step"):
        nt.CutLossGuidance.execute(model=model, positive=caption, negative=caption, direction=sd15_direction,
                                   **{**settings, "guidance_start_step": 3, "guidance_end_step": 1})


@pytest.mark.parametrize("sampler", ["uni_pc", "uni_pc_bh2", "dpm_adaptive"])
def test_a_sampler_that_cannot_run_one_step_at_a_time_is_refused_naming_it(graph, sampler):
    """UniPC only evaluates the model in the first step of a call (one step per call never moves
    the latent); dpm_adaptive picks its own steps. The guider refuses them before its first step."""
    checkpoint_path(SD15)
    prompt = base_prompt(SD15)
    add_edit(prompt, "edit", 20)
    prompt["10"]["inputs"]["sampler_name"] = sampler
    del prompt["14"]  # the plain reconstruction would run the sampler too
    with pytest.raises(GraphError, match=f"sampler: {sampler} cannot run one step at a time.*dpmpp_2m"):
        graph.run(prompt)


def test_a_sampler_that_leaves_the_latent_where_it_was_is_refused_after_one_step(graph):
    """Any sampler (another pack's too) that returns its input for a step is refused after the first
    step, naming it; the SA-Solver of hosts before its fix does (it returned its corrected state)."""
    import comfy.samplers

    from exemplar_edit.nodes import host

    checkpoint_path(SD15)
    prompt = base_prompt(SD15)
    add_edit(prompt, "edit", 40)
    prompt["17"] = {"class_type": "Capture", "inputs": {"key": "inverted", "value": ["6", 0]}}
    prompt["18"] = {"class_type": "Capture", "inputs": {"key": "sigmas", "value": ["6", 2]}}
    del prompt["14"], prompt["43"]
    out = graph.run(prompt)
    latent, sigmas = out["inverted"]["samples"], out["sigmas"]
    stuck = comfy.samplers.KSAMPLER(lambda model, x, sigmas, extra_args=None, callback=None, disable=None: x)
    with pytest.raises(host.InputError, match=r"^sampler: this sampler left the latent where it was in a step from "
                                              r"sigma \S+ to \S+, so it cannot run one step at a time.*ddim"):
        with torch.inference_mode():
            out["edit_guider"].sample(torch.zeros_like(latent), latent, stuck, sigmas, seed=0)
    with torch.inference_mode():  # the SA-Solver: refused by the same check on hosts where it returns its input
        try:
            result = out["edit_guider"].sample(torch.zeros_like(latent), latent,
                                               comfy.samplers.sampler_object("sa_solver"), sigmas, seed=0)
        except host.InputError as e:
            assert str(e).startswith("sampler: sa_solver left the latent where it was"), e
        else:
            assert torch.isfinite(result).all() and relative_error(result, latent) > 0.1


def test_a_multistep_sampler_runs_as_its_first_order_form(graph):
    """dpmpp_2m one step at a time is DPM-Solver++(1), which is DDIM: with no direction and no
    guidance its result is the ddim sampler's."""
    checkpoint_path(SD15)
    results = {}
    for sampler in ("ddim", "dpmpp_2m"):
        prompt = base_prompt(SD15, steps=3)
        add_edit(prompt, "zero", 20, multiplier=0.0, step_size=0.0)
        prompt["10"]["inputs"]["sampler_name"] = sampler
        out = graph.run(prompt)
        results[sampler] = out["zero"]["samples"]
    assert torch.allclose(results["dpmpp_2m"], results["ddim"], rtol=1e-5, atol=1e-5), \
        relative_error(results["dpmpp_2m"], results["ddim"])


def _direction_prompt(**inputs) -> dict:
    values = {"clip": ["1", 1], "source": "cat", "target": "dog", "caption": CAPTION, "multiplier": 1.0,
              "source_sentences": "", "target_sentences": "", **inputs}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "40": {"class_type": "EditDirection", "inputs": values},
        "41": {"class_type": "Capture", "inputs": {"key": "direction", "value": ["40", 0]}},
    }


def test_edit_direction_caption_form(graph):
    """caption + target_caption: both captions in the same sentence frames plus templates around the
    changed words; swapping the captions negates the direction; it is not the concept form's."""
    checkpoint_path(SD15)
    forward = graph.run(_direction_prompt(target_caption="a photo of a dog"))["direction"]
    backward = graph.run(_direction_prompt(caption="a photo of a dog", target_caption=CAPTION))["direction"]
    concept = graph.run(_direction_prompt())["direction"]
    assert forward.tokens.shape == (1, 77, 768) and forward.tokens.abs().max() > 0
    assert torch.allclose(backward.tokens, -forward.tokens, atol=1e-6)
    assert relative_error(forward.tokens, concept.tokens) > 1e-2
    # the concept words are unused in the caption form
    other_words = graph.run(_direction_prompt(source="tree", target="car", target_caption="a photo of a dog"))
    assert torch.equal(other_words["direction"].tokens, forward.tokens)
    # own sentence lists still replace a side
    custom = graph.run(_direction_prompt(target_caption="a photo of a dog", source_sentences=CAPTION))["direction"]
    assert relative_error(custom.tokens, forward.tokens) > 1e-3


@pytest.mark.parametrize("inputs, message", [
    ({"caption": "", "target_caption": "a photo of a dog"}, "caption: target_caption is filled"),
    ({"target_caption": "A photo of a  cat"}, "target_caption: .* says the same as caption"),
])
def test_edit_direction_caption_form_refuses_what_gives_no_direction(graph, inputs, message):
    with pytest.raises(GraphError, match=message):
        graph.run(_direction_prompt(**inputs))


def test_two_guided_runs_copy_the_model_once_and_unloading_models_drops_the_copy(graph):
    """Issue 23: the weights the gradient passes differentiate through (``host.gradients``: a private copy
    reloaded from the file, or the shared weights patched into ordinary copies on older hosts) are made
    once for two guided runs of the same model, even when CutLossGuidance runs again with other settings,
    and are gone after ComfyUI unloads its models (``POST /free`` calls
    ``comfy.model_management.unload_all_models``), so RAM does not hold the model twice afterwards."""
    import gc
    import weakref

    import comfy.model_management
    from exemplar_edit.nodes import host
    from exemplar_edit.nodes.host import gradients

    def evaluated_weight(shared):
        """A UNet weight the guided passes read: of the kept private copy (reload), or the shared model's
        own patched copy (copy_weights)."""
        if host.gradient_strategy(shared) == gradients.RELOAD:
            kept = [p for p in gradients.PRIVATE_COPIES.kept() if p.model is not shared.model]
            assert len(kept) == 1
            return next(kept[0].model.diffusion_model.parameters())
        return next(shared.model.diffusion_model.parameters())

    checkpoint_path(SD15)
    comfy.model_management.unload_all_models()
    prompt = base_prompt(SD15)
    for plain in ("12", "13", "14"):  # after the first run only the guided sampling runs again
        del prompt[plain]
    add_edit(prompt, "edit", 20, lambda_cut=0.0)
    prompt["15"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["1", 0]}}
    shared = graph.run(prompt)["model"]
    prompt["21"]["inputs"]["step_size"] = 0.12  # a new guider: CutLossGuidance runs again
    first = graph.run(prompt)
    weight = evaluated_weight(shared)
    assert not weight.is_inference()
    prompt["21"]["inputs"]["step_size"] = 0.14
    second = graph.run(prompt)
    assert relative_error(second["edit"]["samples"], first["edit"]["samples"]) > 1e-5
    assert evaluated_weight(shared) is weight, "the second run made another copy of the model"

    copy = weakref.ref(weight)
    del weight
    comfy.model_management.unload_all_models()
    gc.collect()
    assert copy() is None, "the copy outlived ComfyUI unloading its models"
    assert not gradients.PRIVATE_COPIES.kept()
    assert all(p.is_inference() for p in shared.model.diffusion_model.parameters())
