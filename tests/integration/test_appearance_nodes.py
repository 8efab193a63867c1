"""SemanticFeatureRearrange (Eye-for-an-eye) as graphs run by ComfyUI's own executor, on the test
checkpoints of both model families."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pack_testing import GraphError, flux_loaders

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"
SDXL = "test_sdxl.safetensors"
STEPS, SKIP = 6, 1


def transfer_prompt(ckpt: str, *, same_images: bool = False, patched: bool = True, cfg: float = 1.0,
                    size: int = 64, reference_size: int | None = None, sampler: str = "replay",
                    masks: dict | None = None, flux: bool = False, inversion_cfg: float = 3.5, **settings) -> dict:
    """Two model-made images -> DDIMInvert (edit-friendly) each -> SemanticFeatureRearrange ->
    SamplerCustom with the target's replay sampler. ``flux``: ``ckpt`` is a FLUX-layout test model
    (UNETLoader, the test CLIP-L, the FLUX test VAE; euler/simple schedules)."""
    reference_size = reference_size or size
    if flux:
        prompt, model, clip, _ = flux_loaders(ckpt, first_id=40)
        empty, scheduler, image_cfg = "EmptySD3LatentImage", "simple", 1.0
    else:
        prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
        model, clip = ["1", 0], ["1", 1]
        empty, scheduler, image_cfg = "EmptyLatentImage", "normal", 4.0
    prompt.update({
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat", "clip": clip}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a green striped car at night", "clip": clip}},
        "5": {"class_type": empty, "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": empty, "inputs": {"width": reference_size, "height": reference_size, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {  # target image
            "model": model, "seed": 7, "steps": 3, "cfg": image_cfg, "sampler_name": "euler", "scheduler": scheduler,
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {  # reference image
            "model": model, "seed": 99, "steps": 3, "cfg": image_cfg, "sampler_name": "euler", "scheduler": scheduler,
            "positive": ["4", 0], "negative": ["3", 0], "latent_image": ["6", 0], "denoise": 1.0}},
    })
    invert = {"model": model, "positive": ["2", 0], "negative": ["3", 0], "mode": "edit_friendly_ddpm",
              "steps": STEPS, "cfg": inversion_cfg, "scheduler": scheduler, "skip_steps": SKIP, "seed": 0,
              "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5,
              "auto_correlation_rolls": 5}
    prompt["9"] = {"class_type": "DDIMInvert", "inputs": {**invert, "latent": ["7", 0]}}
    prompt["10"] = {"class_type": "DDIMInvert", "inputs": {**invert, "latent": ["7", 0] if same_images else ["8", 0], "seed": 0 if same_images else 1}}
    source_model = model
    if patched:
        options = {"layers": "two_highest_decoder_levels", "strength": 1.0, "injection_start_step": 0,
                   "injection_end_step": 70, "structure_interval": 3, "structure_end_step": 2,
                   "adain_start_step": 3, "adain_end_step": 68, "restrict_to_reference_mask": False,
                   "feature_source": "replayed_each_step"}
        if flux:
            options["layers"] = "dit_all_blocks"
        options.update(settings)
        prompt["11"] = {"class_type": "SemanticFeatureRearrange", "inputs": {
            "model": source_model, "reference": ["10", 1], "target": ["9", 1], **options}}
        for name, node_id in (masks or {}).items():
            prompt["11"]["inputs"][name] = [node_id, 0]
        model = ["11", 0]
    prompt["12"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["9", 1], "exact_final_step": True}}
    sampler_ref = ["12", 0]
    if sampler != "replay":
        prompt["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        sampler_ref = ["13", 0]
    prompt["14"] = {"class_type": "SamplerCustom", "inputs": {
        "model": model, "add_noise": False, "noise_seed": 0, "cfg": cfg, "positive": ["2", 0], "negative": ["3", 0],
        "sampler": sampler_ref, "sigmas": ["9", 2], "latent_image": ["9", 0]}}
    prompt["15"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["14", 0]}}
    return prompt


def _out(graph, prompt) -> torch.Tensor:
    return graph.run(prompt)["out"]["samples"].float()


# --- FLUX-class models (host.backbone's FLUX adapter) -----------------------------------------


@pytest.fixture(scope="module")
def flux_unet(host):
    from pack_testing import flux_model_for_host

    return flux_model_for_host()


def test_flux_transfer_runs_and_depends_on_the_reference(graph, flux_unet):
    plain = _out(graph, transfer_prompt(flux_unet, flux=True, patched=False, inversion_cfg=1.0))
    transfer = _out(graph, transfer_prompt(flux_unet, flux=True, inversion_cfg=1.0))
    assert torch.isfinite(transfer).all()
    change = (transfer - plain).abs().mean() / plain.abs().mean()
    assert change > 0.01, f"the reference's appearance did not reach the output (relative change {change:.2e})"


def test_flux_reference_equal_to_target_reproduces_the_plain_replay(graph, flux_unet):
    """Every image token's best match is itself, the rotation undone and redone leaves unchanged
    tokens untouched, and AdaIN against itself is the identity: the output is the plain replay."""
    plain = _out(graph, transfer_prompt(flux_unet, flux=True, patched=False, same_images=True, inversion_cfg=1.0))
    same = _out(graph, transfer_prompt(flux_unet, flux=True, same_images=True, structure_interval=0,
                                       inversion_cfg=1.0))
    assert torch.allclose(same, plain, rtol=1e-4, atol=1e-4), (same - plain).abs().max()


def test_flux_unet_layer_choice_is_refused(graph, flux_unet):
    with pytest.raises(GraphError, match="layers: 'two_highest_decoder_levels' is a choice for UNet models"):
        graph.run(transfer_prompt(flux_unet, flux=True, inversion_cfg=1.0, layers="two_highest_decoder_levels"))


def test_unet_refuses_a_dit_layer_choice(graph):
    with pytest.raises(GraphError, match="layers: 'dit_all_blocks' is a choice for FLUX-class models"):
        graph.run(transfer_prompt(SD15, layers="dit_all_blocks"))


@pytest.mark.parametrize("ckpt", [SD15, SDXL])
def test_transfer_runs_and_depends_on_the_reference(graph, ckpt):
    plain = _out(graph, transfer_prompt(ckpt, patched=False))
    transfer = _out(graph, transfer_prompt(ckpt))
    assert torch.isfinite(transfer).all()
    change = (transfer - plain).abs().mean() / plain.abs().mean()
    assert change > 0.01, f"the reference's appearance did not reach the output (relative change {change:.2e})"


def test_reference_equal_to_target_reproduces_the_plain_replay(graph):
    """With the target as its own reference every output feature's best match is itself, and AdaIN
    against itself is the identity, so the output must be the plain replay. This holds only if
    the patch steps the extra branches along exactly the trajectory the sampler takes."""
    plain = _out(graph, transfer_prompt(SD15, patched=False, same_images=True))
    same = _out(graph, transfer_prompt(SD15, same_images=True, structure_interval=0))
    assert torch.allclose(same, plain, rtol=1e-4, atol=1e-4), (same - plain).abs().max()


def test_guidance_above_one_and_strength_zero(graph):
    """cfg > 1 runs cond and uncond chunks (uncond left unrearranged); at strength 0 without
    structure steps and without AdaIN the output equals the plain replay at the same cfg."""
    plain = _out(graph, transfer_prompt(SD15, patched=False, cfg=2.5))
    neutral = _out(graph, transfer_prompt(SD15, cfg=2.5, strength=0.0, structure_interval=0, adain_start_step=68))
    assert torch.allclose(neutral, plain, rtol=1e-4, atol=1e-4), (neutral - plain).abs().max()
    full = _out(graph, transfer_prompt(SD15, cfg=2.5))
    assert (full - plain).abs().mean() > 1e-3


def test_shared_model_is_unchanged(graph):
    before = _out(graph, transfer_prompt(SD15, patched=False))
    _out(graph, transfer_prompt(SD15))
    after = _out(graph, transfer_prompt(SD15, patched=False))
    assert torch.equal(before, after)


def test_masks_keep_the_background(graph):
    """Only the masked half of the target is rearranged and aligned: the other half moves much less."""
    prompt = transfer_prompt(SD15, masks={"target_mask": "20", "reference_mask": "21"})
    prompt["19"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["18"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 32}}
    prompt["20"] = {"class_type": "MaskComposite", "inputs": {"destination": ["19", 0], "source": ["18", 0],
                                                               "x": 0, "y": 0, "operation": "add"}}
    prompt["21"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    masked = _out(graph, prompt)
    plain = _out(graph, transfer_prompt(SD15, patched=False))
    top = (masked - plain)[..., :4, :].abs().mean()
    bottom = (masked - plain)[..., 4:, :].abs().mean()
    assert top > 3 * bottom, (top, bottom)


@pytest.mark.parametrize("change, input_name", [
    ({"reference_size": 128}, "reference"),
    ({"sampler": "euler"}, "sampler"),
])
def test_bad_inputs_name_the_input(graph, change, input_name):
    with pytest.raises(GraphError, match=input_name):
        graph.run(transfer_prompt(SD15, **change))


@pytest.mark.parametrize("masks, input_name", [
    ({"target_mask": ("SolidMask", 0.0, 64)}, "target_mask: mask 0 is empty"),
    ({"target_mask": ("SolidMask", 1.0, 32)}, "target_mask: is 32x32 px"),
    ({"reference_mask": ("SolidMask", 1.0, 64), "target_mask": ("Batch", 1.0, 64)}, "reference_mask: has 1 object"),
])
def test_bad_masks_name_the_input(graph, masks, input_name):
    prompt = transfer_prompt(SD15)
    for index, (name, (kind, value, size)) in enumerate(masks.items()):
        node = str(30 + index)
        solid = {"class_type": "SolidMask", "inputs": {"value": value, "width": size, "height": size}}
        if kind == "Batch":
            prompt[node + "0"] = solid
            prompt[node] = {"class_type": "MaskToImage", "inputs": {"mask": [node + "0", 0]}}
            prompt[node + "1"] = {"class_type": "ImageBatch", "inputs": {"image1": [node, 0], "image2": [node, 0]}}
            prompt[node + "2"] = {"class_type": "ImageToMask", "inputs": {"image": [node + "1", 0], "channel": "red"}}
            node = node + "2"
        else:
            prompt[node] = solid
        prompt["11"]["inputs"][name] = [node, 0]
    with pytest.raises(GraphError, match=input_name):
        graph.run(prompt)


def test_features_collected_from_the_inversion_equal_the_replayed_branches(graph):
    """At the inversion's own cfg and prompt the replayed branches retrace their inversions, so
    features collected once from the stored latents must give the same output. The collection has
    conditional features only, so the structure steps write the conditional rows here."""
    replayed = _out(graph, transfer_prompt(SD15, cfg=3.5, structure_rows="conditional"))
    prompt = transfer_prompt(SD15, cfg=3.5, feature_source="collected_from_inversion", structure_rows="conditional")
    prompt["11"]["inputs"]["positive"] = ["2", 0]
    collected = _out(graph, prompt)
    plain = _out(graph, transfer_prompt(SD15, patched=False, cfg=3.5))
    assert (replayed - plain).abs().mean() > 1e-3
    assert torch.allclose(collected, replayed, rtol=1e-3, atol=1e-3), (collected - replayed).abs().max()


def test_collected_features_need_the_positive_conditioning(graph):
    with pytest.raises(GraphError, match="positive: collected_from_inversion needs"):
        graph.run(transfer_prompt(SD15, feature_source="collected_from_inversion"))


@pytest.mark.parametrize("pag_after_patch", [True, False])
def test_composes_with_perturbed_attention_guidance(graph, pag_after_patch):
    """PAG adds an attention replace and a post-CFG function that runs an extra UNet pass each step.
    Applied after the patch it also clones the patched model (0.3.75 deep-copies model_options).
    Both must act, and the extra pass must not disturb the branches."""
    pag = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["1", 0], "scale": 3.0}}
    plain_pag = transfer_prompt(SD15, patched=False)
    plain_pag["16"] = pag
    plain_pag["14"]["inputs"]["model"] = ["16", 0]
    combined = transfer_prompt(SD15)
    combined["16"] = {**pag, "inputs": {**pag["inputs"]}}
    if pag_after_patch:
        combined["16"]["inputs"]["model"] = ["11", 0]
        combined["14"]["inputs"]["model"] = ["16", 0]
    else:
        combined["11"]["inputs"]["model"] = ["16", 0]
    alone = _out(graph, transfer_prompt(SD15))
    both = _out(graph, combined)
    assert torch.isfinite(both).all()
    assert (both - alone).abs().mean() > 1e-3, "PAG had no effect on the patched model"
    assert (both - _out(graph, plain_pag)).abs().mean() > 1e-3, "the appearance patch was lost beside PAG"


def test_reference_and_target_inverted_with_different_steps_is_named(host):
    """Not a raw size mismatch from deep inside: the documented schedule error, naming the input."""
    import torch

    from exemplar_edit.core import inversion as inv
    from exemplar_edit.nodes import appearance
    from exemplar_edit.nodes.host import InputError

    def inversion(steps: int, batch: int = 1) -> inv.Inversion:
        sigmas = torch.linspace(10, 0, steps + 1)
        latents = [torch.zeros(batch, 4, 8, 8) for _ in range(steps + 1)]
        return inv.Inversion(mode="ddim", sigmas=sigmas, start_step=0, latents=latents, model_family="SD15")

    class Model:  # only what build_patch reads before it checks the schedule
        class model:
            latent_format = type("SD15", (), {})()

    with pytest.raises(InputError, match="reference: inverted with another schedule than the target"):
        appearance.build_patch(Model, inversion(6), inversion(5), "official", 1.0, None, False)
    with pytest.raises(InputError, match="target_mask: the reference is a batch of 2 images, so connect 2 target masks"):
        appearance.build_patch(Model, inversion(5, batch=2), inversion(5), "two_highest_decoder_levels", 1.0, None,
                               False)
    with pytest.raises(InputError, match="target: inverted from a batch of 2 images; invert one target image"):
        appearance.build_patch(Model, inversion(5), inversion(5, batch=2), "official", 1.0, None, False)


WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "appearance_transfer.json"


def shipped_workflow(*, patched: bool = True, max_steps: int = 8, **settings) -> dict:
    """The shipped appearance_transfer workflow retargeted like the e2e test (test SD1.5, 64 px, few
    steps), the two LoadImage+encode chains replaced by model-made latents, the decoded image by a
    capture of the output latent and the mask preview by a capture of the masks used."""
    import demo  # tools/

    wf = demo.retarget(json.loads(WORKFLOW.read_text()), SD15, max_steps=max_steps)
    for node_id, seed, text in (("7", 99, "a green striped car at night"), ("8", 7, "a photo of a red cat")):
        wf[node_id + "0"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}}
        wf[node_id + "1"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        wf[node_id] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": [node_id + "0", 0], "negative": ["10", 0], "latent_image": [node_id + "1", 0], "denoise": 1.0}}
    for node_id in ("3", "4", "5", "6", "16", "17"):
        del wf[node_id]
    wf["13"]["inputs"].update(settings)
    if not patched:
        wf["15"]["inputs"]["model"] = wf["13"]["inputs"]["model"]
        del wf["18"]
    else:
        wf["18"] = {"class_type": "Capture", "inputs": {"key": "target_mask", "value": ["13", 1]}}
    wf["19"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["15", 0]}}
    return wf


def _inside_outside(change: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean latent change inside and outside a binary image-size mask (on the 8x coarser latent grid)."""
    cells = mask[0, ::8, ::8] > 0.5
    per_cell = change.abs().mean(dim=(0, 1))
    return float(per_cell[cells].mean()), float(per_cell[~cells].mean())


