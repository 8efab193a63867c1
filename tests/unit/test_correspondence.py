"""core.correspondence without ComfyUI: the vectorised matcher against a per-pixel loop that
mirrors the official Eye-for-an-eye ``matching_feature`` step by step, rearrangement
properties, AdaIN / masked AdaIN against the formulas of utils/adain.py, multi-object pairs,
and the chunked memory bound."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from exemplar_edit.core import correspondence as corr


def official_loop(
    out_feat: torch.Tensor,
    ref_feat: torch.Tensor,
    out_mask: torch.Tensor | None,
    ref_mask: torch.Tensor | None,
    h: int,
    w: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel matching written the way the official loop runs: features to [C, h, w], multiply
    by the masks, skip all-zero vectors, normalise the single output vector and the whole
    reference map, matmul, numpy argmax and unravel to (y, x)."""
    channels = out_feat.shape[1]
    out_x = out_feat.t().reshape(channels, h, w)
    style_x = ref_feat.t().reshape(channels, h, w)
    if out_mask is not None:
        out_x = out_x * out_mask.reshape(h, w)
    if ref_mask is not None:
        style_x = style_x * ref_mask.reshape(h, w)
    indices = torch.full((h * w,), -1, dtype=torch.long)
    valid = torch.zeros(h * w, dtype=torch.bool)
    for x_coor, y_coor in itertools.product(range(w), range(h)):  # official order: x outer
        out_vec = out_x[:, y_coor, x_coor].view(1, -1)
        if torch.all(out_vec == 0):
            continue
        style_vec = style_x.reshape(channels, h * w).unsqueeze(0)
        out_vec = F.normalize(out_vec)
        style_vec = F.normalize(style_vec)
        cos_map = torch.matmul(out_vec, style_vec).view(1, h, w).numpy()
        max_yx = np.unravel_index(cos_map[0].argmax(), cos_map[0].shape)
        indices[y_coor * w + x_coor] = int(max_yx[0]) * w + int(max_yx[1])
        valid[y_coor * w + x_coor] = True
    return indices, valid


H, W, C = 12, 10, 24


def _features(seed: int, hw: int = H * W, channels: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hw, channels, generator=g), torch.randn(hw, channels, generator=g)


