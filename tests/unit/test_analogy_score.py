"""core.analogy_score without ComfyUI: the CLIP directional similarity of an analogy and the
similarity of B' to B, their degenerate cases and batch conventions."""
from __future__ import annotations

import math

import pytest
import torch

from exemplar_edit.core import analogy_score as score


def _embeddings(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_directional_similarity_is_the_cosine_of_the_normalised_edit_directions():
    """Against a float64 reference written out: normalise each embedding, subtract, cosine."""
    a, a2, b, b2 = _embeddings(4, seed=1).double().unbind(0)

    def unit(v):
        return v / v.norm()

    ref_dir, b_dir = unit(a2) - unit(a), unit(b2) - unit(b)
    expected = float(ref_dir @ b_dir / (ref_dir.norm() * b_dir.norm()))
    out = score.analogy_scores(a[None], a2[None], b[None], b2[None])
    assert out.directional_similarity.shape == (1,)
    assert math.isclose(float(out.directional_similarity[0]), expected, abs_tol=1e-12)
    assert math.isclose(float(out.similarity_to_b[0]), float(unit(b) @ unit(b2)), abs_tol=1e-12)
    assert bool(out.changed[0])


def test_same_change_scores_one_and_reverse_change_minus_one():
    a, a2 = _embeddings(2, seed=2).unbind(0)
    same = score.analogy_scores(a[None], a2[None], a[None], a2[None])
    reverse = score.analogy_scores(a[None], a2[None], a2[None], a[None])
    assert math.isclose(float(same.directional_similarity[0]), 1.0, abs_tol=1e-6)
    assert math.isclose(float(reverse.directional_similarity[0]), -1.0, abs_tol=1e-6)


def test_embeddings_are_normalised_per_image_before_the_difference():
    """Scaling one image's embedding does not change its direction on the sphere, so neither score
    moves; without the per-image normalisation (VISII's D_img form) the direction would change."""
    a, a2, b, b2 = _embeddings(4, seed=3).unbind(0)
    base = score.analogy_scores(a[None], a2[None], b[None], b2[None])
    scaled = score.analogy_scores(3.0 * a[None], 0.5 * a2[None], 7.0 * b[None], 0.2 * b2[None])
    assert torch.allclose(base.directional_similarity, scaled.directional_similarity, atol=1e-6)
    assert torch.allclose(base.similarity_to_b, scaled.similarity_to_b, atol=1e-6)
    unnormalised = torch.nn.functional.cosine_similarity(0.2 * b2 - 7.0 * b, 0.5 * a2 - 3.0 * a, dim=0)
    assert abs(float(unnormalised) - float(base.directional_similarity[0])) > 1e-2


def test_unchanged_b_has_directional_similarity_zero_and_similarity_one():
    a, a2, b = _embeddings(3, seed=4).unbind(0)
    out = score.analogy_scores(a[None], a2[None], b[None], b.clone()[None])
    assert float(out.directional_similarity[0]) == 0.0  # defined as 0, not NaN
    assert not bool(out.changed[0])
    assert math.isclose(float(out.similarity_to_b[0]), 1.0, abs_tol=1e-6)
    # below the tolerance is still "no change"; just above it is a change with a real cosine
    tiny = score.NO_CHANGE_TOLERANCE / 4 * score.normalize(a2 - a)
    near = score.analogy_scores(a[None], a2[None], b[None], (score.normalize(b) + tiny)[None])
    assert float(near.directional_similarity[0]) == 0.0 and not bool(near.changed[0])
    step = score.NO_CHANGE_TOLERANCE * 4 * score.normalize(a2 - a)
    moved = score.analogy_scores(a[None], a2[None], b[None], (score.normalize(b) + step)[None])
    assert bool(moved.changed[0]) and float(moved.directional_similarity[0]) > 0.1


def test_no_exemplar_change_is_refused():
    a, b, b2 = _embeddings(3, seed=5).unbind(0)
    with pytest.raises(ValueError, match="no change"):
        score.analogy_scores(a[None], a.clone()[None], b[None], b2[None])
    # two pairs whose changes cancel out have no shared direction either
    a2 = _embeddings(1, seed=6)[0]
    with pytest.raises(ValueError, match="cancel"):
        score.analogy_scores(torch.stack([a, a2]), torch.stack([a2, a]), b[None], b2[None])


def test_batches_score_per_pair_and_one_b_serves_every_b_prime():
    a, a2 = _embeddings(2, seed=7).unbind(0)
    b = _embeddings(3, seed=8)
    b2 = _embeddings(3, seed=9)
    batch = score.analogy_scores(a[None], a2[None], b, b2)
    single = [score.analogy_scores(a[None], a2[None], b[i:i + 1], b2[i:i + 1]) for i in range(3)]
    assert batch.directional_similarity.shape == batch.similarity_to_b.shape == (3,)
    for i, one in enumerate(single):
        assert torch.allclose(batch.directional_similarity[i], one.directional_similarity[0], atol=1e-6)
        assert torch.allclose(batch.similarity_to_b[i], one.similarity_to_b[0], atol=1e-6)
    shared = score.analogy_scores(a[None], a2[None], b[:1], b2)
    for i in range(3):
        one = score.analogy_scores(a[None], a2[None], b[:1], b2[i:i + 1])
        assert torch.allclose(shared.directional_similarity[i], one.directional_similarity[0], atol=1e-6)


def test_several_exemplar_pairs_use_the_mean_direction():
    a, a2 = _embeddings(2, 16, seed=10), _embeddings(2, 16, seed=11)
    b, b2 = _embeddings(1, 16, seed=12), _embeddings(1, 16, seed=13)
    mean_direction = (score.normalize(a2) - score.normalize(a)).mean(0)
    expected = torch.nn.functional.cosine_similarity(score.normalize(b2) - score.normalize(b), mean_direction[None])
    out = score.analogy_scores(a, a2, b, b2)
    assert torch.allclose(out.directional_similarity, expected, atol=1e-6)
    # and it is not the score against either pair alone
    for i in range(2):
        alone = score.analogy_scores(a[i:i + 1], a2[i:i + 1], b, b2)
        assert abs(float(alone.directional_similarity[0]) - float(out.directional_similarity[0])) > 1e-3