def test_shipped_workflow_keeps_the_targets_background(graph):
    """The shipped workflow makes its masks itself (self-segmentation on the object word): its change
    from the plain reconstruction of the target lies mostly inside the automatic mask. With
    auto_mask off the same mask does not separate the change (the test can fail)."""
    plain = graph.run(shipped_workflow(patched=False))["out"]["samples"].float()
    result = graph.run(shipped_workflow())
    mask = result["target_mask"].float()
    assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    coverage = float(mask.mean())
    assert 0.05 < coverage < 0.95, f"the automatic mask should hold an object, not {coverage:.0%} of the image"
    inside, outside = _inside_outside(result["out"]["samples"].float() - plain, mask)
    assert inside > 10 * outside, (inside, outside)
    unmasked = graph.run(shipped_workflow(auto_mask="off"))
    assert torch.equal(unmasked["target_mask"], torch.ones(1, 64, 64))
    inside_off, outside_off = _inside_outside(unmasked["out"]["samples"].float() - plain, mask)
    assert inside_off < 2 * outside_off, (inside_off, outside_off)


@pytest.mark.parametrize("auto_mask", ["self_segmentation", "cross_attention"])
def test_automatic_masks_are_made_for_both_images(graph, auto_mask):
    prompt = shipped_workflow(auto_mask=auto_mask)
    prompt["20"] = {"class_type": "Capture", "inputs": {"key": "reference_mask", "value": ["13", 2]}}
    result = graph.run(prompt)
    for key in ("target_mask", "reference_mask"):
        mask = result[key]
        assert mask.shape == (1, 64, 64) and 0 < float(mask.mean()) < 1, (key, float(mask.mean()))
    assert torch.isfinite(result["out"]["samples"]).all()


