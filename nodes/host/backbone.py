"""One interface between the pack's methods and the denoiser's backbone: an SD UNet or a FLUX-class DiT.

The attention methods need three things of a model, per self-attention layer, and nothing else:

- **layers**: which of its self-attention layers a named choice selects (``select_layers``);
- **image tokens**: at a chosen layer, for every row of the batch, the features an edit *matches* and
  the features it *replaces* (``add_token_hook``): the hook gets an :class:`ImageTokens` and returns
  new replaceable features, or None to leave the layer alone;
- **attention maps**: the head-averaged attention of the image tokens over the image tokens (self)
  and over the text tokens (cross) at a chosen layer (``add_attention_capture``);
- **differentiable probes** for guidance: every image-to-text attention as explicit probabilities
  that the layer's output is then computed from (``add_cross_attention_probe``), and image-token
  features of the later layers (``add_feature_probe``).

``backbone(model)`` picks the adapter by what the model is, not by its name or ComfyUI's version:

- :class:`UNetBackbone` (SD1.x, SD2.x, SDXL): the features are the ``norm1`` output that a
  ``BasicTransformerBlock`` feeds its self-attention (``attn1_patch``), matched and replaced as they
  are; self maps from ``attn1`` and cross maps from ``attn2`` replaces.
- :class:`FluxBackbone` (FLUX.1 layout: double- and single-stream blocks over joint text+image
  tokens): a ``patches_replace["dit"]`` block wrapper hands the block's rotary angles to the
  attention, where ComfyUI's ``optimized_attention_override`` sees the joint q, k, v. The replaceable
  features are the image tokens' ``[q | k | v]`` with the rotation undone (position-free: moving a
  token's content to another place then rotates it for its new place); the matched features are one
  of q, k, v or the block's input hidden state (``FLUX_MATCHING``). Gathering q/k/v tokens equals
  gathering the modulated hidden states before the (token-wise) projection, as the UNet's rearranged
  ``norm1`` features are, because the rows of one batch share timestep, guidance and pooled text.
  In single-stream blocks only the attention half takes the replaced features (their MLP half
  reads the hidden state in parallel). The override and block wrappers are chained with those other
  packs installed, so both run. Only documented patch points are used, so every ComfyUI from 0.3.75
  serves this (0.3.75's FLUX blocks have no ``attn1_patch``).

Adding another DiT (SD3.5, Qwen-Image) is one more adapter class and one more line in ``backbone``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ...core import rope
from .facts import InputError
from .sampling import add_apply_model_wrapper


@dataclass(frozen=True)
class ImageTokens:
    """What a token hook sees at one self-attention layer in one model call.

    ``match`` ``[B, N, C]`` are the features to compare (correspondence), ``values`` ``[B, N, D]`` the
    features an edit may replace (return a tensor like it); N = h * w image tokens, row-major over
    ``grid``. ``block`` is the layer's block as :meth:`Backbone.select_layers` names it and ``depth``
    its index inside the block (a UNet block may hold several transformer layers). ``options`` is the
    call's ``transformer_options`` (``cond_or_uncond``, ``sigmas``, the method's own keys)."""

    block: tuple[str, int]
    depth: int
    grid: tuple[int, int]
    match: torch.Tensor
    values: torch.Tensor
    options: dict


TokenHook = Callable[[ImageTokens], Optional[torch.Tensor]]
AttentionCapture = Callable[[torch.Tensor, tuple[int, int]], None]
"""``capture(maps, grid)``: head-averaged attention ``[B, N, M]`` of the N image tokens of ``grid``
over M keys (the image tokens for ``self``, the text tokens for ``cross``)."""


@dataclass(frozen=True)
class CrossAttentionMaps:
    """An image-to-text attention in a guided forward: ``probs`` ``[B*heads, N, T]`` (explicit,
    differentiable softmax probabilities of the N image tokens over the T text tokens; the layer's
    output is computed from them), ``layer`` a hashable key of the layer, ``options`` the call's
    ``transformer_options``."""

    layer: tuple
    probs: torch.Tensor
    heads: int
    options: dict


@dataclass(frozen=True)
class TokenFeatures:
    """Image-token features of a layer for a contrastive loss: ``features`` ``[B, N, C]`` on ``grid``."""

    layer: tuple
    grid: tuple[int, int]
    features: torch.Tensor
    options: dict


class CrossAttentionProbe:
    """Base of a cross-attention probe: ``active(options)`` says whether this call needs explicit
    probabilities (otherwise the layer runs its usual fused attention); ``__call__(maps)`` sees them."""

    def active(self, options: dict) -> bool:
        return True

    def __call__(self, maps: CrossAttentionMaps) -> None:
        raise NotImplementedError


FeatureProbe = Callable[[TokenFeatures], None]


class Backbone:
    """The interface (see the module docstring); one subclass per backbone family."""

    kind = ""
    layer_choices: tuple[str, ...] = ()
    attention_levels: tuple[str, ...] = ()
    # whether its blocks add residuals in place (``x += ...``) onto tensors a LayerNorm saved for the
    # backward pass: then gradients need the LayerNorms to normalise a copy (host.differentiable_model)
    residuals_in_place = False

    def __init__(self, model):
        self.model = model

    def select_layers(self, choice: str, input_name: str = "layers") -> frozenset:
        raise NotImplementedError

    def add_token_hook(self, patched, hook: TokenHook, blocks: frozenset, matching: Optional[str] = None) -> None:
        """``matching``: which features a DiT matches (``FLUX_MATCHING``; None: its default). A UNet
        matches the features it replaces."""
        raise NotImplementedError

    def add_attention_capture(self, patched, block: tuple[str, int], kind: str, capture: AttentionCapture) -> None:
        raise NotImplementedError

    def segmentation_blocks(self, mode: str) -> tuple[tuple[str, int], tuple[str, int]]:
        """``(self_block, cross_block)``: where automatic masks read their self- and cross-attention."""
        raise NotImplementedError

    def add_cross_attention_probe(self, patched, probe: CrossAttentionProbe) -> None:
        """``probe`` at every image-to-text attention of the model (see :class:`CrossAttentionProbe`)."""
        raise NotImplementedError

    def add_feature_probe(self, patched, probe: FeatureProbe) -> None:
        """``probe`` on the image-token features of the later self-attention layers (UNet: the decoder's
        self-attention outputs; DiT: the single-stream blocks' attention outputs)."""
        raise NotImplementedError


# --- SD UNets ---------------------------------------------------------------------------------

UNET_LAYER_CHOICES: dict[str, Optional[int]] = {
    "two_highest_decoder_levels": 2,  # official: SD1.5 output blocks 6-11 (32^2 and 64^2 at 512 px)
    "highest_decoder_level": 1,
    "all_decoder_levels": None,
}


UNET_LAYER_CHOICES_NAMES = tuple(UNET_LAYER_CHOICES)


def unet_attn1_patch(hook: TokenHook, blocks: frozenset) -> Callable:
    """The ``attn1_patch`` a token hook is on a UNet: in the blocks of ``blocks`` it gets the ``norm1``
    features (matched and replaced alike) and its result feeds the self-attention's q, k and v."""

    def attn1_patch(n, context, value, extra_options):
        block = extra_options.get("block")
        if block is None or tuple(block) not in blocks:
            return n, context, value
        grid = tuple(int(s) for s in extra_options["activations_shape"][-2:])
        new = hook(ImageTokens(tuple(block), extra_options.get("block_index", 0), grid, n, n, extra_options))
        if new is None:
            return n, context, value
        return new, new, new

    return attn1_patch


class UNetBackbone(Backbone):
    """SD1.x / SD2.x / SDXL UNets: decoder self-attention layers by level."""

    kind = "unet"
    layer_choices = tuple(UNET_LAYER_CHOICES)

    def _levels(self) -> dict[int, int]:
        from .facts import decoder_attention_downscales

        return decoder_attention_downscales(self.model)

    def select_layers(self, choice: str, input_name: str = "layers") -> frozenset:
        if choice not in UNET_LAYER_CHOICES:
            raise InputError(f"{input_name}: {choice!r} is a choice for FLUX-class models; for this UNet model "
                             f"choose one of {list(UNET_LAYER_CHOICES)}")
        levels = self._levels()
        chosen = sorted(set(levels.values()))
        if UNET_LAYER_CHOICES[choice] is not None:
            chosen = chosen[: UNET_LAYER_CHOICES[choice]]
        return frozenset(("output", index) for index, downscale in levels.items() if downscale in chosen)

    def add_token_hook(self, patched, hook: TokenHook, blocks: frozenset, matching: Optional[str] = None) -> None:
        patched.set_model_attn1_patch(unet_attn1_patch(hook, blocks))

    def add_attention_capture(self, patched, block: tuple[str, int], kind: str, capture: AttentionCapture) -> None:
        from ...core import segmentation as seg
        from .sampling import attention

        def replace(q, k, v, extra_options):
            heads = extra_options["n_heads"]
            grid = tuple(int(d) for d in extra_options["activations_shape"][-2:])
            capture(seg.head_averaged_attention(q, k, heads), grid)  # k-means runs where the model runs
            return attention(q, k, v, heads)

        setter = patched.set_model_attn1_replace if kind == "self" else patched.set_model_attn2_replace
        setter(replace, block[0], block[1])

    def add_cross_attention_probe(self, patched, probe: CrossAttentionProbe) -> None:
        from ...core import translation as tr
        from .facts import attention_block_ids
        from .sampling import attention

        def replace(q, k, v, extra_options):
            heads = extra_options["n_heads"]
            if not probe.active(extra_options):
                return attention(q, k, v, heads)
            probs = tr.attention_probabilities(q, k, heads)
            probe(CrossAttentionMaps(_unet_layer(extra_options), probs, heads, extra_options))
            return tr.attend(probs, v, heads)

        for block_name, number in attention_block_ids(patched):
            patched.set_model_attn2_replace(_Shared(replace), block_name, number)

    def add_feature_probe(self, patched, probe: FeatureProbe) -> None:
        def output_patch(n, extra_options):
            block = extra_options.get("block")
            if block is not None and block[0] == "output":
                grid = tuple(int(s) for s in extra_options["activations_shape"][-2:])
                probe(TokenFeatures(_unet_layer(extra_options), grid, n, extra_options))
            return n

        patched.set_model_attn1_output_patch(_Shared(output_patch))

    def segmentation_blocks(self, mode: str) -> tuple[tuple[str, int], tuple[str, int]]:
        """The official levels at 512 px: self-segmentation clusters the last decoder self-attention
        at the highest attention level (64x64) and names clusters by the last cross-attention one level
        below (32x32); the threshold mask is the last cross-attention two levels below (16x16)."""
        levels = self._levels()
        downscales = sorted(set(levels.values()))
        cross_downscale = downscales[min(1 if mode == "self_segmentation" else 2, len(downscales) - 1)]
        last = lambda downscale: max(i for i, d in levels.items() if d == downscale)  # noqa: E731
        return ("output", last(downscales[0])), ("output", last(cross_downscale))


def _unet_layer(extra_options: dict) -> tuple:
    block = extra_options.get("block") or ("?", 0)
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))


