"""The shared way to run ComfyUI's UNet and text encoder with gradients (nodes/host/gradients.py).

On a model and CLIP loaded the way ComfyUI loads them (inference tensors) with a LoRA applied, the
gradients of the trainer's loss (through the text encoder and the UNet to the Difference tokens)
and of a guidance loss (through attention probabilities to the latent) equal plain autograd through
the merged weights of the same checkpoint loaded as ordinary PyTorch modules; no parameter of the
shared model gets a ``.grad`` and the shared model is unchanged. The host decides the strategy
(``reload`` where ``ModelPatcher.clone(force_deepcopy=...)`` exists, ``copy_weights`` before),
so running this file on every host of the matrix tests both."""
from __future__ import annotations

import contextlib
import inspect

import pytest
import torch

import pack_testing
from pack_testing import checkpoint_path

pytestmark = pytest.mark.integration

pack_testing.import_host()
from exemplar_edit.core import translation as tr  # noqa: E402
from exemplar_edit.nodes import analogy, host  # noqa: E402
from exemplar_edit.nodes.host import gradients  # noqa: E402

RANK = 4
PROMPT_BEFORE, PROMPT_AFTER = "a photo of a cabin", "a photo of a cabin in winter"


def _load(inference: bool):
    """(model, clip) of the SD15 test checkpoint; under inference mode as a loader node makes them."""
    import comfy.sd

    path = str(checkpoint_path("test_sd15.safetensors"))
    with torch.inference_mode() if inference else contextlib.nullcontext():
        model, clip = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)[:2]
    return model, clip


def _test_lora(model, clip) -> tuple[dict, dict]:
    """A random LoRA on every attention projection of the UNet and the text encoder, in the
    standard ``lora_unet_*`` / ``lora_te_*`` format, and the weight deltas it means
    (``up @ down * alpha / rank`` with alpha = rank), by state-dict key. The merged weights the
    references differentiate through are ComfyUI's own merge (``_merged``): it rounds the merged
    weight to the stored dtype stochastically, which no hand-written merge reproduces."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    shapes = {k: v.shape for k, v in model.model.state_dict().items()}
    shapes.update({k: v.shape for k, v in clip.cond_stage_model.state_dict().items()})
    generator = torch.Generator().manual_seed(11)
    lora, deltas = {}, {}
    for name, target in sorted(key_map.items()):
        if not isinstance(target, str) or not name.startswith(("lora_unet_", "lora_te_")) or target in deltas:
            continue
        if not any(part in target for part in (".attn1.", ".attn2.", ".self_attn.")) or len(shapes.get(target, ())) != 2:
            continue
        rows, cols = shapes[target]
        up = torch.randn(rows, RANK, generator=generator) * 0.15
        down = torch.randn(RANK, cols, generator=generator) * 0.15
        lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"] = up, down
        lora[f"{name}.alpha"] = torch.tensor(float(RANK))
        deltas[target] = up @ down
    assert any(k.startswith("diffusion_model.") for k in deltas) and any(k.startswith("clip_l.") for k in deltas)
    return lora, deltas


def _merged(model, clip, lora: dict):
    """``model`` and ``clip`` (ordinary modules) with ``lora`` merged into their weights by ComfyUI
    itself (its LoRA math and its rounding of the merged weight to the stored dtype), in place."""
    import comfy.model_management
    import comfy.sd

    lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    comfy.model_management.load_models_gpu([lora_model, lora_clip.patcher])
    return lora_model, lora_clip


def _out_of_place_layer_norms(clip) -> None:
    """The plain reference's CLIP layers add in place onto their LayerNorm inputs (ComfyUI's
    CLIPLayer); its LayerNorms normalise a copy, on this test's own private instance."""
    import types

    for module in clip.cond_stage_model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.forward = types.MethodType(lambda self, x, *a, **k: type(self).forward(self, x.clone(), *a, **k),
                                              module)