@pytest.mark.parametrize("change, message", [
    ({"object_word": "dog"}, "object_word: 'dog' is not a word of the prompt"),
    ({"object_word": ""}, "object_word: empty"),
    ({"clip": None}, "clip: auto_mask self_segmentation needs the CLIP"),
    ({"positive": None}, "positive: auto_mask self_segmentation needs the conditioning"),
])
def test_automatic_mask_inputs_are_named(graph, change, message):
    prompt = shipped_workflow()
    for name, value in change.items():
        if value is None:
            del prompt["13"]["inputs"][name]
        else:
            prompt["13"]["inputs"][name] = value
    with pytest.raises(GraphError, match=message):
        graph.run(prompt)


@pytest.mark.parametrize("channel_mult, num_res_blocks, starts", [
    ([1, 2, 4, 4], 2, {0, 3, 6, 9}),  # SD1.5: the diffusers up blocks 0-3
    ([1, 2, 4], 2, {0, 3, 6}),  # SDXL
    ([1, 1], [1, 1], {0, 2}),  # the SD15 test model
])
def test_official_freeu_acts_once_per_decoder_level_on_the_backbone(host, channel_mult, num_res_blocks, starts):
    from exemplar_edit.core import freeu
    from exemplar_edit.nodes import appearance
    from exemplar_edit.nodes import host as pack_host

    class Model:  # what the level facts read
        class model:
            class model_config:
                unet_config = {"channel_mult": channel_mult, "num_res_blocks": num_res_blocks, "model_channels": 4}

    assert pack_host.decoder_level_starts(Model) == starts
    patch = appearance.OfficialFreeUPatch(pack_host.decoder_level_starts(Model), pack_host.model_channels(Model),
                                          1.2, 1.4, 0.9, 0.2)
    g = torch.Generator().manual_seed(0)
    for block in range(max(starts) + 2):
        for channels, constants in ((16, (1.2, 0.9)), (8, (1.4, 0.2)), (4, None)):
            h, hsp = torch.randn(1, channels, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
            new_h, new_hsp = patch(h, hsp, {"block": ("output", block)})
            assert new_hsp is hsp
            if block in starts and constants:
                assert torch.allclose(new_h, freeu.official_freeu(h, *constants))
            else:
                assert new_h is h


def _hand_built_patch(structure_rows: str):
    from exemplar_edit.core import inversion as inv
    from exemplar_edit.core.correspondence import TransferSchedule
    from exemplar_edit.nodes import appearance

    def inversion() -> inv.Inversion:
        return inv.Inversion(mode="ddim", sigmas=torch.linspace(10, 0, 7), start_step=0,
                             latents=[torch.zeros(1, 4, 4, 4) for _ in range(7)], model_family="SD15")

    schedule = TransferSchedule(injection_start=0, injection_end=70, structure_interval=2, structure_end=40,
                                adain_start=99, adain_end=100)
    return appearance.AppearanceTransferPatch(inversion(), inversion(), frozenset({1}), [], schedule, 1.0, False,
                                              structure_rows=structure_rows)


def _layer_call(patch, step: int, cond_or_uncond: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One attn1 call on a hand-built batch: per chunk the rows [output, reference, target], every
    row's features distinct."""
    from exemplar_edit.nodes import appearance

    n = torch.randn(3 * len(cond_or_uncond), 16, 8, generator=torch.Generator().manual_seed(step))
    options = {appearance._LAYOUT_KEY: 1, appearance._STEP_KEY: step, "block": ("output", 1),
               "cond_or_uncond": cond_or_uncond, "activations_shape": (n.shape[0], 8, 4, 4)}
    return n, patch.attn1_patch(n, n, n, options)[0]


@pytest.mark.parametrize("structure_rows", ["official", "conditional"])
def test_structure_rows_rule_on_a_hand_built_batch(host, structure_rows):
    """Structure step (counter 2) at cfg > 1, chunks [uncond, cond] as ComfyUI may order them.
    official: uncond output <- uncond target, cond output keeps its own features (the official
    appearance_transfer_model_final.py L205 with its global indices 0/2). conditional: cond output <-
    cond target, uncond untouched. Matching steps rearrange only the cond output in both; at cfg 1
    (cond only) structure steps write the cond output in both."""
    patch = _hand_built_patch(structure_rows)
    uncond_out, uncond_tgt, cond_out, cond_tgt = 0, 2, 3, 5
    n, new = _layer_call(patch, step=3, cond_or_uncond=[1, 0])
    unchanged = [r for r in range(6) if r not in (uncond_out, cond_out)]
    assert torch.equal(new[unchanged], n[unchanged])
    if structure_rows == "official":
        assert torch.equal(new[uncond_out], n[uncond_tgt]) and torch.equal(new[cond_out], n[cond_out])
    else:
        assert torch.equal(new[cond_out], n[cond_tgt]) and torch.equal(new[uncond_out], n[uncond_out])
    n, new = _layer_call(patch, step=2, cond_or_uncond=[1, 0])  # a matching step (counter 1)
    assert torch.equal(new[uncond_out], n[uncond_out]) and not torch.equal(new[cond_out], n[cond_out])
    rows = set(map(tuple, new[cond_out].tolist()))
    assert rows <= set(map(tuple, n[cond_out + 1].tolist())), "the cond output must take reference features"
    cfg1 = _hand_built_patch(structure_rows)
    n, new = _layer_call(cfg1, step=3, cond_or_uncond=[0])
    assert torch.equal(new[0], n[2]) and torch.equal(new[1:], n[1:])


def test_structure_rows_matter_only_above_cfg_one(graph):
    """Structure steps at counters 0 and 2 (steps 0, 1, 3): at steps 0 and 1 the output still equals
    the target, so only step 3, after a matching step, can tell the rules apart."""
    steps = {"structure_interval": 2, "structure_end_step": 4}
    official = _out(graph, transfer_prompt(SD15, cfg=2.5, structure_rows="official", **steps))
    conditional = _out(graph, transfer_prompt(SD15, cfg=2.5, structure_rows="conditional", **steps))
    assert (official - conditional).abs().mean() > 1e-3 * official.abs().mean()
    assert torch.equal(_out(graph, transfer_prompt(SD15, structure_rows="official", **steps)),
                       _out(graph, transfer_prompt(SD15, structure_rows="conditional", **steps)))


def test_several_references_each_object_takes_its_own_references_features(host):
    """A batch of 2 reference inversions with 2 target masks (left and right half): at a matching
    step every token of the left half takes a feature of reference 0, every token of the right half
    one of reference 1."""
    from exemplar_edit.core import inversion as inv
    from exemplar_edit.core.correspondence import TransferSchedule
    from exemplar_edit.nodes import appearance

    def inversion(batch: int) -> inv.Inversion:
        return inv.Inversion(mode="ddim", sigmas=torch.linspace(10, 0, 7), start_step=0,
                             latents=[torch.zeros(batch, 4, 4, 4) for _ in range(7)], model_family="SD15")

    left = torch.zeros(32, 32)
    left[:, :16] = 1
    whole = torch.ones(32, 32)
    schedule = TransferSchedule(injection_start=0, injection_end=70, structure_interval=0)
    patch = appearance.AppearanceTransferPatch(inversion(2), inversion(1), frozenset({1}),
                                               [(left, whole), (1 - left, whole)], schedule, 1.0, False)
    n = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))  # [output, reference 0, reference 1, target]
    options = {appearance._LAYOUT_KEY: 1, appearance._STEP_KEY: 2, "block": ("output", 1), "cond_or_uncond": [0],
               "activations_shape": (4, 8, 4, 4)}
    new = patch.attn1_patch(n, n, n, options)[0]
    assert torch.equal(new[1:], n[1:])
    features = [set(map(tuple, n[row].tolist())) for row in (1, 2)]
    for token in range(16):
        reference = 0 if token % 4 < 2 else 1
        assert tuple(new[0, token].tolist()) in features[reference], token