class _Shared:
    """A patch function that ComfyUI's deep copy of ``model_options`` (0.3.75) shares instead of copying
    (it closes over per-node state)."""

    def __init__(self, function: Callable):
        self.function = function

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)


# --- FLUX-class DiTs --------------------------------------------------------------------------

FLUX_LAYER_CHOICES = ("dit_all_blocks", "dit_double_blocks", "dit_single_blocks", "dit_late_single_blocks")
"""Named layer sets of a FLUX-layout model (any depth): every block, the double-stream blocks, the
single-stream blocks, or the second half of the single-stream blocks."""

FLUX_MATCHING = ("key", "query", "value", "hidden")
FLUX_DEFAULT_MATCHING = "key"

_TOKENS_KEY = "exemplar_edit_dit_tokens"  # per call: text length and token grid (apply-model wrapper)
_BLOCK_KEY = "exemplar_edit_dit_block"  # per block: rotary angles and the block's input hidden state
_WRAPPER_KEY = "exemplar_edit_backbone"


@dataclass(frozen=True)
class _CallLayout:
    text_tokens: int
    grid: tuple[int, int]


@dataclass(frozen=True)
class _BlockState:
    block: tuple[str, int]
    freqs: Optional[torch.Tensor]  # [B|1, 1, L, d/2, 2, 2] rotary angles of the joint sequence
    hidden: torch.Tensor  # the block's input hidden state (double: image stream; single: joint sequence)
    image_first: bool  # 0.3.75's flipped_img_txt double blocks put the image tokens first