def _snapshot(model, clip) -> dict:
    """What the shared model and CLIP compute, used as the next node would use them: a prompt's
    conditioning and a denoised prediction (ComfyUI patches a LoRA clone's weights into the shared
    modules while that clone is loaded and restores them when another patcher loads, so the
    modules' tensors alone do not tell)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    out = {}
    with torch.inference_mode():
        out["cond"] = host.encode_tokens(clip, clip.tokenize(PROMPT_AFTER))[0][0].clone()

        def body(run):
            prepared = run.prepare_conditioning([[out["cond"], {}]], x)
            out["denoised"] = run.denoise(x, torch.tensor([2.0]), prepared).clone()

        host.run_with_model(model, tuple(x.shape), body)
    return out


def _assert_untouched(model, clip, snapshot: dict) -> None:
    now = _snapshot(model, clip)
    changed = [k for k in snapshot if not torch.equal(now[k], snapshot[k])]
    assert not changed, f"the shared model computes differently afterwards: {changed}"
    assert all(p.grad is None for p in model.model.parameters()), "a shared UNet parameter got a .grad"
    assert all(p.grad is None for p in clip.cond_stage_model.parameters()), "a shared CLIP parameter got a .grad"


def inputs(size: int = 8, device="cpu") -> dict:
    """Fixed inputs of both losses: latents of ``size``² (8 on the test model; 64 for 512 px)."""
    g = torch.Generator().manual_seed(0)
    latent = (1, 4, size, size)
    data = {
        "z_before": torch.randn(latent, generator=g), "z_after": torch.randn(latent, generator=g),
        "noise": torch.randn(latent, generator=g), "rows": torch.randn(2, 768, generator=g) * 0.3,
        "x": torch.randn((2,) + latent[1:], generator=g), "cond": torch.randn(1, 77, 768, generator=g),
        "sigma": torch.tensor(2.5),
    }
    return {k: v.to(device) for k, v in data.items()}


def _trainer_loss_reference(model, clip, data) -> torch.Tensor:
    """d(L_after + L_before)/d(rows) by plain autograd on ordinary modules (Sec. 4.3 of the paper)."""
    rows = data["rows"].clone().requires_grad_(True)
    tokens_a, tokens_b = clip.tokenize(PROMPT_BEFORE), clip.tokenize(PROMPT_AFTER)
    cond_plus = host.encode_tokens(clip, host.append_embedding_rows(clip, tokens_a, {"l": rows}))[0][0]
    cond_minus = host.encode_tokens(clip, host.append_embedding_rows(clip, tokens_b, {"l": -rows}))[0][0]
    sigma = data["sigma"].reshape(1)
    total = 0
    for cond, latent in ((cond_plus, data["z_after"]), (cond_minus, data["z_before"])):
        x = latent + sigma * data["noise"]
        denoised = model.model.apply_model(x, sigma, c_crossattn=cond)
        total = total + ((denoised - latent) / -sigma).pow(2).mean()  # eps model: dD/d(eps) = -sigma
    total.backward()
    return rows.grad


def trainer_loss_and_grad(model, clip, data) -> tuple[float, torch.Tensor]:
    """The pack's way (DeltaInterpolationTrainer): L_after + L_before and its gradient in the tokens."""
    unet, text = host.differentiable_model(model), host.differentiable_clip(clip)
    losses = []

    def body(run):
        with host.gradient_mode():
            prompts = analogy.difference_prompts(run.patcher, text, clip.tokenize(PROMPT_BEFORE),
                                                 clip.tokenize(PROMPT_AFTER), rows)
            losses.extend(analogy.consistency_step(
                run, prompts, data["z_before"].clone(), data["z_after"].clone(), data["sigma"].clone(),
                data["noise"].clone()))

    with host.gradient_mode():
        rows = {"l": data["rows"].clone().requires_grad_(True)}
        host.run_with_model(unet, tuple(data["z_after"].shape), body)
    return float(sum(losses)), rows["l"].grad