def _image_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Binary image-space masks (like SAM output) resized bilinearly to the token grid: soft edges."""
    big_out = torch.zeros(4 * H, 4 * W)
    big_out[5:37, 3:30] = 1
    big_ref = torch.zeros(4 * H, 4 * W)
    big_ref[10:48, 12:40] = 1
    big_ref[0:6, 0:6] = 1
    return corr.resize_mask(big_out, (H, W)), corr.resize_mask(big_ref[None], (H, W))


def _soft_masks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out_mask = torch.rand(H * W, generator=g)
    ref_mask = torch.rand(H * W, generator=g)
    out_mask[out_mask < 0.4] = 0
    ref_mask[ref_mask < 0.5] = 0
    return out_mask, ref_mask


MASK_KINDS = ["none", "image", "soft"]


def _case(seed: int, kind: str):
    out_feat, ref_feat = _features(seed)
    out_feat[3] = 0  # an all-zero output feature is never matched, even unmasked
    if kind == "none":
        masks = (None, None)
    elif kind == "image":
        masks = _image_masks()
    else:
        masks = _soft_masks(seed)
    return out_feat, ref_feat, masks


_REFERENCE_CACHE: dict = {}


def _reference(seed: int, kind: str):
    if (seed, kind) not in _REFERENCE_CACHE:
        out_feat, ref_feat, (out_mask, ref_mask) = _case(seed, kind)
        _REFERENCE_CACHE[(seed, kind)] = official_loop(out_feat, ref_feat, out_mask, ref_mask, H, W)
    return _REFERENCE_CACHE[(seed, kind)]


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, H * W, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_matcher_equals_official_loop(seed: int, kind: str, chunk_size: int):
    out_feat, ref_feat, (out_mask, ref_mask) = _case(seed, kind)
    ref_idx, ref_valid = _reference(seed, kind)
    indices, valid = corr.semantic_nearest_neighbours(out_feat, ref_feat, out_mask, ref_mask, chunk_size=chunk_size)
    assert indices.dtype == torch.long and valid.dtype == torch.bool
    assert indices.shape == valid.shape == (H * W,)
    assert torch.equal(valid, ref_valid)
    assert torch.equal(indices[valid], ref_idx[ref_valid])
    assert not valid[3]
    if kind != "none":
        assert torch.equal(valid, (out_mask > 0) & (out_feat != 0).any(-1))

    rearranged = corr.rearrange_features(out_feat, ref_feat, indices, valid)
    expected = out_feat.clone()
    for p in range(H * W):  # the official in-place write, one pixel at a time
        if ref_valid[p]:
            expected[p] = ref_feat[ref_idx[p]]
    assert torch.equal(rearranged, expected)


def test_ties_go_to_first_index_and_negative_cosines_pick_first_zero_reference():
    ref = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    out = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])
    indices, valid = corr.semantic_nearest_neighbours(out, ref, chunk_size=1)
    assert indices.tolist() == [1, 4] and valid.tolist() == [True, True]

    # Masked: reference 0 is outside its mask (a zero vector, cosine 0). An output whose in-mask
    # cosines are all negative lands on it, as in the official code.
    ref_mask = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    out2 = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    indices, valid = corr.semantic_nearest_neighbours(out2, ref, None, ref_mask)
    assert indices.tolist() == [0, 1]
    indices_r, valid_r = corr.semantic_nearest_neighbours(out2, ref, None, ref_mask, restrict_to_ref_mask=True)
    assert indices_r.tolist() == [1, 1] and valid_r.tolist() == [True, True]
    # nothing left to match against: no match
    _, valid_none = corr.semantic_nearest_neighbours(out2, ref, None, torch.zeros(5), restrict_to_ref_mask=True)
    assert valid_none.tolist() == [False, False]


def test_tiny_soft_mask_values_still_match():
    out_feat, ref_feat = _features(5)
    out_mask = torch.zeros(H * W)
    out_mask[:10] = 1e-6
    indices, valid = corr.semantic_nearest_neighbours(out_feat, ref_feat, out_mask)
    full, _ = corr.semantic_nearest_neighbours(out_feat, ref_feat)
    assert valid.sum() == 10 and torch.equal(indices[:10], full[:10])


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_permutation_is_recovered_exactly(scale: float):
    g = torch.Generator().manual_seed(7)
    hw, channels = 256, 32
    ref_feat = torch.randn(hw, channels, generator=g)
    perm = torch.randperm(hw, generator=g)
    out_feat = scale * ref_feat[perm]  # out[p] is ref[perm[p]] (rescaled: cosine ignores it)
    indices, valid = corr.semantic_nearest_neighbours(out_feat, ref_feat, chunk_size=100)
    assert valid.all()
    assert torch.equal(indices, perm)
    rearranged = corr.rearrange_features(out_feat, ref_feat, indices, valid)
    assert torch.equal(rearranged, ref_feat[perm])  # raw reference features, not the rescaled ones
    assert torch.equal(rearranged[torch.argsort(perm)], ref_feat)


def test_rearrange_strength_and_validity():
    out_feat, ref_feat = _features(3)
    indices = torch.randint(0, H * W, (H * W,), generator=torch.Generator().manual_seed(0))
    valid = torch.rand(H * W, generator=torch.Generator().manual_seed(1)) > 0.5
    out_before = out_feat.clone()
    half = corr.rearrange_features(out_feat, ref_feat, indices, valid, strength=0.25)
    expected = torch.where(valid[:, None], 0.75 * out_feat + 0.25 * ref_feat[indices], out_feat)
    torch.testing.assert_close(half, expected, rtol=0, atol=1e-6)
    none = corr.rearrange_features(out_feat, ref_feat, indices, valid, strength=0.0)
    torch.testing.assert_close(none, out_feat, rtol=0, atol=0)
    assert torch.equal(out_feat, out_before)  # inputs untouched


def test_reduced_precision_similarity_mostly_agrees():
    out_feat, ref_feat = _features(11)
    full, _ = corr.semantic_nearest_neighbours(out_feat, ref_feat)
    low, _ = corr.semantic_nearest_neighbours(out_feat, ref_feat, dtype=torch.bfloat16)
    assert (low == full).float().mean() > 0.9


# --- masks on the token grid -----------------------------------------------------------------


def test_resize_mask_is_official_bilinear():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(512, 512, generator=g) > 0.5).float()
    for hw in [(64, 64), (32, 32), (24, 40)]:
        expected = F.interpolate(mask.view(1, 1, 512, 512), size=hw, mode="bilinear").view(-1)
        assert torch.equal(corr.resize_mask(mask, hw), expected)
        assert torch.equal(corr.resize_mask(mask[None].bool(), hw), expected)
    with pytest.raises(ValueError):
        corr.resize_mask(torch.zeros(2, 8, 8), (4, 4))


def test_token_grid_shape():
    assert corr.token_grid_shape(64 * 64, (64, 64)) == (64, 64)
    assert corr.token_grid_shape(32 * 32, (64, 64)) == (32, 32)
    assert corr.token_grid_shape(16 * 16, (64, 64)) == (16, 16)
    assert corr.token_grid_shape(48 * 64, (96, 128)) == (48, 64)
    assert corr.token_grid_shape(38 * 50, (75, 100)) == (38, 50)  # odd sides round up
    assert corr.token_grid_shape(19 * 25, (75, 100)) == (19, 25)
    with pytest.raises(ValueError):
        corr.token_grid_shape(1000, (64, 64))


# --- AdaIN ---------------------------------------------------------------------------------


def _stats(values: torch.Tensor, eps: float) -> tuple[float, float]:
    """Mean and sqrt(unbiased variance + eps) of a 1-D tensor, summed by hand in float64."""
    v = values.double().tolist()
    n = len(v)
    mean = sum(v) / n
    var = sum((x - mean) ** 2 for x in v) / (n - 1)
    return mean, (var + eps) ** 0.5


def _formula_masked_adain(content, style, content_mask, style_mask, eps=1e-5):
    """utils/adain.py restated per channel: statistics over mask == 1, blend with the soft mask."""
    out = torch.empty_like(content, dtype=torch.float64)
    cm = content_mask.reshape(-1).double()
    for c in range(content.shape[0]):
        c_mean, c_std = _stats(content[c].reshape(-1)[content_mask.reshape(-1) == 1], eps)
        s_mean, s_std = _stats(style[c].reshape(-1)[style_mask.reshape(-1) == 1], eps)
        x = content[c].reshape(-1).double()
        y = (x - c_mean) / c_std * s_std + s_mean
        out[c] = (x * (1 - cm) + y * cm).reshape(content.shape[1:])
    return out


def _latents(seed: int):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(4, 16, 16, generator=g) * 1.3 + 0.2
    style = torch.randn(4, 16, 16, generator=g) * 0.6 - 0.5
    big = torch.zeros(128, 128)
    big[20:100, 30:90] = 1
    big_s = torch.zeros(128, 128)
    big_s[0:64, 10:128] = 1
    return content, style, corr.resize_mask(big, (16, 16)).view(16, 16), corr.resize_mask(big_s, (16, 16)).view(16, 16)


def test_adain_matches_formula():
    content, style, _, _ = _latents(0)
    result = corr.adain(content, style)
    ones = torch.ones(16, 16)
    torch.testing.assert_close(result.double(), _formula_masked_adain(content, style, ones, ones), rtol=1e-5, atol=1e-5)


def test_masked_adain_matches_formula():
    content, style, content_mask, style_mask = _latents(1)
    assert ((content_mask > 0) & (content_mask < 1)).any()  # soft edges exercise the blend
    result = corr.masked_adain(content, style, content_mask, style_mask)
    expected = _formula_masked_adain(content, style, content_mask, style_mask)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
    outside = content_mask == 0
    assert torch.equal(result[:, outside], content[:, outside])


def test_masked_adain_with_full_mask_is_adain():
    content, style, _, _ = _latents(2)
    ones = torch.ones(16, 16)
    assert torch.equal(corr.masked_adain(content, style, ones, ones), corr.adain(content, style))


def test_masked_adain_transfers_region_statistics():
    content, style, content_mask, style_mask = _latents(3)
    result = corr.masked_adain(content, style, content_mask, style_mask)
    inside_c = content_mask.reshape(-1) == 1
    inside_s = style_mask.reshape(-1) == 1
    r = result.reshape(4, -1)[:, inside_c]
    s = style.reshape(4, -1)[:, inside_s]
    torch.testing.assert_close(r.mean(1), s.mean(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(r.std(1), s.std(1), rtol=1e-4, atol=1e-4)


def test_masked_adain_refuses_empty_selection():
    content, style, content_mask, style_mask = _latents(4)
    with pytest.raises(ValueError):
        corr.masked_adain(content, style, content_mask * 0.9, style_mask)
    # a lower threshold accepts soft masks that never reach 1
    corr.masked_adain(content, style, content_mask * 0.9, style_mask, stats_threshold=0.5)


def _gathered_masked_adain(content, style, content_mask, style_mask, eps=1e-5, threshold=1.0):
    """The former boolean-gather form: statistics of ``flat[:, mask >= threshold]`` with
    ``Tensor.mean`` / ``Tensor.var``, then the soft-mask blend."""
    def stats(feat, mask):
        flat = feat.reshape(feat.shape[0], -1)[:, mask.reshape(-1) >= threshold]
        return flat.mean(dim=1).view(-1, 1, 1), (flat.var(dim=1) + eps).sqrt().view(-1, 1, 1)

    s_mean, s_std = stats(style, style_mask)
    c_mean, c_std = stats(content, content_mask)
    stylized = (content - c_mean) / c_std * s_std + s_mean
    return content * (1 - content_mask) + stylized * content_mask


@pytest.mark.parametrize("seed", range(5))
def test_weighted_statistics_match_the_boolean_gather(seed):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(4, 24, 20, generator=g) * 1.7 + 0.3
    style = torch.randn(4, 24, 20, generator=g) * 0.5 - 0.8
    masks = []
    for keep in (0.3, 0.6):  # random fully selected pixels among random soft values
        mask = torch.rand(24, 20, generator=g)
        mask[torch.rand(24, 20, generator=g) < keep] = 1.0
        masks.append(mask)
    content_mask, style_mask = masks
    old = _gathered_masked_adain(content, style, content_mask, style_mask)
    selections = {"content_selection": corr.pixel_selection(content_mask),
                  "style_selection": corr.pixel_selection(style_mask)}
    torch.testing.assert_close(corr.masked_adain(content, style, content_mask, style_mask, **selections), old,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(corr.masked_adain(content, style, content_mask, style_mask), old, rtol=1e-5, atol=1e-5)
    flat = content.reshape(4, -1)[:, content_mask.reshape(-1) >= 1]
    mean, std = corr.channel_mean_std(content, selection=selections["content_selection"])
    torch.testing.assert_close(mean.view(-1), flat.mean(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.view(-1), (flat.var(dim=1) + 1e-5).sqrt(), rtol=1e-5, atol=1e-5)


class _HostReads(TorchFunctionMode):
    """Records the calls that copy a tensor value back to the host (or gather by a boolean mask,
    whose output size needs one)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
             torch.Tensor.masked_select, torch.masked_select}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.Tensor.__getitem__ and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))
        if func in self.READS or boolean_index:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_masked_adain_with_selections_reads_nothing_back():
    content, style, content_mask, style_mask = _latents(5)
    with _HostReads() as probe:
        corr.masked_adain(content, style, content_mask, style_mask)
    assert probe.reads  # the probe sees the reads of selecting from the masks
    selections = {"content_selection": corr.pixel_selection(content_mask),
                  "style_selection": corr.pixel_selection(style_mask)}
    with _HostReads() as probe:
        corr.masked_adain(content, style, content_mask, style_mask, **selections)
    assert probe.reads == []


