"""core.segmentation without ComfyUI: k-means recovers known clusters, the self-segmentation finds a
planted object from synthetic self- and cross-attention maps, and the cross-attention threshold
mask and the cluster scores follow the official formulas (utils/segmentation.py)."""
from __future__ import annotations

import pytest
import torch

from exemplar_edit.core import segmentation as seg

GRID = (8, 8)


def _regions() -> torch.Tensor:
    """5 known regions on an 8x8 grid: four quadrant-ish blocks and a 3x3 object in the middle."""
    labels = torch.zeros(GRID, dtype=torch.long)
    labels[:4, 4:] = 1
    labels[4:, :4] = 2
    labels[4:, 4:] = 3
    labels[3:6, 3:6] = 4  # the object
    return labels.reshape(-1)


def _self_attention(labels: torch.Tensor, seed: int = 0, sharpness: float = 4.0) -> torch.Tensor:
    """Each pixel attends mostly to the pixels of its own region: softmax over keys of
    ``sharpness * same_region + noise``, the head-averaged map of a segmentable image."""
    g = torch.Generator().manual_seed(seed)
    same = (labels[:, None] == labels[None, :]).float()
    logits = sharpness * same + 0.5 * torch.randn(same.shape, generator=g)
    return logits.softmax(dim=-1)


def _same_partition(found: torch.Tensor, truth: torch.Tensor) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(found, truth)}
    return len(pairs) == len(set(truth.tolist())) == len({a for a, _ in pairs})


def test_kmeans_recovers_planted_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, 16, generator=g) * 5
    truth = torch.arange(200) % 5
    x = centers[truth] + 0.3 * torch.randn(200, 16, generator=g)
    first = seg.kmeans(x, 5)
    assert _same_partition(first.labels, truth)
    again = seg.kmeans(x, 5)
    assert torch.equal(first.labels, again.labels)
    assert first.inertia == pytest.approx(float(((x - first.centers[first.labels]) ** 2).sum()), rel=1e-4)


def test_kmeans_best_of_inits_is_no_worse_than_one_init():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(300, 2, generator=g)  # no real clusters: seedings end in different local optima
    inertias = [seg.kmeans(x, 5, n_init=1, seed=s).inertia for s in range(6)]
    assert seg.kmeans(x, 5, n_init=6, seed=0).inertia <= min(inertias[:1]) + 1e-6
    assert len({round(v, 4) for v in inertias}) > 1, "the test data should have several local optima"


def test_self_segmentation_recovers_the_regions_of_a_synthetic_attention_map():
    truth = _regions()
    segments = seg.self_attention_segments(_self_attention(truth))
    assert _same_partition(segments, truth)


def test_self_segmentation_mask_is_the_object_named_by_the_word():
    truth = _regions()
    tokens = 7
    cross = torch.full((GRID[0] * GRID[1], tokens), 0.1)
    word = 5
    cross[:, word] = 0.02 + 0.01 * torch.rand(GRID[0] * GRID[1], generator=torch.Generator().manual_seed(1))
    cross[truth == 4, word] = 0.6  # the word attends to the object
    mask = seg.self_segmentation_mask(_self_attention(truth), cross, word, GRID, GRID)
    assert torch.equal(mask.reshape(-1), (truth == 4).float())
    other = seg.self_segmentation_mask(_self_attention(truth), cross, 2, GRID, GRID)  # a flat token
    assert not torch.equal(other.reshape(-1), (truth == 4).float())


def test_cross_map_at_half_resolution_is_repeated_twice_as_the_official():
    truth = _regions()
    coarse = torch.zeros(4, 4)
    coarse[2:, 2:] = 1.0  # bottom-right quadrant of the 4x4 map = region 3 (and part of the object)
    cross = torch.stack([torch.full((16,), 0.5), coarse.reshape(-1)], dim=1)
    upsampled = seg.upsample_nearest(coarse, GRID)
    assert torch.equal(upsampled, coarse.repeat_interleave(2, 0).repeat_interleave(2, 1))
    mask = seg.self_segmentation_mask(_self_attention(truth), cross, 1, GRID, (4, 4))
    assert mask.reshape(-1)[truth == 3].all() and not mask.reshape(-1)[truth <= 2].any()


def test_segment_scores_use_the_official_normalisation():
    segments = torch.tensor([0, 0, 1, 1, 2, 2])
    m = torch.tensor([-0.2, 0.4, 1.0, 0.6, 0.1, 0.3])
    scores = seg.segment_object_scores(segments, m, 3)
    normalised = (m - 0.2) / 1.0  # (m - |min m|) / max m
    expected = torch.stack([normalised[:2].mean(), normalised[2:4].mean(), normalised[4:].mean()])
    assert torch.allclose(scores, expected)


@pytest.mark.parametrize("scores, chosen", [
    ([1.0, 0.5, 0.5, 0.5, 0.5], [True, False, False, False, False]),  # 1.0 > 1.4 * 0.5
    ([0.69, 0.5, 0.5, 0.5, 0.5], [False, False, False, False, True]),  # none passes: the best one
    ([0.9, 0.8, 0.1, 0.1, 0.1], [True, True, False, False, False]),  # rest mean 0.275 -> 0.385
])
def test_object_segments_rule(scores, chosen):
    scores = torch.tensor(scores)
    if chosen == [False, False, False, False, True]:
        scores = scores.flip(0)  # best at the end, none above 1.4x the rest
    assert seg.object_segments(scores).tolist() == chosen


def test_cross_attention_mask_is_min_max_threshold():
    g = torch.Generator().manual_seed(2)
    cross = torch.rand(16, 4, generator=g)
    mask = seg.cross_attention_mask(cross, 3, (4, 4), threshold=0.3)
    m = cross[:, 3]
    expected = ((m - m.min()) / (m.max() - m.min()) > 0.3).float().reshape(4, 4)
    assert torch.equal(mask, expected)
    assert 0 < int(mask.sum()) < 16


def test_head_averaged_attention_matches_the_plain_softmax():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    heads = 2
    qh = q.reshape(2, 6, heads, 4).permute(0, 2, 1, 3)
    kh = k.reshape(2, 5, heads, 4).permute(0, 2, 1, 3)
    plain = (qh @ kh.transpose(-1, -2) / 2.0).softmax(-1).mean(1)
    assert torch.allclose(seg.head_averaged_attention(q, k, heads), plain, atol=1e-6)
