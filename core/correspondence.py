"""Semantic correspondence and feature rearrangement for Eye-for-an-eye, in plain PyTorch.

Eye-for-an-eye (Go et al., arXiv 2406.07008) transfers appearance by matching every feature of
the output (target) branch to its most similar reference feature, then *replacing* it with that
reference feature before the output's own self-attention. This runs in the decoder's
self-attention layers at the 32x32 and 64x64 token grids. AdaIN on the latent then aligns the
colour statistics of the masked regions.

Features here are those of one image at one layer, shaped ``[HW, C]`` (tokens x channels, the
``hidden_states`` layout of a ComfyUI / diffusers attention layer without the batch axis).
Masks over a layer's tokens are ``[HW]`` with soft values in [0, 1].

The official code is ``sooyeon-go/eye_for_an_eye`` @ 8e23f6b:
``appearance_transfer_model_final.py``, ``AttentionProcessor.matching_feature`` (L119-161), and
``utils/adain.py`` (taken from Cross-Image Attention, Alaluf et al., garibida/cross-image-attention).
The official matcher loops over pixels in Python. :func:`semantic_nearest_neighbours` computes
the same argmax for a whole block of rows at once.

References
- Go, Choi, Shin, Uh, "Eye-for-an-eye: Appearance Transfer with Semantic Correspondence in
  Diffusion Models", arXiv 2406.07008, 2024 (Sec. 3, "feature rearrangement").
- Tang et al., "Emergent Correspondence from Image Diffusion" (DIFT), NeurIPS 2023: cosine
  nearest neighbour on diffusion features.
- Huang, Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
  Normalization", ICCV 2017, Eq. 8 (AdaIN).
"""
from __future__ import annotations

from dataclasses import dataclass

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

MaskPair = tuple[torch.Tensor, torch.Tensor]
"""``(target_mask, reference_mask)`` of one object, each ``[HW]`` over the layer's tokens."""


# --- masks on a layer's token grid -----------------------------------------------------------


def resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an image-space mask to a layer's ``(h, w)`` token grid, flattened to ``[h*w]``
    in row-major order (the token order of ``hidden_states``).

    This is the official ``F.interpolate(mask.float().view(1, 1, H, W), size=(h, w),
    mode='bilinear')`` (``matching_feature`` L121-122, ``mask_down`` L57), with the default
    ``align_corners=False`` and no antialiasing. ``mask`` is ``[H, W]`` or ``[1, H, W]``. The
    result is float32.
    """
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise ValueError(f"resize_mask takes one mask, got a batch of {mask.shape[0]}")
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"resize_mask expects [H, W] or [1, H, W], got {tuple(mask.shape)}")
    resized = F.interpolate(mask.float()[None, None], size=tuple(hw), mode="bilinear")
    return resized.reshape(-1)


def token_grid_shape(num_tokens: int, latent_hw: tuple[int, int], max_levels: int = 8) -> tuple[int, int]:
    """The ``(h, w)`` token grid of a UNet layer with ``num_tokens`` tokens for a latent of size
    ``latent_hw``.

    Each UNet level halves the latent with a stride-2, padding-1 convolution, so level k has
    ``ceil(H / 2^k) x ceil(W / 2^k)`` tokens. The first level whose product equals ``num_tokens``
    is returned. The official code assumes square grids (``h = w = sqrt(HW)``), which this
    reproduces for square latents.
    """
    height, width = latent_hw
    for level in range(max_levels + 1):
        h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
        if h * w == num_tokens:
            return h, w
    raise ValueError(f"{num_tokens} tokens match no downsampling level of a {height}x{width} latent")


def _mask_tokens(mask: torch.Tensor, num_tokens: int, name: str) -> torch.Tensor:
    mask = mask.reshape(-1)
    if mask.numel() != num_tokens:
        raise ValueError(f"{name} has {mask.numel()} values for {num_tokens} tokens; resize it first")
    return mask


# --- nearest-neighbour matching --------------------------------------------------------------


def masked_features(feat: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``F ⊙ M``: every token's feature scaled by its mask value (official L136-138,
    ``out_x = out_x * struct_mask``; ``style_x = style_x * style_mask``).

    The mask is not cast, so the usual type promotion applies (fp16 features times an fp32 mask
    give fp32, as in the official code).
    """
    if mask is None:
        return feat
    return feat * _mask_tokens(mask, feat.shape[0], "mask").to(feat.device)[:, None]