def test_pixel_selection_needs_two_pixels():
    mask = torch.zeros(8, 8)
    mask[2, 3] = 1.0
    with pytest.raises(ValueError, match="selects 1 pixel"):
        corr.pixel_selection(mask)
    mask[5, 5] = 1.0
    assert corr.pixel_selection(mask).count == 2
    assert corr.pixel_selection(mask * 0.6, stats_threshold=0.5).count == 2


# --- multi-object ----------------------------------------------------------------------------


def test_pairs_stay_inside_their_reference_region():
    hw = H * W
    out_feat, ref_feat = _features(9)
    regions_out = [torch.zeros(hw), torch.zeros(hw)]
    regions_ref = [torch.zeros(hw), torch.zeros(hw)]
    regions_out[0][:50], regions_out[1][50:90] = 1.0, 0.7  # soft values count as inside
    regions_ref[0][60:120], regions_ref[1][:30] = 1.0, 0.5
    # Make output region 0 anti-aligned with reference region 0: every in-region cosine is
    # negative. The single-object (official) semantics then escape to a zero vector.
    ref_feat[60:120] = -out_feat[:50].mean(0) + 0.01 * ref_feat[60:120]
    pairs = list(zip(regions_out, regions_ref))
    indices, valid = corr.semantic_nearest_neighbours_pairs(out_feat, ref_feat, pairs, chunk_size=16)
    assert torch.equal(valid, (regions_out[0] > 0) | (regions_out[1] > 0))
    for region_out, region_ref in pairs:
        inside = region_out > 0
        assert (region_ref[indices[inside]] > 0).all()
    # for contrast, unrestricted official matching leaves region 0 of the reference
    single_idx, _ = corr.semantic_nearest_neighbours(out_feat, ref_feat, regions_out[0], regions_ref[0])
    assert not (regions_ref[0][single_idx[:50]] > 0).all()
    # overlapping target regions: the earlier pair wins
    overlap = [(torch.ones(hw), regions_ref[1]), (torch.ones(hw), regions_ref[0])]
    idx_overlap, valid_overlap = corr.semantic_nearest_neighbours_pairs(out_feat, ref_feat, overlap)
    assert valid_overlap.all() and (regions_ref[1][idx_overlap] > 0).all()


