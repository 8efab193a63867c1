"""pix2pix-zero's editing loop written out as a plain PyTorch loop over the same ComfyUI UNet: the
comparator the bench times CutLossGuidance against (issue 23).

It follows the official ``EditingPipeline.__call__`` (pix2pixzero/pix2pix-zero ``src/utils/edit_pipeline.py``)
pass for pass, on the checkpoint's own ``diffusion_model`` loaded outside inference mode (as
bench/analogy.py's plain loop), with no ModelPatcher, sampler, guider or wrapper in between:

1. the reference pass, whole, before the edit: per step one 2-row CFG batch ``[negative, caption]``
   under ``no_grad``, every ``attn2``'s attention probabilities stored (``.detach().cpu()``, as the
   official ``d_ref_t2attn``), CFG and a DDIM step;
2. the edit pass, per step: ``x_in = [x_t, x_t]`` with ``requires_grad``, one 2-row forward with
   ``[negative, caption + direction]``, ``L_xa = sum_layers ((curr - ref) ** 2).sum((1, 2)).mean(0)``,
   ``backward``, ``SGD([x_in], lr=step_size).step()``, a no-grad 2-row forward at the updated
   ``x_in``, ``x_t = x_in[0]``, CFG and a DDIM step.

The attention probabilities come from an explicit attention at every ``attn2`` (the official
``CrossAttention`` processor: ``baddbmm`` scores times ``1/sqrt(d)``, softmax, ``bmm`` with the
values), installed through the UNet's own ``transformer_options["patches_replace"]`` argument of
each call. The schedule is the pack's (the inversion's sigmas; the official DDIM update written in
the variance-preserving latent with ``alpha_bar = 1 / (1 + sigma^2)``), so both runs see the same
timesteps. ``tests/integration/test_translation_comparator.py`` checks that this loop and CutLossGuidance
(``lambda_cut`` 0) give the same latent on the test checkpoint, and the bench records their difference.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def _attn2_keys(unet) -> list[tuple[str, int, int]]:
    """``(block, number, index)`` of every cross-attention, from the module names (the keys the
    UNet's ``patches_replace["attn2"]`` looks up first)."""
    keys = []
    for name, _module in unet.named_modules():
        parts = name.split(".")
        if parts[-1] != "attn2" or "transformer_blocks" not in parts:
            continue
        index = int(parts[parts.index("transformer_blocks") + 1])
        if parts[0] == "input_blocks":
            keys.append(("input", int(parts[1]), index))
        elif parts[0] == "output_blocks":
            keys.append(("output", int(parts[1]), index))
        elif parts[0] == "middle_block":
            keys.append(("middle", 0, index))
    return keys


class _ExplicitCrossAttention:
    """The official ``CrossAttention`` with its stored ``attn_probs`` (pix2pix-zero
    ``src/utils/cross_attention.py``), as an ``attn2`` replace: q, k, v are already projected."""

    def __init__(self):
        self.probs: dict[tuple, torch.Tensor] = {}

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        batch, tokens, inner = q.shape
        dim = inner // heads

        def head_to_batch(t):
            return t.reshape(batch, t.shape[1], heads, dim).permute(0, 2, 1, 3).reshape(batch * heads, t.shape[1], dim)

        query, key, value = head_to_batch(q), head_to_batch(k), head_to_batch(v)
        scores = torch.baddbmm(torch.empty(query.shape[0], tokens, key.shape[1], dtype=query.dtype,
                                           device=query.device),
                               query, key.transpose(-1, -2), beta=0, alpha=dim ** -0.5)
        probs = scores.softmax(dim=-1)
        block = extra_options["block"]
        self.probs[(block[0], int(block[1]), int(extra_options.get("block_index", 0)))] = probs
        out = torch.bmm(probs, value)
        return out.reshape(batch, heads, tokens, dim).permute(0, 2, 1, 3).reshape(batch, tokens, inner)


def _ddim_step(eps: torch.Tensor, x_vp: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """diffusers ``DDIMScheduler.step`` (eta 0) with ``alpha_bar = 1 / (1 + sigma^2)``."""
    alpha, alpha_next = 1.0 / (1.0 + sigma * sigma), 1.0 / (1.0 + sigma_next * sigma_next)
    x0 = (x_vp - math.sqrt(1.0 - alpha) * eps) / math.sqrt(alpha)
    return math.sqrt(alpha_next) * x0 + math.sqrt(1.0 - alpha_next) * eps


class OfficialPix2PixZero:
    """The official editing loop (module docstring) over ``base`` (a ComfyUI ``BaseModel`` whose
    weights are ordinary tensors). ``store_device``: where the reference maps are kept (official: CPU)."""

    def __init__(self, base, store_device: str = "cpu"):
        self.base = base
        self.unet = base.diffusion_model
        self.sampling = base.model_sampling
        self.keys = _attn2_keys(self.unet)
        self.store_device = store_device
        self.losses: list[float] = []

    def _eps(self, x_vp, sigma: float, context, extra: dict, attention: Optional[_ExplicitCrossAttention]):
        options = {}
        if attention is not None:
            options["patches_replace"] = {"attn2": {key: attention for key in self.keys}}
        sigma_t = torch.full((x_vp.shape[0],), sigma, device=x_vp.device)
        t = self.sampling.timestep(sigma_t).float()
        dtype = self.base.get_dtype()
        return self.unet(x_vp.to(dtype), t, context=context.to(dtype), transformer_options=options,
                         **{k: v.to(dtype) for k, v in extra.items()}).float()

    def _extra(self, pooled: list, shape) -> dict:
        """SDXL's ``y`` (pooled text and size vector) per row, as ComfyUI's ``encode_adm`` fills it in."""
        if not self.base.adm_channels:
            return {}
        height, width = shape[-2] * 8, shape[-1] * 8
        rows = [self.base.encode_adm(pooled_output=p, width=width, height=height) for p in pooled]
        return {"y": torch.cat(rows).to(self.unet_device)}

    @property
    def unet_device(self):
        return next(self.unet.parameters()).device

    def __call__(self, x_start: torch.Tensor, sigmas: torch.Tensor, negative: torch.Tensor, caption: torch.Tensor,
                 direction: torch.Tensor, cfg: float, step_size: float, pooled: Optional[tuple] = None) -> torch.Tensor:
        """``x_start`` the inverted latent (sigma space, as DDIMInvert gives it), ``sigmas`` its schedule,
        ``negative``/``caption`` ``[1, 77k, D]`` text, ``direction`` ``[1, 77, D]``; ``pooled``:
        (negative, caption, caption + pooled direction) for SDXL. Returns the edited latent (sigma space)."""
        if not cfg > 1.0:
            raise ValueError("the official loop runs a CFG batch of two rows: cfg must be above 1")
        device = self.unet_device
        levels = [float(s) for s in sigmas.tolist()]
        latents = (x_start.float() / math.sqrt(1.0 + levels[0] ** 2)).to(device)
        latents_init = latents.clone()
        repeats = caption.shape[1] // direction.shape[1]
        prompt_embeds = torch.cat([negative, caption]).float().to(device)
        prompt_embeds_edit = prompt_embeds.clone()
        prompt_embeds_edit[1:2] += direction.float().to(device).repeat(1, repeats, 1)
        extra_ref = self._extra([pooled[0], pooled[1]], x_start.shape) if pooled else {}
        extra_edit = self._extra([pooled[0], pooled[2]], x_start.shape) if pooled else {}
        attention = _ExplicitCrossAttention()
        steps = len(levels) - 1

        reference: list[dict] = []
        with torch.no_grad():  # 1. the reference pass, all steps first
            for i in range(steps):
                attention.probs.clear()
                noise_pred = self._eps(torch.cat([latents] * 2), levels[i], prompt_embeds, extra_ref, attention)
                reference.append({key: p.detach().to(self.store_device) for key, p in attention.probs.items()})
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + cfg * (noise_pred_text - noise_pred_uncond)
                latents = _ddim_step(noise_pred, latents, levels[i], levels[i + 1])

        latents = latents_init
        self.losses = []
        for i in range(steps):  # 2. the edit pass
            x_in = torch.cat([latents] * 2).detach().clone()
            x_in.requires_grad = True
            opt = torch.optim.SGD([x_in], lr=step_size)
            attention.probs.clear()
            with torch.enable_grad():
                self._eps(x_in, levels[i], prompt_embeds_edit.detach(), extra_edit, attention)
                loss = 0.0
                for key in self.keys:
                    curr = attention.probs[key]
                    ref = reference[i][key].detach().to(device)
                    loss += ((curr - ref) ** 2).sum((1, 2)).mean(0)
                loss.backward(retain_graph=False)
            attention.probs.clear()
            opt.step()
            self.losses.append(float(loss.detach()))
            with torch.no_grad():
                noise_pred = self._eps(x_in.detach(), levels[i], prompt_embeds_edit, extra_edit, None)
            latents = x_in.detach().chunk(2)[0]
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + cfg * (noise_pred_text - noise_pred_uncond)
            latents = _ddim_step(noise_pred, latents, levels[i], levels[i + 1])
        return latents * math.sqrt(1.0 + levels[-1] ** 2)


# --- the bench-only node ------------------------------------------------------------------------------

_LOADED: dict[str, object] = {}


def plain_model(path: str):
    """The checkpoint's ``BaseModel`` loaded once per process outside inference mode, weights requiring
    no gradient, on the torch device ComfyUI computes on."""
    if path not in _LOADED:
        import comfy.model_management
        import comfy.sd

        with torch.inference_mode(False):
            model, *_ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False,
                                                              embedding_directory=[])
            base = model.model
            base.diffusion_model.to(comfy.model_management.get_torch_device())
            base.requires_grad_(False)
        _LOADED[path] = base
    return _LOADED[path]


class BenchOfficialTranslation:
    """Bench-only node: :class:`OfficialPix2PixZero` on the inputs a CutLossGuidance graph has (the
    inversion's latent and sigmas, the caption as positive and negative, the edit direction)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": ("STRING", {"default": ""}), "latent": ("LATENT",), "sigmas": ("SIGMAS",),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "direction": ("EXEMPLAR_EDIT_DIRECTION",),
            "cfg": ("FLOAT", {"default": 5.0}), "step_size": ("FLOAT", {"default": 0.1}),
            "run": ("INT", {"default": 0, "min": 0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "edit"
    CATEGORY = "bench"
    last_losses: list[float] = []

    def edit(self, ckpt_name, latent, sigmas, positive, negative, direction, cfg, step_size, run):
        import folder_paths

        base = plain_model(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name))
        with torch.inference_mode(False):  # the inputs were made under inference mode: ordinary copies
            (neg, neg_opts), (pos, pos_opts) = negative[0], positive[0]
            neg, pos = neg.clone(), pos.clone()
            pooled = None
            if base.adm_channels:
                pooled_pos = pos_opts["pooled_output"].clone()
                pooled = (neg_opts["pooled_output"].clone(), pooled_pos,
                          pooled_pos + direction.pooled.clone().to(pooled_pos))
            loop = OfficialPix2PixZero(base)
            x_start = base.process_latent_in(latent["samples"].clone().to(loop.unet_device))  # as the guider does
            out = loop(x_start, sigmas.clone(), neg, pos, direction.tokens.clone(), cfg, step_size, pooled)
            out = base.process_latent_out(out)
            BenchOfficialTranslation.last_losses = loop.losses
        return ({"samples": out.cpu()},)


def register() -> None:
    import nodes

    nodes.NODE_CLASS_MAPPINGS["BenchOfficialTranslation"] = BenchOfficialTranslation