class _BlockWrapper:
    """``patches_replace["dit"]`` entry: runs the block (or the replace another pack put there) with a
    copy of ``transformer_options`` that tells the attention override which block it is in."""

    def __init__(self, block: tuple[str, int], image_first: bool, previous: Optional[Callable]):
        self.block, self.image_first, self.previous = block, image_first, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = dict(args.get("transformer_options") or {})
        options[_BLOCK_KEY] = _BlockState(self.block, args.get("pe"), args["img"], self.image_first)
        args = dict(args, transformer_options=options)
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class _AttentionOverride:
    """``optimized_attention_override``: inside the wrapped blocks, hands the image tokens to the
    pack's hooks and captures, then calls the attention (or the override that was there before)."""

    def __init__(self, previous: Optional[Callable]):
        self.previous = previous
        self.token_hooks: list[tuple[frozenset, TokenHook, str]] = []
        self.captures: list[tuple[tuple[str, int], str, AttentionCapture]] = []
        self.cross_probes: list[CrossAttentionProbe] = []
        self.feature_probes: list[tuple[frozenset, FeatureProbe]] = []

    def copy(self) -> "_AttentionOverride":
        fresh = _AttentionOverride(self.previous)
        fresh.token_hooks, fresh.captures = list(self.token_hooks), list(self.captures)
        fresh.cross_probes, fresh.feature_probes = list(self.cross_probes), list(self.feature_probes)
        return fresh

    def __deepcopy__(self, memo):
        return self

    def _attend(self, func, q, k, v, heads, kwargs):
        if self.previous is not None:
            return self.previous(func, q, k, v, heads, **kwargs)
        return func(q, k, v, heads, **kwargs)

    def __call__(self, func, q, k, v, heads, **kwargs):
        options = kwargs.get("transformer_options") or {}
        state, layout = options.get(_BLOCK_KEY), options.get(_TOKENS_KEY)
        if state is None or layout is None or not kwargs.get("skip_reshape", False) or q.ndim != 4:
            return self._attend(func, q, k, v, heads, kwargs)
        text, (h, w) = layout.text_tokens, layout.grid
        start = 0 if state.image_first else text
        image = slice(start, start + h * w)
        for block, kind, capture in self.captures:
            if block == state.block:
                capture(_image_attention(q, k, image, text, state.image_first, kind), (h, w))
        hooks = [(hook, matching) for blocks, hook, matching in self.token_hooks if state.block in blocks]
        for hook, matching in hooks:
            q, k, v = self._run_hook(hook, matching, q, k, v, image, state, options, (h, w))
        probes = [probe for probe in self.cross_probes if probe.active(options)]
        if probes:
            out = self._explicit_attention(probes, q, k, v, image, text, state, options, kwargs.get("mask"))
        else:
            out = self._attend(func, q, k, v, heads, kwargs)
        features = [probe for blocks, probe in self.feature_probes if state.block in blocks]
        for probe in features:
            probe(TokenFeatures((*state.block, 0), (h, w), out[:, image], options))
        return out

    @staticmethod
    def _explicit_attention(probes, q, k, v, image: slice, text: int, state: _BlockState, options, mask=None):
        """The joint attention with explicit probabilities (float32 softmax, as
        ``core.translation.attention_probabilities``), handing the probes the image queries' share of
        each text key: the raw joint-softmax mass, so a guidance loss also sees how much an image
        token attends to text at all. Output ``[B, L, heads*d]`` as ComfyUI's attention returns it."""
        batch, heads, length, dim = q.shape
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (dim ** -0.5)
        if mask is not None:  # ComfyUI's attention masks: boolean (keep) or additive
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(dim=-1).to(q.dtype)
        text_keys = slice(image.stop, image.stop + text) if state.image_first else slice(0, text)
        maps = probs[:, :, image, text_keys].reshape(batch * heads, image.stop - image.start, text)
        layer = (*state.block, 0)
        for probe in probes:
            probe(CrossAttentionMaps(layer, maps, heads, options))
        out = torch.matmul(probs, v.to(probs.dtype))
        return out.transpose(1, 2).reshape(batch, length, heads * dim)

    @staticmethod
    def _run_hook(hook, matching, q, k, v, image, state: _BlockState, options, grid):
        batch, heads, _, dim = q.shape
        freqs = None if state.freqs is None else state.freqs[..., image, :, :, :]
        q_img, k_img, v_img = q[:, :, image], k[:, :, image], v[:, :, image]
        if freqs is not None:
            q_pre, k_pre = rope.undo_rotary(q_img, freqs), rope.undo_rotary(k_img, freqs)
        else:
            q_pre, k_pre = q_img, k_img
        flat = lambda t: t.transpose(1, 2).reshape(batch, t.shape[2], heads * dim)  # noqa: E731
        values = torch.cat([flat(q_pre), flat(k_pre), flat(v_img)], dim=-1)
        if matching == "hidden":
            hidden = state.hidden
            offset = 0 if state.block[0] == "double" else image.start
            match = hidden[:, offset:offset + values.shape[1]]
        else:
            match = {"query": flat(q_pre), "key": flat(k_pre), "value": flat(v_img)}[matching]
        new = hook(ImageTokens(state.block, 0, grid, match, values, options))
        if new is None:
            return q, k, v
        unflat = lambda t: t.reshape(batch, t.shape[1], heads, dim).transpose(1, 2)  # noqa: E731
        new_q, new_k, new_v = (unflat(t) for t in new.split(heads * dim, dim=-1))
        if freqs is not None:
            new_q, new_k = rope.apply_rotary(new_q, freqs), rope.apply_rotary(new_k, freqs)
        changed = (new != values)
        changed_q, changed_k, changed_v = (unflat(t) for t in changed.split(heads * dim, dim=-1))

        def put(full, part, new_part, where):
            out = full.clone()
            out[:, :, image] = torch.where(where, new_part.to(part.dtype), part)
            return out

        return put(q, q_img, new_q, changed_q), put(k, k_img, new_k, changed_k), put(v, v_img, new_v, changed_v)


