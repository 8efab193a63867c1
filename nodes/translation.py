"""Zero-shot image-to-image translation (pix2pix-zero / pix2pix-zeroCon): EditDirection and
CutLossGuidance.

EditDirection turns a concept change ("cat" -> "dog") into a per-token text-embedding direction
(pix2pix-zero Sec. 3.2). CutLossGuidance is a GUIDER for SamplerCustomAdvanced: it runs the user's
sampler twice over the inverted latent in lockstep: reference step k with the caption (the
reconstruction, recording cross-attention maps and decoder self-attention features), then edit step k
with caption + direction, taking before each guided step one gradient step on x_t of
``lambda_xa * L_xa + lambda_cut * PatchNCE`` (pix2pix-zero Sec. 3.3; pix2pix-zeroCon). The math is
in ``core.translation``.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from ..core import translation as tr
from . import host
from .host import InputError, io

CATEGORY = f"{host.ROOT_CATEGORY}/translation"

EditDirectionType = io.Custom("EXEMPLAR_EDIT_DIRECTION")

PATCH_SIZES = (1, 2)
"""CDS ``run.py`` L18: PatchNCE on single tokens and 2x2 token means."""

ROLES = ("positive", "negative")
"""CFG rows by ``cond_or_uncond`` (0 = positive, 1 = negative)."""


# --- edit direction --------------------------------------------------------------------------


@dataclass(frozen=True)
class EditDirection:
    """A per-token text-embedding direction ``[1, 77, width]`` (and, for encoders with a pooled
    output such as SDXL's CLIP-G, a pooled direction ``[1, pooled_width]``), already scaled by the
    multiplier. ``encoders`` and ``width`` say which text encoder(s) made it."""

    tokens: torch.Tensor
    pooled: Optional[torch.Tensor]
    encoders: tuple[str, ...]
    source: str
    target: str

    @property
    def width(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def describe(self) -> str:
        return f"text encoder(s) {'+'.join('clip_' + e for e in self.encoders)}, width {self.width}"


_CACHE_SIZE = 32
_mean_cache: "OrderedDict[tuple, tuple[weakref.ref, torch.Tensor, Optional[torch.Tensor], tuple]]" = OrderedDict()


def _mean_embedding(clip, sentences: tuple[str, ...]) -> tuple[torch.Tensor, Optional[torch.Tensor], tuple]:
    """Mean text-encoder output over ``sentences`` (``[1, rows, width]``: the first 77-token chunk of a
    CLIP, T5's 256 rows on FLUX.1; pooled ``[1, P]`` or None),
    cached per CLIP (patcher identity) and sentence set, so changing the other concept or the
    multiplier does not re-encode this one."""
    patcher = host.clip_identity(clip)
    key = (id(patcher), sentences)
    hit = _mean_cache.get(key)
    if hit is not None and hit[0]() is patcher:
        _mean_cache.move_to_end(key)
        return hit[1], hit[2], hit[3]
    conds, pooled, encoders = [], [], ()
    for sentence in sentences:
        cond, pool, encoders = host.encode_text(clip, sentence)
        conds.append(cond.float().cpu())
        if pool is not None:
            pooled.append(pool.float().cpu())
    rows = min(c.shape[1] for c in conds)  # one chunk: 77 CLIP tokens, or T5's 256 rows (FLUX.1)
    mean = torch.cat([c[:, :rows] for c in conds]).mean(0, keepdim=True)
    mean_pooled = torch.cat(pooled).mean(0, keepdim=True) if len(pooled) == len(conds) else None
    _mean_cache[key] = (weakref.ref(patcher), mean, mean_pooled, encoders)
    while len(_mean_cache) > _CACHE_SIZE:
        _mean_cache.popitem(last=False)
    return mean, mean_pooled, encoders


def _custom_sentences(custom: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in custom.splitlines() if line.strip())


def _sentences(concept: str, custom: str, caption: str, concept_input: str, sentences_input: str) -> tuple[str, ...]:
    lines = _custom_sentences(custom)
    if lines:
        return lines
    if not concept.strip():
        raise InputError(
            f"{concept_input}: empty concept; type the word(s) to change (e.g. 'cat') or give sentences "
            f"in {sentences_input}, one per line"
        )
    return tuple(tr.sentence_templates(concept, caption or None))


class EditDirectionNode(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EditDirection",
            display_name="Edit Direction (pix2pix-zero)",
            category=CATEGORY,
            description=(
                "A text-embedding edit direction for CutLossGuidance (pix2pix-zero Sec. 3.2): the mean "
                "text-encoder output (all 77 tokens) over sentences about the target minus the same for the "
                "source, times the multiplier. Caption form (pix2pix-zeroCon): fill caption and target_caption "
                "(e.g. 'a photo of a cat sitting' -> 'a photo of a dog sitting'); both captions are wrapped in "
                "the same built-in sentence frames, plus templates around the words that changed. Concept form: "
                "leave target_caption empty; templates around the source and target words. Your own sentence "
                "lists replace either side. SDXL uses both text encoders; the pooled CLIP-G embedding gets the "
                "same mean difference. Results are cached per CLIP and sentence set."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP (the same one that encodes the caption)."),
                io.String.Input("source", default="cat",
                                tooltip="Concept form: the concept in the image to change (e.g. 'cat', 'photo'). "
                                        "Unused when source_sentences or target_caption is filled."),
                io.String.Input("target", default="dog",
                                tooltip="Concept form: the concept to change it into (e.g. 'dog', 'watercolor "
                                        "painting'). Unused when target_sentences or target_caption is filled."),
                io.String.Input("caption", default="",
                                tooltip="The caption of the image (the same text that conditions the inversion and "
                                        "CutLossGuidance). Caption form: the source side. Concept form: optional, "
                                        "the templates also put each concept next to it."),
                io.Float.Input("multiplier", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Scales the direction (pix2pix-zero demo: 'edit multiplier', 0-2, default 1). "
                                       "0 gives no edit."),
                io.String.Input("source_sentences", default="", multiline=True,
                                tooltip="Optional: your own sentences about the source concept, one per line "
                                        "(pix2pix-zero used ~1000 LLM-written ones). Replaces the templates."),
                io.String.Input("target_sentences", default="", multiline=True,
                                tooltip="Optional: your own sentences about the target concept, one per line. "
                                        "Replaces the templates."),
                io.String.Input("target_caption", default="", optional=True,
                                tooltip="Caption form (pix2pix-zeroCon): the caption as it should read after the "
                                        "edit, e.g. 'a photo of a dog sitting' for 'a photo of a cat sitting'. The "
                                        "words that differ from caption give the concept templates; source and "
                                        "target are unused. Empty: concept form."),
            ],
            outputs=[EditDirectionType.Output(
                display_name="DIRECTION",
                tooltip="The edit direction (per-token, plus pooled for SDXL); feed it to CutLossGuidance.")],
        )

    @classmethod
    def validate_inputs(cls, caption=None, target_caption=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        target_caption = values.get("target_caption")
        if not isinstance(target_caption, str) or not target_caption.strip():
            return
        caption = values.get("caption")
        if isinstance(caption, str):
            if not caption.strip():
                raise InputError(
                    "caption: target_caption is filled (caption form), so type the image's caption here too, "
                    "e.g. 'a photo of a cat sitting' for target_caption 'a photo of a dog sitting'"
                )
            if tr.changed_words(caption, target_caption) == ("", ""):
                raise InputError(
                    f"target_caption: {target_caption!r} says the same as caption {caption!r}, so the edit direction "
                    "would be zero; write the caption as it should read after the edit"
                )

    @classmethod
    def execute(cls, clip, source, target, caption, multiplier, source_sentences, target_sentences,
                target_caption="") -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if clip is None:
            raise InputError("clip: no CLIP; connect the checkpoint's CLIP output")
        if target_caption.strip():
            removed, added = tr.changed_words(caption, target_caption)
            src = _custom_sentences(source_sentences) or tuple(tr.caption_sentences(caption, removed))
            tgt = _custom_sentences(target_sentences) or tuple(tr.caption_sentences(target_caption, added))
            source, target = caption, target_caption
        else:
            src = _sentences(source, source_sentences, caption, "source", "source_sentences")
            tgt = _sentences(target, target_sentences, caption, "target", "target_sentences")
        src_mean, src_pooled, encoders = _mean_embedding(clip, src)
        tgt_mean, tgt_pooled, _ = _mean_embedding(clip, tgt)
        tokens = tr.edit_direction(src_mean, tgt_mean) * multiplier
        pooled = None
        if src_pooled is not None and tgt_pooled is not None:
            pooled = (tgt_pooled.mean(0, keepdim=True) - src_pooled.mean(0, keepdim=True)) * multiplier
        direction = EditDirection(tokens=tokens, pooled=pooled, encoders=encoders,
                                  source=source_sentences.strip() and "(custom)" or source,
                                  target=target_sentences.strip() and "(custom)" or target)
        return io.NodeOutput(direction)


# --- the guidance ----------------------------------------------------------------------------


RECORD, GUIDE = "record", "guide"


class _GuidanceState:
    """Per-guider state the attention patches read: the current pass, step and CFG row, the
    reference store and the loss terms of the current guided forward. Never deep-copied (clones of
    the patched model share it) and it holds no tensors between runs."""

    def __init__(self, use_maps: bool, use_features: bool, num_patches: int, tau: float):
        self.use_maps = use_maps
        self.use_features = use_features
        self.num_patches = num_patches
        self.tau = tau
        self.store = tr.ReferenceStore(None)  # the model's compute dtype, one step at a time
        self.mode: Optional[str] = None
        self.step = 0
        self.guided_rows: tuple[str, ...] = ROLES  # the roles of a guided forward's conditionings, in order
        self.share_rows = False
        self.generator: Optional[torch.Generator] = None
        self.xa_terms: dict[str, list[torch.Tensor]] = {}  # per CFG row of the guided forward
        self.cut_terms: dict[str, list[torch.Tensor]] = {}

    def __deepcopy__(self, memo):
        return self

    def reference_role(self, role: str) -> str:
        return "positive" if self.share_rows else role


def _roles(options: dict, batch: int, names: tuple[str, ...] = ROLES) -> list[tuple[str, slice]]:
    """The CFG rows of a batch as (role, slice), from ``cond_or_uncond`` (never by halves): the index of
    each chunk's conditioning in the evaluated list, named by ``names`` (a sampler's CFG: ``ROLES``)."""
    kinds = list(options.get("cond_or_uncond") or [0])
    per = batch // len(kinds)
    return [(names[min(kind, len(names) - 1)], slice(j * per, (j + 1) * per)) for j, kind in enumerate(kinds)]


class _CrossAttentionProbe(host.CrossAttentionProbe):
    """Every image-to-text attention (``host.backbone``), with explicit probabilities while a pass
    records or is guided: records the reference's maps, or adds the edit's L_xa term."""

    def __init__(self, state: _GuidanceState):
        self.state = state

    def __deepcopy__(self, memo):
        return self

    def active(self, options: dict) -> bool:
        return self.state.mode is not None and self.state.use_maps

    def __call__(self, maps: host.CrossAttentionMaps) -> None:
        state, probs, heads = self.state, maps.probs, maps.heads
        if state.mode == RECORD:
            batch = probs.shape[0] // heads
            for role, rows in _roles(maps.options, batch):
                if state.share_rows and role != "positive":
                    continue
                if not state.store.has_maps(state.step, role, maps.layer):
                    per_row = probs.reshape(batch, heads, *probs.shape[1:])[rows]
                    state.store.put_maps(state.step, role, maps.layer, per_row.flatten(0, 1))
        else:
            batch = probs.shape[0] // heads
            for role, rows in _roles(maps.options, batch, state.guided_rows):
                edit = probs.reshape(batch, heads, *probs.shape[1:])[rows].flatten(0, 1)
                ref = state.store.maps(state.step, state.reference_role(role), maps.layer, edit)
                state.xa_terms.setdefault(role, []).append(tr.cross_attention_loss([edit.float()], [ref.float()]))


class _FeatureProbe:
    """Samples image-token features of the later self-attention layers (``host.backbone``) for PatchNCE."""

    def __init__(self, state: _GuidanceState):
        self.state = state

    def __deepcopy__(self, memo):
        return self

    def __call__(self, tokens: host.TokenFeatures) -> None:
        state, n, grid, layer = self.state, tokens.features, tokens.grid, tokens.layer
        if state.mode is None or not state.use_features:
            return
        ids = state.store.patch_ids(state.step, layer)
        if state.mode == RECORD:
            if ids is None:  # drawn with the CPU generator (reproducible), kept on the features' device
                ids = tr.draw_patch_ids(grid, PATCH_SIZES, state.num_patches, state.generator)
                state.store.put_patch_ids(state.step, layer, ids, n.device)
                ids = state.store.patch_ids(state.step, layer)
            for role, rows in _roles(tokens.options, n.shape[0]):
                if state.share_rows and role != "positive":
                    continue
                if not state.store.has_samples(state.step, role, layer):
                    state.store.put_samples(state.step, role, layer,
                                            tr.sample_patch_features(n[rows].float(), grid, PATCH_SIZES, ids))
        elif ids is not None:
            for role, rows in _roles(tokens.options, n.shape[0], state.guided_rows):
                edit = tr.sample_patch_features(n[rows].float(), grid, PATCH_SIZES, ids)
                ref = [s.clone() for s in state.store.samples(state.step, state.reference_role(role), layer, edit[0])]
                state.cut_terms.setdefault(role, []).append(tr.patch_nce_from_samples(edit, ref, state.tau))


@dataclass
class GuidanceSettings:
    lambda_xa: float
    lambda_cut: float
    step_size: float
    start_step: int
    end_step: int

    def guided(self, k: int) -> bool:
        return (self.start_step <= k < self.end_step and self.step_size > 0
                and (self.lambda_xa > 0 or self.lambda_cut > 0))


class TranslationProgram:
    """The two passes of pix2pix-zero(Con) over the user's sampler (see ``host.GuidedSteps``), in
    lockstep: reference step k (the reconstruction with the caption), then edit step k guided by
    the maps and features reference step k recorded. The reference trajectory does not depend on
    the edit, so this is the same UNet work as a whole reference pass first, but only one step's
    maps are alive at a time (``peak_store_bytes``), in the model's own compute dtype."""

    def __init__(self, state: _GuidanceState, settings: GuidanceSettings, seed_offset: int = 0):
        self.state = state
        self.settings = settings
        self.seed_offset = seed_offset
        self.last_losses: list[dict] = []
        self.peak_store_bytes = 0

    def __call__(self, steps, x_start: torch.Tensor) -> torch.Tensor:
        state, settings = self.state, self.settings
        state.store.clear()
        self.last_losses, self.peak_store_bytes = [], 0
        seed = 0 if steps.seed is None else int(steps.seed)
        state.generator = torch.Generator(device="cpu").manual_seed(seed + self.seed_offset)
        guided = [k for k in range(steps.steps) if settings.guided(k)]
        last_guided = max(guided) if guided else -1
        try:
            x = x_reference = x_start
            losses_per_step = []
            for k in range(steps.steps):
                offset = None
                if k <= last_guided:  # the reference trajectory is needed up to the last guided step
                    x_reference = self.reference_step(steps, x_reference, k)
                if k in guided:
                    self.peak_store_bytes = max(self.peak_store_bytes, state.store.nbytes())
                    x, offset, losses = self.guidance_step(steps, x, k)
                    losses_per_step.append(losses)
                    state.store.clear()  # reference step k's maps: used, never again
                x = steps.sample_step(x, k, "positive", "negative", offset)
            self.last_losses = _loss_floats(losses_per_step)
            return x
        finally:
            state.mode = None
            state.store.clear()
            state.xa_terms, state.cut_terms = {}, {}

    def reference_step(self, steps, x: torch.Tensor, k: int) -> torch.Tensor:
        """Step ``k`` of the reconstruction with the caption (same CFG and negative), recording maps
        and features when step ``k`` will be guided."""
        state = self.state
        state.mode = RECORD if self.settings.guided(k) else None
        state.step = k
        try:
            # the caption as its own negative (pix2pix-zero): one evaluation serves both CFG rows
            return steps.sample_step(x, k, "reference", "reference" if state.share_rows else "negative")
        finally:
            state.mode = None

    def rows(self, steps) -> list[str]:
        """The CFG rows pix2pix-zero guides: both (uncond first) at CFG != 1, else the positive."""
        return ["positive"] if abs(steps.cfg - 1.0) < 1e-9 else ["negative", "positive"]

    def losses_at(self, steps, latents: dict[str, torch.Tensor], k: int, grad: bool
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({role: combined loss}, {role: VP leaf})`` of the CFG rows ``latents`` (sigma-space latent per
        row) at step ``k``, from one batched forward pass (as pix2pix-zero's 2-row ``x_in``)."""
        state, settings = self.state, self.settings
        sigma = steps.levels[k]
        with host.gradient_mode():
            leaves = {role: tr.vp_latent(latents[role].detach().clone(), sigma, steps.process).requires_grad_(grad)
                      for role in ROLES if role in latents}
            state.mode, state.step, state.guided_rows = GUIDE, k, tuple(leaves)
            state.xa_terms, state.cut_terms = {}, {}
            try:
                some = next(iter(latents.values()))
                sigma_batch = steps.sigmas[k].detach().clone().reshape(1).repeat(some.shape[0]).to(some)
                steps.denoise_each({role: tr.sigma_space_latent(leaf, sigma, steps.process)
                                    for role, leaf in leaves.items()}, sigma_batch)
                losses = {}
                for role, leaf in leaves.items():
                    xa, cut = state.xa_terms.get(role), state.cut_terms.get(role)
                    xa = torch.stack(xa).sum() if xa else leaf.new_zeros(())
                    cut = torch.stack(cut).sum() if cut else leaf.new_zeros(())
                    losses[role] = tr.guidance_loss(xa, cut, settings.lambda_xa, settings.lambda_cut)
            finally:
                state.mode = None
                state.xa_terms, state.cut_terms = {}, {}
        return losses, leaves

    def loss_at(self, steps, x: torch.Tensor, k: int, role: str, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(combined loss of one CFG row at sigma-space latent ``x`` and step ``k``, its VP leaf)."""
        losses, leaves = self.losses_at(steps, {role: x}, k, grad)
        return losses[role], leaves[role]

    def guidance_step(self, steps, x: torch.Tensor, k: int):
        """One SGD step per CFG row on x_t (pix2pix-zero ``edit_pipeline.py``: both rows in one forward
        and one backward pass, the loss averaged over the CFG batch, so each row moves by its own gradient;
        the uncond row is kept as x_t and the cond row is evaluated at its own updated latent). Returns
        (x_t, cond offset, losses), the losses per CFG row as detached 0-d tensors (read on the host once
        per run, not per step)."""
        sigma = steps.levels[k]
        rows = self.rows(steps)
        losses, leaves = self.losses_at(steps, {role: x for role in rows}, k, grad=True)
        updated = {}
        with host.gradient_mode():
            total = sum(losses.values()) / len(rows)
            if total.requires_grad:
                grads = torch.autograd.grad(total, [leaves[role] for role in rows])
            else:
                grads = [torch.zeros_like(leaves[role]) for role in rows]
            for role, grad in zip(rows, grads):
                step = tr.latent_guidance_step(leaves[role].detach(), grad, self.settings.step_size)
                updated[role] = tr.sigma_space_latent(step, sigma, steps.process).to(x.dtype)
        losses = {role: loss.detach() for role, loss in losses.items()}
        if rows == ["positive"]:
            return updated["positive"], None, losses
        return updated["negative"], updated["positive"] - updated["negative"], losses


def _loss_floats(losses_per_step: list[dict]) -> list[dict]:
    """Per-step ``{role: loss tensor}`` to ``{role: float}`` with a single device-to-host copy."""
    if not losses_per_step:
        return []
    values = iter(torch.stack([v.float() for step in losses_per_step for v in step.values()]).tolist())
    return [{role: next(values) for role in step} for step in losses_per_step]


def _check_conditioning(conditioning, name: str, width: Optional[int]) -> None:
    if not isinstance(conditioning, list) or not conditioning:
        raise InputError(f"{name}: expected a CONDITIONING (e.g. CLIPTextEncode output)")
    for entry in conditioning:
        tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise InputError(f"{name}: expected a text CONDITIONING [batch, tokens, width]")
        if width is not None and tensor.shape[-1] != width:
            raise InputError(
                f"{name}: conditioning is {tensor.shape[-1]} wide but the model cross-attends to {width}-wide text; "
                "encode it with this checkpoint's CLIP"
            )


def _edited_conditioning(positive: list, direction: EditDirection, edit_pooled: bool) -> list:
    """The caption conditioning plus the direction on every 77-token chunk (pix2pix-zero
    ``prompt_embeds_edit[1:2] += edit_dir``), and on the pooled output for models that use it."""
    edited = []
    for tensor, options in positive:
        if tensor.shape[1] % direction.tokens.shape[1] != 0:
            raise InputError(
                f"positive: {tensor.shape[1]} tokens is not a multiple of {direction.tokens.shape[1]}; use a "
                "plain CLIPTextEncode of the caption"
            )
        if tensor.shape[-1] != direction.width:
            raise InputError(
                f"direction: made by {direction.describe} but the caption conditioning 'positive' is "
                f"{tensor.shape[-1]} wide; build both with the same checkpoint's CLIP"
            )
        repeats = tensor.shape[1] // direction.tokens.shape[1]
        delta = direction.tokens.to(tensor).repeat(1, repeats, 1)
        options = dict(options)
        pooled = options.get("pooled_output")
        if edit_pooled and pooled is not None and direction.pooled is not None:
            if pooled.shape[-1] != direction.pooled.shape[-1]:
                raise InputError(
                    f"direction: pooled width {direction.pooled.shape[-1]} does not match the caption's "
                    f"{pooled.shape[-1]}; build both with the same checkpoint's CLIP"
                )
            options["pooled_output"] = pooled + direction.pooled.to(pooled)
        edited.append([tensor + delta, options])
    return edited


def _same_conditioning(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (ta, oa), (tb, ob) in zip(a, b):
        if ta.shape != tb.shape or not torch.equal(ta, tb):
            return False
        pa, pb = oa.get("pooled_output"), ob.get("pooled_output")
        if (pa is None) != (pb is None) or (pa is not None and not torch.equal(pa, pb)):
            return False
    return True


class CutLossGuidance(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutLossGuidance",
            display_name="CutLoss Guidance (pix2pix-zeroCon)",
            category=CATEGORY,
            description=(
                "Zero-shot image-to-image translation as a GUIDER for SamplerCustomAdvanced (your noise, "
                "sampler and sigmas). It samples the inverted latent twice with your sampler, in lockstep: "
                "reference step k with the caption (pix2pix-zero's reconstruction; records cross-attention maps and "
                "decoder self-attention features), then edit step k with caption + edit direction, taking before each "
                "guided step one gradient step on x_t of lambda_xa * L_xa (pix2pix-zero Eq. 4) + lambda_cut * "
                "PatchNCE (CUT Eq. 2-3 as in CDS, 256 locations, patch sizes 1 and 2, tau 0.07). lambda_cut 0 "
                "is pix2pix-zero. Use DDIMInvert (ddim, cfg 1, noise_regularization) for the latent and sigmas, "
                "DisableNoise, and the ddim/euler sampler; multistep samplers run as their first-order form."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to edit with (a patched clone is used; this one is not changed)."),
                io.Conditioning.Input("positive", tooltip="The caption of the input image (CLIPTextEncode); the "
                                      "reference pass uses it, the edit pass uses it plus the direction."),
                EditDirectionType.Input("direction", tooltip="The EditDirection output (same checkpoint's CLIP)."),
                io.Float.Input("cfg", default=5.0, min=1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance of both passes (pix2pix-zero: 5)."),
                io.Float.Input("lambda_xa", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Weight of the cross-attention loss L_xa (pix2pix-zero: 1, its only term). "
                                       "0 leaves the contrastive loss alone."),
                io.Float.Input("lambda_cut", default=3.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Weight of the PatchNCE loss on decoder self-attention outputs (CDS: w_cut 3; "
                                       "zeroCon's value is unpublished). 0 is exactly pix2pix-zero."),
                io.Float.Input("step_size", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="SGD step size eta on x_t per guided step (pix2pix-zero: 0.1 real images, "
                                       "0.15 synthetic). 0 turns guidance off."),
                io.Int.Input("guidance_start_step", default=0, min=0, max=10000,
                             tooltip="First guided step (0 = the first, most noisy step)."),
                io.Int.Input("guidance_end_step", default=1000, min=0, max=10000,
                             tooltip="Guidance stops before this step; values past the schedule guide to the end "
                                     "(pix2pix-zero guides every step)."),
                io.Int.Input("num_patches", default=256, min=1, max=4096,
                             tooltip="PatchNCE locations per layer and patch size, shared by reference and edit (CDS: 256)."),
                io.Float.Input("tau", default=0.07, min=0.001, max=10.0, step=0.001,
                               tooltip="PatchNCE temperature (CUT / CDS: 0.07)."),
                io.Boolean.Input("offload_to_cpu", default=False,
                                 tooltip="No effect (kept so saved workflows still load): the reference pass runs in "
                                         "lockstep with the edit pass, so only one step's maps are ever held."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning of both passes at cfg above 1; pix2pix-zero uses the "
                                              "caption again. Leave it unconnected for guidance-distilled models (FLUX.1-"
                                              "dev) at cfg 1, which have no negative pass."),
            ],
            outputs=[io.Guider.Output(display_name="GUIDER",
                                      tooltip="For SamplerCustomAdvanced, with DDIMInvert's LATENT and SIGMAS and DisableNoise.")],
        )

    @classmethod
    def validate_inputs(cls, guidance_start_step=None, guidance_end_step=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        problem = host.step_window_problem("guidance_start_step", values.get("guidance_start_step"),
                                           "guidance_end_step", values.get("guidance_end_step"))
        if problem:
            raise InputError(problem)

    @classmethod
    def execute(cls, model, positive, direction, cfg, lambda_xa, lambda_cut, step_size,
                guidance_start_step, guidance_end_step, num_patches, tau, offload_to_cpu, negative=None) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if not isinstance(direction, EditDirection):
            raise InputError("direction: expected the DIRECTION output of Edit Direction")
        host.check_sigma_space_model(model, flows=True)
        distilled = host.has_guidance_input(model)
        if negative is None:
            if cfg != 1.0:
                raise InputError(f"negative: cfg is {cfg}, so both passes need a negative conditioning (pix2pix-zero: "
                                 "the caption again); connect it, or set cfg to 1")
            negative = positive
        elif distilled and cfg == 1.0:
            raise InputError("negative: this model is guidance-distilled (FLUX.1-dev class) and samples at cfg 1, "
                             "which runs no negative pass, so the negative would be ignored; disconnect it (the "
                             "distilled guidance of the positive conditioning guides), or set cfg above 1 for true CFG")
        width = host.context_width(model)
        family = host.model_family(model)
        if width is not None and direction.width != width:
            raise InputError(
                f"direction: made by {direction.describe}, but this {family} model cross-attends to {width}-wide "
                "text; build the direction with this checkpoint's CLIP"
            )
        uses_pooled = host.uses_pooled_text(model)
        if uses_pooled and direction.pooled is None:
            raise InputError(
                f"direction: made by {direction.describe}, which does not match this {family} model's text "
                "encoders; build the direction with this checkpoint's CLIP"
            )
        _check_conditioning(positive, "positive", width)
        _check_conditioning(negative, "negative", width)

        state = _GuidanceState(use_maps=lambda_xa > 0, use_features=lambda_cut > 0, num_patches=num_patches,
                               tau=tau)
        state.share_rows = _same_conditioning(positive, negative)
        patched = host.differentiable_model(model)
        backbone = host.backbone(patched)
        backbone.add_cross_attention_probe(patched, _CrossAttentionProbe(state))
        backbone.add_feature_probe(patched, _FeatureProbe(state))
        settings = GuidanceSettings(lambda_xa, lambda_cut, step_size, guidance_start_step, guidance_end_step)
        conds = {"positive": _edited_conditioning(positive, direction, uses_pooled), "negative": negative, "reference": positive}
        guider = host.make_stepwise_guider(patched, conds, cfg, TranslationProgram(state, settings))
        return io.NodeOutput(guider)