def _attention_probe(terms: list):
    def probe(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        probs = tr.attention_probabilities(q, k, heads)
        terms.append(probs.float().square().mean())
        return tr.attend(probs, v, heads)
    return probe


def _guidance_loss_reference(model, data) -> torch.Tensor:
    terms: list = []
    probe = _attention_probe(terms)
    options = {"patches_replace": {"attn2": {key: probe for key in host.attention_block_ids(model)}}}
    x = data["x"].clone().requires_grad_(True)
    sigma = data["sigma"].reshape(1).expand(2)
    denoised = model.model.apply_model(x, sigma, c_crossattn=data["cond"].expand(2, -1, -1), transformer_options=options)
    (torch.stack(terms).sum() + denoised.pow(2).mean()).backward()
    return x.grad


def guidance_loss_and_grad(model, data) -> tuple[float, torch.Tensor]:
    """The pack's way (CutLossGuidance): a loss on every cross-attention map plus the prediction,
    and its gradient in the latent, through the model's attention patches."""
    terms: list = []
    patched = host.differentiable_model(model)
    for block_name, number in host.attention_block_ids(patched):
        patched.set_model_attn2_replace(_attention_probe(terms), block_name, number)
    result = {}

    def body(run):
        with host.gradient_mode():
            x = data["x"].clone().requires_grad_(True)
            prepared = run.prepare_conditioning([[data["cond"].clone(), {}]], x)
            denoised = run.denoise(x, data["sigma"].clone().reshape(1).expand(2), prepared)
            loss = torch.stack(terms).sum() + denoised.float().pow(2).mean()
            result["loss"] = float(loss)
            result["grad"] = torch.autograd.grad(loss, x)[0]

    host.run_with_model(patched, tuple(data["x"].shape), body)
    return result["loss"], result["grad"]


@pytest.fixture(scope="module")
def lora_setup():
    shared_model, shared_clip = _load(inference=True)
    plain_model, plain_clip = _load(inference=False)
    lora, deltas = _test_lora(plain_model, plain_clip)
    import comfy.sd

    with torch.inference_mode():
        lora_model, lora_clip = comfy.sd.load_lora_for_models(shared_model, shared_clip, lora, 1.0, 1.0)
    unmerged = (plain_model, plain_clip)
    merged_model, merged_clip = _merged(*_load(inference=False), lora)
    changed = [k for k, v in merged_clip.cond_stage_model.state_dict().items()
               if k in deltas and not torch.equal(v, plain_clip.cond_stage_model.state_dict()[k])]
    assert len(changed) == sum(k.startswith("clip_l.") for k in deltas), "ComfyUI must have merged the test LoRA"
    for clip in (plain_clip, merged_clip):
        _out_of_place_layer_norms(clip)
    return {"shared": (shared_model, shared_clip), "lora": (lora_model, lora_clip),
            "merged": (merged_model, merged_clip), "unmerged": unmerged}


def test_trainer_gradients_with_a_lora_equal_plain_autograd_through_the_merged_weights(lora_setup):
    data = inputs()
    shared_model, shared_clip = lora_setup["shared"]
    snapshot = _snapshot(shared_model, shared_clip)
    with torch.inference_mode():  # as every node runs
        _, grad = trainer_loss_and_grad(*lora_setup["lora"], data)
    reference = _trainer_loss_reference(*lora_setup["merged"], data)
    without_lora = _trainer_loss_reference(*lora_setup["unmerged"], data)
    assert pack_testing.relative_error(without_lora, reference) > 0.05, "the test LoRA must change the gradient"
    assert pack_testing.relative_error(grad, reference) < 1e-4
    _assert_untouched(shared_model, shared_clip, snapshot)


def test_guidance_gradients_with_a_lora_equal_plain_autograd_through_the_merged_weights(lora_setup):
    data = inputs()
    shared_model, shared_clip = lora_setup["shared"]
    snapshot = _snapshot(shared_model, shared_clip)
    with torch.inference_mode():
        _, grad = guidance_loss_and_grad(lora_setup["lora"][0], data)
    reference = _guidance_loss_reference(lora_setup["merged"][0], data)
    without_lora = _guidance_loss_reference(lora_setup["unmerged"][0], data)
    assert pack_testing.relative_error(without_lora, reference) > 0.05, "the test LoRA must change the gradient"
    assert pack_testing.relative_error(grad, reference) < 1e-4
    _assert_untouched(shared_model, shared_clip, snapshot)


def test_strategy_follows_what_the_host_offers(lora_setup):
    import comfy.model_patcher

    model = lora_setup["shared"][0]
    reload_possible = "force_deepcopy" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters
    expected = gradients.RELOAD if reload_possible else gradients.COPY_WEIGHTS
    assert host.gradient_strategy(model) == expected


def test_a_dynamic_model_that_cannot_be_reloaded_is_refused_with_the_fix():
    class DynamicPatcher:  # what a custom loader's model under Dynamic VRAM looks like to the pack
        cached_patcher_init = None

        def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
            return self

        def is_dynamic(self):
            return True

    with pytest.raises(host.InputError, match="--disable-dynamic-vram"):
        host.gradient_strategy(DynamicPatcher())


def test_reloaded_copy_has_ordinary_weights_and_no_wrappers(lora_setup):
    """reload hosts: the run evaluates a private copy with ordinary (non-inference) weights, loaded
    in full; the shared model's weights are inference tensors and are not the ones evaluated."""
    model = lora_setup["lora"][0]
    if host.gradient_strategy(model) != gradients.RELOAD:
        pytest.skip("this host predates ModelPatcher.clone(force_deepcopy=...): copy_weights is tested below")
    seen = {}

    def body(run):
        weights = [p for p in run.base_model.diffusion_model.parameters()]
        seen["private"] = run.base_model is not model.model
        seen["ordinary"] = not any(p.is_inference() for p in weights)
        seen["no_wrappers"] = all(not getattr(m, "weight_function", []) for m in run.base_model.modules())

    with torch.inference_mode():
        host.run_with_model(host.differentiable_model(model), (1, 4, 8, 8), body)
    assert seen == {"private": True, "ordinary": True, "no_wrappers": True}
    assert next(model.model.diffusion_model.parameters()).is_inference()


def test_copied_weights_are_ordinary_patched_copies_and_the_shared_originals_come_back(lora_setup):
    """copy_weights hosts: the run evaluates the shared model with every weight patched into an ordinary
    copy (the LoRA merged into it), without weight wrappers; unloading restores the inference-tensor
    originals."""
    import comfy.model_management

    model = lora_setup["lora"][0]
    if host.gradient_strategy(model) != gradients.COPY_WEIGHTS:
        pytest.skip("this host reloads the model with ordinary weights (tested above)")
    seen = {}

    def body(run):
        weights = list(run.base_model.diffusion_model.parameters())
        seen["shared"] = run.base_model is model.model
        seen["ordinary"] = not any(p.is_inference() for p in weights)
        seen["no_wrappers"] = all(not getattr(m, "weight_function", []) for m in run.base_model.modules())

    with torch.inference_mode():
        host.run_with_model(host.differentiable_model(model), (1, 4, 8, 8), body)
    assert seen == {"shared": True, "ordinary": True, "no_wrappers": True}
    comfy.model_management.unload_all_models()
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())