def test_several_references_end_to_end(graph):
    """Reference batch [car, cat] against [car, car] with the target split into halves: the right half
    (object 1) follows its own reference, the left half (object 0, the car in both) much less."""
    def prompt(second_reference: str) -> dict:
        p = transfer_prompt(SD15, masks={"target_mask": "24"})
        p["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
        p["21"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
        p["22"] = {"class_type": "MaskComposite", "inputs": {"destination": ["20", 0], "source": ["21", 0],
                                                             "x": 0, "y": 0, "operation": "add"}}
        p["23"] = {"class_type": "InvertMask", "inputs": {"mask": ["22", 0]}}
        p["25"] = {"class_type": "MaskToImage", "inputs": {"mask": ["22", 0]}}
        p["26"] = {"class_type": "MaskToImage", "inputs": {"mask": ["23", 0]}}
        p["27"] = {"class_type": "ImageBatch", "inputs": {"image1": ["25", 0], "image2": ["26", 0]}}
        p["24"] = {"class_type": "ImageToMask", "inputs": {"image": ["27", 0], "channel": "red"}}
        p["28"] = {"class_type": "LatentBatch", "inputs": {"samples1": ["8", 0], "samples2": [second_reference, 0]}}
        p["10"]["inputs"]["latent"] = ["28", 0]
        return p

    mixed = _out(graph, prompt("7"))
    same = _out(graph, prompt("8"))
    assert torch.isfinite(mixed).all()
    left = (mixed - same)[..., :, :4].abs().mean()
    right = (mixed - same)[..., :, 4:].abs().mean()
    assert right > 5 * left, (left, right)


def test_several_references_need_one_target_mask_each(graph):
    p = transfer_prompt(SD15)
    p["28"] = {"class_type": "LatentBatch", "inputs": {"samples1": ["8", 0], "samples2": ["7", 0]}}
    p["10"]["inputs"]["latent"] = ["28", 0]
    with pytest.raises(GraphError, match="target_mask: the reference is a batch of 2 images, so connect 2"):
        graph.run(p)


@pytest.fixture(scope="module")
def test_controlnet(host, tmp_path_factory) -> str:
    """A tiny random-weight ControlNet of the SD15 test model's encoder, saved where ControlNetLoader
    looks, in the ldm layout (``control_model.*``) that ComfyUI's loader detects."""
    import comfy.cldm.cldm
    import comfy.ops
    from safetensors.torch import save_file

    import make_test_checkpoints  # tools/
    from exemplar_edit.nodes import host as pack_host

    config = {k: v for k, v in make_test_checkpoints.SD15_UNET.items() if k != "out_channels"}
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, num_heads=8, operations=comfy.ops.manual_cast,
                                     device="meta")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for key, value in net.state_dict().items():
        if value.ndim > 1:
            tensor = 0.05 * torch.randn(value.shape, generator=g)
        elif key.endswith("weight"):  # norms
            tensor = torch.ones(value.shape)
        else:
            tensor = 0.02 * torch.randn(value.shape, generator=g)
        tensors["control_model." + key] = tensor
    folder = tmp_path_factory.mktemp("controlnet")
    save_file(tensors, str(folder / "test_controlnet_sd15.safetensors"))
    pack_host.add_model_folder("controlnet", str(folder))
    return "test_controlnet_sd15.safetensors"


def _with_controlnet(prompt: dict, name: str) -> dict:
    """The sampler's positive and negative through ControlNetApplyAdvanced with a flat grey hint."""
    prompt["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    prompt["41"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x808080}}
    prompt["42"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["40", 0], "image": ["41", 0], "strength": 1.0,
        "start_percent": 0.0, "end_percent": 1.0}}
    prompt["14"]["inputs"]["positive"] = ["42", 0]
    prompt["14"]["inputs"]["negative"] = ["42", 1]
    return prompt


def test_controlnet_acts_on_the_output_and_the_branches_stay_replays(graph, test_controlnet):
    """At the inversion's cfg and prompt, features collected from the stored inversion latents (no
    ControlNet there) equal the replayed branches' exactly when the ControlNet does not reach the
    branches; and the ControlNet must change the output."""
    settings = {"cfg": 3.5, "structure_rows": "conditional"}
    without = _out(graph, transfer_prompt(SD15, **settings))
    replayed = _out(graph, _with_controlnet(transfer_prompt(SD15, **settings), test_controlnet))
    collected_prompt = _with_controlnet(transfer_prompt(SD15, feature_source="collected_from_inversion", **settings),
                                        test_controlnet)
    collected_prompt["11"]["inputs"]["positive"] = ["42", 0]  # the ControlNet-applied conditioning: stripped
    collected = _out(graph, collected_prompt)
    assert (replayed - without).abs().mean() > 1e-2 * without.abs().mean(), "the ControlNet had no effect"
    assert torch.allclose(collected, replayed, rtol=1e-3, atol=1e-3), (collected - replayed).abs().max()


@pytest.mark.parametrize("ckpt", [SD15, SDXL])
def test_object_word_token_position(graph, ckpt):
    """Start token 0, then one token per word here: 'cat' of 'a photo of a red cat' is column 6, on
    every text encoder layout (SDXL's CLIP-G pads with 0, not with the end token)."""
    from exemplar_edit.nodes import host as pack_host

    clip = graph.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                      "2": {"class_type": "Capture", "inputs": {"key": "clip", "value": ["1", 1]}}})["clip"]
    assert pack_host.word_token_position(clip, "a photo of a red cat", "cat") == 6
    assert pack_host.word_token_position(clip, "A photo of a Red Cat", "red cat") == 5