# --- memory bound ----------------------------------------------------------------------------


class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for item in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return result


def test_chunked_matching_never_builds_the_full_matrix():
    hw, channels, chunk = 128 * 128, 8, 512
    g = torch.Generator().manual_seed(0)
    out_feat, ref_feat = torch.randn(hw, channels, generator=g), torch.randn(hw, channels, generator=g)
    start = time.perf_counter()
    with _LargestTensor() as recorder:
        indices, valid = corr.semantic_nearest_neighbours(out_feat, ref_feat, chunk_size=chunk)
    elapsed = time.perf_counter() - start
    assert recorder.largest == chunk * hw  # one similarity block, never hw * hw
    assert valid.all() and indices.min() >= 0 and indices.max() < hw
    assert elapsed < 30.0
    # spot-check a few rows against a direct computation
    rows = torch.tensor([0, 511, 512, 9000, hw - 1])
    direct = (F.normalize(out_feat[rows], dim=-1) @ F.normalize(ref_feat, dim=-1).t()).argmax(-1)
    assert torch.equal(indices[rows], direct)


def test_official_schedule_at_68_steps():
    """config.py defaults over the official 68 denoising steps (100 steps, skip 32): injection from
    the UNet call whose counter is 10 (step 11), structure steps at counters 10, 15, ..., 35 and
    masked AdaIN after steps 49..67."""
    schedule = corr.TransferSchedule()
    steps = range(68)
    assert [k for k in steps if schedule.injects(k)] == list(range(11, 68))
    assert [k for k in steps if schedule.injects(k) and schedule.takes_structure(k)] == [11, 16, 21, 26, 31, 36]
    assert [k for k in steps if schedule.aligns_colour(k)] == list(range(49, 68))
    assert schedule.counter(0) == schedule.counter(1) == 0
    assert not corr.TransferSchedule(structure_interval=0).takes_structure(11)