def _image_attention(q, k, image: slice, text: int, image_first: bool, kind: str) -> torch.Tensor:
    """Head-averaged attention of the image queries, renormalised over the image keys (``self``) or the
    text keys (``cross``): ``[B, N, M]``, one head at a time, in float32."""
    if image_first:
        keys = image if kind == "self" else slice(image.stop, image.stop + text)
    else:
        keys = image if kind == "self" else slice(0, text)
    q_img, k_sel = q[:, :, image].float(), k[:, :, keys].float()
    scale = q.shape[-1] ** -0.5
    total = torch.zeros(q.shape[0], q_img.shape[2], k_sel.shape[2], device=q.device)
    for head in range(q.shape[1]):
        total += (torch.bmm(q_img[:, head], k_sel[:, head].transpose(1, 2)) * scale).softmax(dim=-1)
    return total / q.shape[1]


class FluxBackbone(Backbone):
    """FLUX.1-layout DiTs (double- and single-stream blocks, joint text+image attention, 2x2 patches)."""

    kind = "flux"
    layer_choices = FLUX_LAYER_CHOICES
    residuals_in_place = True  # comfy/ldm/flux/layers.py: ``img += ...``, ``x += ...`` after the norms

    @property
    def _diffusion_model(self):
        return self.model.model.diffusion_model

    @property
    def depths(self) -> tuple[int, int]:
        dm = self._diffusion_model
        return len(dm.double_blocks), len(dm.single_blocks)

    def select_layers(self, choice: str, input_name: str = "layers") -> frozenset:
        double, single = self.depths
        doubles = [("double", i) for i in range(double)]
        singles = [("single", i) for i in range(single)]
        chosen = {
            "dit_all_blocks": doubles + singles,
            "dit_double_blocks": doubles,
            "dit_single_blocks": singles,
            "dit_late_single_blocks": singles[single // 2:],
        }.get(choice)
        if chosen is None:
            raise InputError(f"{input_name}: {choice!r} is a choice for UNet models; for this FLUX-class model "
                             f"choose one of {list(FLUX_LAYER_CHOICES)}")
        if not chosen:
            raise InputError(f"{input_name}: {choice!r} selects no block of this model ({double} double and "
                             f"{single} single blocks); choose another")
        return frozenset(chosen)

    def _override(self, patched) -> _AttentionOverride:
        options = patched.model_options.setdefault("transformer_options", {})
        current = options.get("optimized_attention_override")
        # a clone shares the object with its source: copy it before adding hooks
        fresh = current.copy() if isinstance(current, _AttentionOverride) else _AttentionOverride(current)
        options["optimized_attention_override"] = fresh
        if _WRAPPER_KEY not in _apply_model_wrapper_keys(patched):
            add_apply_model_wrapper(patched, _WRAPPER_KEY, _record_layout)
        return fresh

    def _wrap_blocks(self, patched, blocks) -> None:
        dm = self._diffusion_model
        replaces = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for kind, index in sorted(blocks):
            key = (f"{kind}_block", index)
            previous = replaces.get(key)
            if isinstance(previous, _BlockWrapper):
                continue
            module = dm.double_blocks[index] if kind == "double" else dm.single_blocks[index]
            image_first = bool(getattr(module, "flipped_img_txt", False)) and kind == "double"
            patched.set_model_patch_replace(_BlockWrapper((kind, index), image_first, previous), "dit", key[0], index)

    def add_token_hook(self, patched, hook: TokenHook, blocks: frozenset, matching: Optional[str] = None) -> None:
        matching = matching or FLUX_DEFAULT_MATCHING
        if matching not in FLUX_MATCHING:
            raise InputError(f"matching: {matching!r} is not one of {list(FLUX_MATCHING)}")
        self._wrap_blocks(patched, blocks)
        self._override(patched).token_hooks.append((frozenset(blocks), hook, matching))

    def add_attention_capture(self, patched, block: tuple[str, int], kind: str, capture: AttentionCapture) -> None:
        self._wrap_blocks(patched, [block])
        self._override(patched).captures.append((tuple(block), kind, capture))

    def _all_blocks(self) -> list[tuple[str, int]]:
        double, single = self.depths
        return [("double", i) for i in range(double)] + [("single", i) for i in range(single)]

    def add_cross_attention_probe(self, patched, probe: CrossAttentionProbe) -> None:
        blocks = self._all_blocks()
        self._wrap_blocks(patched, blocks)
        self._override(patched).cross_probes.append(probe)

    def add_feature_probe(self, patched, probe: FeatureProbe) -> None:
        double, single = self.depths
        blocks = [("single", i) for i in range(single)] or [("double", i) for i in range(double)]
        self._wrap_blocks(patched, blocks)
        self._override(patched).feature_probes.append((frozenset(blocks), probe))

    def segmentation_blocks(self, mode: str) -> tuple[tuple[str, int], tuple[str, int]]:
        """Self- and cross-attention from the first single-stream block, where the two streams have just
        been joined: of the toy world's five blocks the one whose masks agree best with the drawn objects
        (README, "Appearance transfer on FLUX-class models"); the last double block without single blocks."""
        double, single = self.depths
        block = ("single", 0) if single else ("double", double - 1)
        return block, block


def _apply_model_wrapper_keys(patched) -> set:
    import comfy.patcher_extension

    return set(patched.wrappers.get(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {}))


def _record_layout(executor, x, sigma, c_concat, c_crossattn, control, transformer_options, **extra_conds):
    """APPLY_MODEL wrapper: the call's text length and image token grid, for the attention override.
    FLUX patchifies 2x2 (padding odd sizes), so the grid is ceil(H/2) x ceil(W/2); the main image's
    tokens follow the text tokens (Kontext reference tokens, if any, come after them)."""
    options = dict(transformer_options)
    text = int(c_crossattn.shape[1]) if torch.is_tensor(c_crossattn) else 0
    options[_TOKENS_KEY] = _CallLayout(text, (math.ceil(x.shape[-2] / 2), math.ceil(x.shape[-1] / 2)))
    return executor(x, sigma, c_concat, c_crossattn, control, options, **extra_conds)


def backbone(model) -> Backbone:
    """The adapter for ``model``'s denoiser, by what it is (feature detection)."""
    dm = model.model.diffusion_model
    if hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks") and hasattr(dm, "pe_embedder"):
        return FluxBackbone(model)
    if hasattr(dm, "output_blocks") and hasattr(dm, "input_blocks"):
        return UNetBackbone(model)
    raise InputError(f"model: its denoiser ({type(dm).__name__}) is neither an SD UNet (SD1.x, SD2.x, SDXL) nor a "
                     "FLUX-class DiT; this node supports those")