def test_automatic_masks_on_sdxl(graph):
    prompt = transfer_prompt(SDXL, auto_mask="self_segmentation", object_word="cat", prompt="a photo of a red cat")
    prompt["11"]["inputs"].update(positive=["2", 0], clip=["1", 1])
    prompt["16"] = {"class_type": "Capture", "inputs": {"key": "target_mask", "value": ["11", 1]}}
    result = graph.run(prompt)
    assert 0 < float(result["target_mask"].mean()) < 1
    assert torch.isfinite(result["out"]["samples"]).all()


@pytest.mark.parametrize("auto_mask", ["self_segmentation", "cross_attention"])
def test_automatic_masks_on_flux(graph, flux_unet, auto_mask):
    """The joint attention of a FLUX block: image queries over the image keys (self) and over the text
    keys (cross), the object word found among the conditioning's text tokens."""
    prompt = transfer_prompt(flux_unet, flux=True, inversion_cfg=1.0, auto_mask=auto_mask, object_word="cat",
                             prompt="a photo of a red cat")
    prompt["11"]["inputs"].update(positive=["2", 0], clip=prompt["2"]["inputs"]["clip"])
    prompt["16"] = {"class_type": "Capture", "inputs": {"key": "target_mask", "value": ["11", 1]}}
    result = graph.run(prompt)
    mask = result["target_mask"]
    assert tuple(mask.shape[-2:]) == (64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1
    assert torch.isfinite(result["out"]["samples"]).all()


def test_official_freeu_refuses_a_dit(graph, flux_unet):
    prompt, model, _, _ = flux_loaders(flux_unet)
    prompt["9"] = {"class_type": "EyeForAnEyeFreeU", "inputs": {"model": model, "b1": 1.2, "b2": 1.4, "s1": 0.9,
                                                                "s2": 0.2}}
    prompt["10"] = {"class_type": "Capture", "inputs": {"key": "m", "value": ["9", 0]}}
    with pytest.raises(GraphError, match="model: FreeU scales the skip and backbone features of a UNet decoder"):
        graph.run(prompt)