def test_rearrange_pairs_with_one_reference_equals_the_pairs_matcher():
    out_feat, ref_feat = _features(11)
    g = torch.Generator().manual_seed(12)
    pairs = [((torch.rand(H * W, generator=g) > 0.5).float(), (torch.rand(H * W, generator=g) > 0.4).float())
             for _ in range(2)]
    indices, valid = corr.semantic_nearest_neighbours_pairs(out_feat, ref_feat, pairs)
    expected = corr.rearrange_features(out_feat, ref_feat, indices, valid, 0.7)
    assert torch.equal(corr.rearrange_pairs(out_feat, [ref_feat, ref_feat], pairs, 0.7), expected)


def test_rearrange_pairs_takes_each_object_from_its_own_reference():
    out_feat, ref_a = _features(13)
    ref_b = _features(14)[1] + 100.0  # far from ref_a: any mix-up shows
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1
    left = left.reshape(-1)
    right = 1 - left
    whole = torch.ones(H * W)
    result = corr.rearrange_pairs(out_feat, [ref_a, ref_b], [(left, whole), (right, whole)])
    rows_a = set(map(tuple, ref_a.tolist()))
    rows_b = set(map(tuple, ref_b.tolist()))
    for token in range(H * W):
        row = tuple(result[token].tolist())
        assert row in (rows_a if left[token] else rows_b), token