def test_text_encoder_weight_copies_are_not_kept_for_the_backward_pass(lora_setup, monkeypatch):
    """copy_weights hosts: the text encoder's per-forward weight copies are replaced by references in the
    saved tensors (one whole text encoder less in memory during the backward pass)."""
    model, clip = lora_setup["shared"]
    if host.gradient_strategy(model) != gradients.COPY_WEIGHTS:
        pytest.skip("this host reloads the model with ordinary weights: no per-forward copies exist")
    references = []
    original_pack = gradients._SAVED_WEIGHTS.pack

    def counting_pack(tensor):
        packed = original_pack(tensor)
        if isinstance(packed, gradients._WeightReference):
            references.append(packed)
        return packed

    monkeypatch.setattr(gradients._SAVED_WEIGHTS, "pack", counting_pack)
    with torch.inference_mode():
        trainer_loss_and_grad(model, clip, inputs())
    weighted_layers = sum(1 for m in clip.cond_stage_model.modules()
                          if getattr(m, "weight", None) is not None and hasattr(m, "weight_function"))
    assert len(references) >= weighted_layers // 2


def test_flux_latent_gradient_matches_finite_differences():
    """FLUX blocks add their residuals in place onto tensors their LayerNorms saved (``img += ...``):
    the gradient of a loss on the prediction in the latent, through every block of the FLUX-layout
    test model, equals the directional finite difference of the same loss (a clobbered saved tensor
    gives a wrong gradient or, without saved-tensor hooks, an error)."""
    import comfy.sd
    from pack_testing import flux_file, flux_model_for_host

    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(flux_file("diffusion_models", flux_model_for_host())))
    patched = host.differentiable_model(model)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn((1, 16, 8, 8), generator=generator)
    direction = torch.randn(x0.shape, generator=generator)
    weights = torch.randn(x0.shape, generator=generator)
    cond = torch.randn((1, 8, 768), generator=generator)
    pooled = torch.randn((1, 768), generator=generator)
    sigma = torch.tensor([0.7])
    result = {}

    def body(run):
        with host.gradient_mode():
            prepared = run.prepare_conditioning([[cond.clone(), {"pooled_output": pooled.clone()}]], x0)

            def loss_at(x):
                return (run.denoise(x, sigma.clone(), prepared).float() * weights).sum()

            x = x0.clone().requires_grad_(True)
            result["grad"] = torch.autograd.grad(loss_at(x), x)[0]
            h = 1e-2
            with torch.no_grad():
                result["fd"] = float(loss_at(x0 + h * direction) - loss_at(x0 - h * direction)) / (2 * h)

    host.run_with_model(patched, tuple(x0.shape), body)
    analytic = float((result["grad"] * direction).sum())
    assert abs(analytic - result["fd"]) <= 2e-2 * abs(result["fd"]) + 1e-3, (analytic, result["fd"])