def semantic_nearest_neighbours(
    out_feat: torch.Tensor,
    ref_feat: torch.Tensor,
    out_mask: Optional[torch.Tensor] = None,
    ref_mask: Optional[torch.Tensor] = None,
    chunk_size: int = 1024,
    dtype: Optional[torch.dtype] = None,
    restrict_to_ref_mask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output token p, q(p) = argmax_q cos(F_out[p] ⊙ M_out[p], F_ref[q] ⊙ M_ref[q])
    (Eye-for-an-eye Sec. 3; the official ``matching_feature`` L130-156, vectorised).

    Args:
        out_feat: ``[HW_out, C]`` features of the output (target) branch.
        ref_feat: ``[HW_ref, C]`` features of the reference (appearance) branch.
        out_mask, ref_mask: optional ``[HW]`` soft masks on the token grids (see
            :func:`resize_mask`).
        chunk_size: output rows per similarity block. Peak extra memory is
            ``chunk_size x HW_ref`` similarities, never ``HW_out x HW_ref``.
        dtype: optional dtype for the similarity matmul (e.g. fp16/bf16 on GPU). Reduced
            precision can flip near-ties and so change a few indices. ``None`` keeps the
            features' (promoted) dtype. Even in fp32, a blocked matmul rounds differently from
            the official one-row-at-a-time matmul, so a token whose two best cosines are within
            float rounding (~1e-7) can pick the other one (see core/CORRESPONDENCE_CHECK.md).
        restrict_to_ref_mask: not in the official code. If set, reference tokens whose masked
            feature is all zero are excluded from the argmax (similarity -inf), and an output
            token finds no match when no reference token is left. See the note below.

    Returns:
        ``(indices, valid)``: ``indices`` is a LongTensor ``[HW_out]`` of row-major reference
        token indices. ``valid`` is a BoolTensor ``[HW_out]`` marking the tokens to rearrange.
        Elsewhere the index is still the argmax, but it is not meant to be used.

    Semantics, exactly as the official code:

    * A token is matched iff its masked feature vector is not all zero
      (``if torch.all(out_vec == 0): pass``). With a soft mask, every token with M > 0
      qualifies.
    * Both sides are L2-normalised with ``F.normalize`` (``x / max(||x||, 1e-12)``), and the
      cosine is their dot product. Cosine is scale-invariant, so a soft mask value only
      matters through whether it is zero (and through the 1e-12 floor for vanishing products).
    * The argmax runs over **all** ``HW_ref`` positions, and ties go to the first index
      (numpy ``argmax`` in the official code, ``torch.argmax`` here). Reference tokens outside
      their mask are zero vectors with cosine 0. They therefore win only when every in-mask
      cosine is negative, and then the output token maps to the *first* out-of-mask reference
      token. ``restrict_to_ref_mask=True`` removes this quirk.

    The loop over chunks launches kernels only. Nothing inside it reads a value back to the
    host.
    """
    if out_feat.ndim != 2 or ref_feat.ndim != 2 or out_feat.shape[1] != ref_feat.shape[1]:
        raise ValueError(
            f"expected [HW_out, C] and [HW_ref, C], got {tuple(out_feat.shape)} and {tuple(ref_feat.shape)}"
        )
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    out_x = masked_features(out_feat, out_mask)
    ref_x = masked_features(ref_feat, ref_mask)
    valid = (out_x != 0).any(dim=-1)
    out_n = F.normalize(out_x, dim=-1)
    ref_n = F.normalize(ref_x, dim=-1)
    if dtype is not None:
        out_n, ref_n = out_n.to(dtype), ref_n.to(dtype)
    ref_n_t = ref_n.t()
    excluded = None
    if restrict_to_ref_mask:
        ref_valid = (ref_x != 0).any(dim=-1)
        excluded = ~ref_valid
        valid = valid & ref_valid.any()
    num_out = out_n.shape[0]
    indices = torch.empty(num_out, dtype=torch.long, device=out_feat.device)
    for start in range(0, num_out, chunk_size):
        similarity = out_n[start : start + chunk_size] @ ref_n_t  # [chunk, HW_ref] cosines
        if excluded is not None:
            similarity = similarity.masked_fill(excluded, float("-inf"))
        indices[start : start + chunk_size] = similarity.argmax(dim=-1)
    return indices, valid


def semantic_nearest_neighbours_pairs(
    out_feat: torch.Tensor,
    ref_feat: torch.Tensor,
    pairs: Sequence[MaskPair],
    chunk_size: int = 1024,
    dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-object matching (Eye-for-an-eye, multi-object extension): the tokens of target region k
    are matched only against the tokens of reference region k.

    ``pairs`` is ``[(out_mask_k, ref_mask_k), ...]`` of ``[HW]`` soft masks. Each pair runs
    :func:`semantic_nearest_neighbours` with ``restrict_to_ref_mask=True``, so a match never
    leaves the paired reference region, even when all its cosines are negative. The official
    release does not include this variant ("coming soon" in its README), so this restriction is
    our reading of the paper. Where target regions overlap, the earlier pair wins. A token in no
    target region, or whose paired reference region is empty, is not valid. The cost is
    ``len(pairs)`` single matchings.
    """
    num_out = out_feat.shape[0]
    indices = torch.zeros(num_out, dtype=torch.long, device=out_feat.device)
    valid = torch.zeros(num_out, dtype=torch.bool, device=out_feat.device)
    for out_mask, ref_mask in pairs:
        idx_k, valid_k = semantic_nearest_neighbours(
            out_feat, ref_feat, out_mask, ref_mask, chunk_size=chunk_size, dtype=dtype, restrict_to_ref_mask=True
        )
        take = valid_k & ~valid
        indices = torch.where(take, idx_k, indices)
        valid = valid | take
    return indices, valid


def rearrange_pairs(
    out_feat: torch.Tensor,
    ref_feats: Sequence[torch.Tensor],
    pairs: Sequence[MaskPair],
    strength: float = 1.0,
    chunk_size: int = 1024,
    dtype: Optional[torch.dtype] = None,
    out_values: Optional[torch.Tensor] = None,
    ref_values: Optional[Sequence[torch.Tensor]] = None,
) -> torch.Tensor:
    """Multi-object rearrangement with a reference per object: the tokens of target region k take
    the features of ``ref_feats[k]`` that match them best inside reference region k (the paper's
    multi-object figure: "each from a different reference image"; the official release has no
    multi-object code, so this is our reading, see :func:`semantic_nearest_neighbours_pairs`).

    Pair k runs :func:`semantic_nearest_neighbours` against ``ref_feats[k]`` with
    ``restrict_to_ref_mask=True`` and :func:`rearrange_features` on the tokens no earlier pair took
    (where target regions overlap, the earlier pair wins). With the same reference for every pair
    this is :func:`semantic_nearest_neighbours_pairs` followed by :func:`rearrange_features`.
    ``out_values`` / ``ref_values``: when the features that are replaced are not the ones matched
    (a DiT's q/k/v matched by its keys), the rearranged values; by default the features themselves.
    """
    if len(ref_feats) != len(pairs):
        raise ValueError(f"{len(ref_feats)} reference feature maps for {len(pairs)} mask pairs")
    result = out_feat if out_values is None else out_values
    ref_values = ref_feats if ref_values is None else ref_values
    taken = torch.zeros(out_feat.shape[0], dtype=torch.bool, device=out_feat.device)
    for ref_feat, ref_value, (out_mask, ref_mask) in zip(ref_feats, ref_values, pairs):
        indices, valid = semantic_nearest_neighbours(
            out_feat, ref_feat, out_mask, ref_mask, chunk_size=chunk_size, dtype=dtype, restrict_to_ref_mask=True
        )
        take = valid & ~taken
        result = rearrange_features(result, ref_value, indices, take, strength)
        taken = taken | take
    return result


def rearrange_features(
    out_feat: torch.Tensor,
    ref_feat: torch.Tensor,
    indices: torch.Tensor,
    valid: torch.Tensor,
    strength: float = 1.0,
) -> torch.Tensor:
    """F'_out[p] = (1 - s) F_out[p] + s F_ref[q(p)] where valid, else F_out[p] (Eye-for-an-eye
    Sec. 3, "rearranged reference features"; official L151-152 with s = 1).

    ``s = 1`` is the official hard replacement with the raw (unmasked) reference feature, and it
    copies ``F_ref`` bit for bit. Returns a new ``[HW_out, C]`` tensor and modifies neither input.
    """
    gathered = ref_feat.index_select(0, indices.to(ref_feat.device))
    if strength != 1.0:
        gathered = (1.0 - strength) * out_feat + strength * gathered
    return torch.where(valid.to(out_feat.device)[:, None], gathered.to(out_feat.dtype), out_feat)


# --- AdaIN on latents ------------------------------------------------------------------------


class PixelSelection(NamedTuple):
    """The pixels whose statistics masked AdaIN takes: the float weight ``w = 1[M >= threshold]``
    (``[HW]``) and their number ``n`` as a host int, so using a selection never reads the device."""

    weight: torch.Tensor
    count: int


def pixel_selection(mask: torch.Tensor, stats_threshold: float = 1.0) -> PixelSelection:
    """``w = 1[mask >= stats_threshold]`` and ``n = sum(w)`` for :func:`channel_mean_std`.

    Reading ``n`` back is one device-to-host copy, so make selections where the masks are prepared,
    not per step. Raises ValueError when fewer than two pixels are selected (the unbiased variance
    needs two; the official code would return NaN there).
    """
    selected = mask.reshape(-1) >= stats_threshold
    count = int(selected.sum())
    if count < 2:
        raise ValueError(f"AdaIN mask selects {count} pixel(s) at value >= {stats_threshold}; at least 2 are needed")
    return PixelSelection(selected.float(), count)


def channel_mean_std(
    feat: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    stats_threshold: float = 1.0,
    selection: Optional[PixelSelection] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``feat`` ``[C, ...]`` (``calc_mean_std`` of utils/adain.py), the
    mu and sigma of AdaIN (Huang & Belongie 2017, Eq. 8):

        mu = sum_i w_i x_i / n,    sigma = sqrt(sum_i w_i (x_i - mu)^2 / (n - 1) + eps),

    the unbiased variance (``Tensor.var``) over the pixels with ``w_i = 1``. Without a mask, over all
    pixels (``w = 1``, ``n = HW``). With a mask, over the pixels where ``mask >= stats_threshold``;
    the official code uses ``mask == 1``, which is the same for masks in [0, 1] and the default
    threshold. The weighted sums need no boolean gather and no host read; only making the selection
    from ``mask`` reads ``n`` (see :func:`pixel_selection`), so pass a precomputed ``selection``
    (then ``mask`` and ``stats_threshold`` are ignored) to stay sync-free. The results are shaped
    ``[C, 1, ...]`` to broadcast over ``feat``.

    Raises ValueError when the mask selects fewer than two pixels. The official code would
    return NaN there.
    """
    channels = feat.shape[0]
    flat = feat.reshape(channels, -1)
    if selection is None and mask is not None:
        selection = pixel_selection(_mask_tokens(mask, flat.shape[1], "AdaIN mask"), stats_threshold)
    if selection is None:
        weight, count = None, flat.shape[1]
    else:
        weight = _mask_tokens(selection.weight, flat.shape[1], "AdaIN selection").to(flat.device, flat.dtype)
        count = selection.count
    mean = (flat if weight is None else flat * weight).sum(dim=1, keepdim=True) / count
    squares = (flat - mean).square()
    if weight is not None:
        squares = squares * weight
    stat_shape = (channels,) + (1,) * (feat.ndim - 1)
    std = (squares.sum(dim=1) / (count - 1) + eps).sqrt().view(stat_shape)
    return mean.view(stat_shape), std


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN(x, y) = sigma(y) (x - mu(x)) / sigma(x) + mu(y) per channel (Huang & Belongie 2017,
    Eq. 8; ``adain`` of utils/adain.py) for ``[C, ...]`` tensors such as one latent ``[C, H, W]``.
    """
    if content.shape[0] != style.shape[0]:
        raise ValueError(f"channel mismatch: {content.shape[0]} vs {style.shape[0]}")
    style_mean, style_std = channel_mean_std(style, eps=eps)
    content_mean, content_std = channel_mean_std(content, eps=eps)
    normalized = (content - content_mean) / content_std
    return normalized * style_std + style_mean


def masked_adain(
    content: torch.Tensor,
    style: torch.Tensor,
    content_mask: torch.Tensor,
    style_mask: torch.Tensor,
    eps: float = 1e-5,
    stats_threshold: float = 1.0,
    *,
    content_selection: Optional[PixelSelection] = None,
    style_selection: Optional[PixelSelection] = None,
) -> torch.Tensor:
    """Masked AdaIN (``masked_adain`` of utils/adain.py; Eye-for-an-eye's colour alignment of
    z_out to z_ref, applied to the latent after each late step):

        y = AdaIN_{M_c, M_s}(x, z) = sigma_s (x - mu_c) / sigma_c + mu_s, with the content
        statistics over the content mask and the style statistics over the style mask,
        out = x (1 - M_c) + y M_c  (the soft content mask blends).

    ``content`` and ``style`` are ``[C, H, W]`` (any ``[C, ...]``). The masks have ``H*W``
    values each, e.g. ``[H, W]`` masks from :func:`resize_mask` reshaped to the latent grid.
    Statistics use the pixels with ``mask >= stats_threshold`` (the official ``== 1``), or the
    precomputed ``content_selection`` / ``style_selection`` of :func:`pixel_selection`, which keep
    this function free of host reads (per step, call it with selections made once).
    """
    if content.shape[0] != style.shape[0]:
        raise ValueError(f"channel mismatch: {content.shape[0]} vs {style.shape[0]}")
    style_mean, style_std = channel_mean_std(style, style_mask, eps, stats_threshold, style_selection)
    content_mean, content_std = channel_mean_std(content, content_mask, eps, stats_threshold, content_selection)
    normalized = (content - content_mean) / content_std
    stylized = normalized * style_std + style_mean
    blend = _mask_tokens(content_mask, content[0].numel(), "content mask").to(content.device)
    blend = blend.reshape(content.shape[1:])
    if blend.dtype == torch.bool:
        blend = blend.to(content.dtype)
    return content * (1 - blend) + stylized * blend


# --- schedule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferSchedule:
    """When each part of Eye-for-an-eye acts (official config.py defaults; appearance_transfer_model_final.py
    L203-205 for structure steps, get_adain_callback L61-85 for AdaIN).

    Steps count denoising steps from the start of editing (0-based). The official UNet call of step
    ``k`` sees the counter ``model.step = max(k - 1, 0)`` (its callback sets it after each step), and
    the injection window and structure steps are defined on that counter; AdaIN runs after step
    ``k`` for ``adain_start <= k < adain_end``.
    """

    injection_start: int = 10  # feat_range = Range(10, 70)
    injection_end: int = 70
    structure_interval: int = 5  # model.step % 5 == 0 and model.step < 40
    structure_end: int = 40
    adain_start: int = 49  # adain_range = (50, 100), applied after steps start - 1 ...
    adain_end: int = 101  # ... through adain_range.end + 1 = 101 (exclusive)

    @staticmethod
    def counter(step: int) -> int:
        """The official ``model.step`` seen by the UNet call of denoising step ``step``."""
        return max(step - 1, 0)

    def injects(self, step: int) -> bool:
        return self.injection_start <= self.counter(step) < self.injection_end

    def takes_structure(self, step: int) -> bool:
        c = self.counter(step)
        return self.structure_interval > 0 and c % self.structure_interval == 0 and c < self.structure_end

    def aligns_colour(self, finished_step: int) -> bool:
        return self.adain_start <= finished_step < self.adain_end
