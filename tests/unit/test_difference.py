"""core.difference without ComfyUI: slerp, delta interpolation, Difference tokens, token
consistency and CLIP losses, and VISII's shuffled timestep schedule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from exemplar_edit.core import difference as dif


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (dif.normalize(a) * dif.normalize(b)).sum(-1).clamp(-1, 1)
    return torch.acos(cos)


def _reference_slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """The textbook formula: sin((1-a)th)/sin th * a + sin(a th)/sin th * b (float64)."""
    a, b = dif.normalize(a.double()), dif.normalize(b.double())
    theta = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1, 1))
    return (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)


# --- slerp -----------------------------------------------------------------------------------


def test_normalize_unit_and_zero_safe():
    v = torch.randn(3, 5, 16)
    assert torch.allclose(dif.normalize(v).norm(dim=-1), torch.ones(3, 5), atol=1e-6)
    z = dif.normalize(torch.zeros(4, 8))
    assert torch.isfinite(z).all() and (z == 0).all()


def test_slerp_endpoints_and_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)
    assert torch.allclose(dif.slerp(a, b, 0.0), dif.normalize(a), atol=1e-6)
    assert torch.allclose(dif.slerp(a, b, 1.0), dif.normalize(b), atol=1e-5)
    for alpha in (0.2, 0.5, 0.8):
        got = dif.slerp(a.double(), b.double(), alpha)
        assert torch.allclose(got, _reference_slerp(a, b, alpha), atol=1e-10)


def test_slerp_unit_norm_and_monotone_angle():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    alphas = torch.linspace(0, 1, 21)
    out = torch.stack([dif.slerp(a, b, float(x)) for x in alphas])
    assert torch.allclose(out.norm(dim=-1), torch.ones(21), atol=1e-6)
    from_a = _angle(out, a.expand_as(out))
    to_b = _angle(out, b.expand_as(out))
    assert (from_a.diff() > 0).all() and (to_b.diff() < 0).all()
    # constant angular speed: angle from a is alpha * theta
    theta = _angle(a, b)
    assert torch.allclose(from_a, alphas * theta, atol=1e-4)


def test_slerp_nearly_parallel_is_stable():
    a = torch.randn(128, dtype=torch.float32, generator=torch.Generator().manual_seed(2))
    for scale in (0.0, 1e-9, 1e-7, 1e-5):
        b = a + scale * torch.randn(128, generator=torch.Generator().manual_seed(3))
        for alpha in (0.0, 0.3, 0.8, 1.0):
            out = dif.slerp(a, b, alpha)
            assert torch.isfinite(out).all()
            assert abs(out.norm().item() - 1.0) < 1e-5
            assert _angle(out, a).item() < 1e-3


def test_slerp_antiparallel_unit_norm_and_endpoints():
    a = torch.randn(2, 16, generator=torch.Generator().manual_seed(4))
    b = -3.0 * a
    assert torch.allclose(dif.slerp(a, b, 0.0), dif.normalize(a), atol=1e-6)
    assert torch.allclose(dif.slerp(a, b, 1.0), dif.normalize(b), atol=1e-5)
    mid = dif.slerp(a, b, 0.5)
    assert torch.isfinite(mid).all()
    assert torch.allclose(mid.norm(dim=-1), torch.ones(2), atol=1e-6)
    # halfway along a great half-circle: orthogonal to both ends
    assert torch.allclose((mid * dif.normalize(a)).sum(-1), torch.zeros(2), atol=1e-5)


def test_slerp_batched_matches_rows_and_per_row_alpha():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 3, 24, generator=g), torch.randn(2, 3, 24, generator=g)
    batched = dif.slerp(a, b, 0.4)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(batched[i, j], dif.slerp(a[i, j], b[i, j], 0.4), atol=1e-6)
    alpha = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    per_row = dif.slerp(a, b, alpha)
    assert torch.allclose(per_row[0, 0], dif.normalize(a[0, 0]), atol=1e-6)
    assert torch.allclose(per_row[0, 2], dif.normalize(b[0, 2]), atol=1e-5)
    assert torch.allclose(per_row[1, 1], dif.slerp(a[1, 1], b[1, 1], 0.5), atol=1e-6)
    # broadcasting one direction against a batch
    assert dif.slerp(a, b[0, 0], 0.3).shape == a.shape


def test_slerp_gradient_finite():
    a = torch.randn(16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    dif.slerp(a, b, 0.7).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# --- delta interpolation ---------------------------------------------------------------------


def test_delta_interpolation_endpoints_and_default():
    g = torch.Generator().manual_seed(6)
    ia, ib, ta, tb = (torch.randn(768, generator=g) for _ in range(4))
    d_img = dif.normalize(ib - ia)
    d_txt = dif.normalize(tb - ta)
    assert torch.allclose(dif.delta_interpolation(ia, ib, ta, tb, alpha=0.0), d_img, atol=1e-6)
    assert torch.allclose(dif.delta_interpolation(ia, ib, ta, tb, alpha=1.0), d_txt, atol=1e-5)
    d = dif.delta_interpolation(ia, ib, ta, tb)  # alpha = 0.8, towards the text delta
    assert abs(d.norm().item() - 1.0) < 1e-6
    theta = _angle(d_img, d_txt)
    assert torch.allclose(_angle(d, d_img), 0.8 * theta, atol=1e-4)
    assert _angle(d, d_txt) < _angle(d, d_img)


def test_delta_interpolation_rejects_mismatched_spaces():
    with pytest.raises(ValueError):
        dif.delta_interpolation(torch.randn(768), torch.randn(768), torch.randn(512), torch.randn(512))


# --- Difference tokens and token consistency ---------------------------------------------------


def test_difference_tokens_zero_init():
    d = dif.difference_tokens(4, 768, torch.float16)
    assert d.shape == (4, 768) and d.dtype == torch.float16
    assert (d == 0).all() and d.requires_grad and d.is_leaf
    with pytest.raises(ValueError):
        dif.difference_tokens(0, 768)


def test_append_tokens_shapes_and_sign():
    p = torch.randn(2, 77, 8)
    d = torch.randn(3, 8)
    out = dif.append_tokens(p, -d)
    assert out.shape == (2, 80, 8)
    assert torch.equal(out[:, :77], p) and torch.equal(out[1, 77:], -d)


def _toy_predictor(weight: torch.Tensor):
    """predict(x, t, cond) = w * x + mean of conditioning rows (broadcast over the latent)."""

    def predict(x, t, cond):
        return weight * x + cond.mean(dim=(-2, -1)).reshape(-1, 1, 1, 1) + 0.0 * t.float().reshape(-1, 1, 1, 1)

    return predict


def test_token_consistency_losses_zero_when_prediction_is_target():
    torch.manual_seed(7)
    tokens = dif.difference_tokens(2, 8)
    p_a, p_a2 = torch.randn(1, 77, 8), torch.randn(1, 77, 8)
    z_a, z_a2 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    seen = []

    def oracle(x, t_, cond):
        seen.append(cond)
        return eps_after if x is z_a2 else eps_before

    eps_after, eps_before = torch.randn_like(z_a2), torch.randn_like(z_a)
    l_after, l_before = dif.token_consistency_losses(oracle, tokens, p_a, p_a2, z_a, z_a2, t, eps_before, eps_after)
    assert l_after.item() == 0.0 and l_before.item() == 0.0
    # the pairing of the paper: [P(A); +D] with z_A', [P(A'); -D] with z_A
    assert torch.equal(seen[0][:, :77], p_a) and torch.equal(seen[1][:, :77], p_a2)


def test_token_consistency_losses_values_and_gradient_reaches_tokens():
    torch.manual_seed(8)
    tokens = dif.difference_tokens(3, 8)
    p_a, p_a2 = torch.randn(1, 77, 8), torch.randn(1, 77, 8)
    z_a, z_a2 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    target_a, target_a2 = torch.randn_like(z_a), torch.randn_like(z_a2)
    predict = _toy_predictor(torch.tensor(0.5))
    t = torch.tensor([10])
    l_after, l_before = dif.token_consistency_losses(predict, tokens, p_a, p_a2, z_a, z_a2, t, target_a, target_a2)
    expected_after = ((predict(z_a2, t, torch.cat([p_a, tokens[None]], 1)) - target_a2) ** 2).mean()
    expected_before = ((predict(z_a, t, torch.cat([p_a2, -tokens[None]], 1)) - target_a) ** 2).mean()
    assert torch.allclose(l_after, expected_after) and torch.allclose(l_before, expected_before)
    (4 * (l_after + l_before)).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    for term in dif.token_consistency_losses(predict, tokens, p_a, p_a2, z_a, z_a2, t, target_a, target_a2):
        assert torch.autograd.grad(term, tokens)[0].abs().sum() > 0


def test_token_consistency_custom_composer():
    tokens = torch.ones(2, 4, requires_grad=True)

    def paste(prompt, signed):  # VISII-style: overwrite rows 5..6 instead of appending
        out = prompt.clone()
        out[:, 5:7] = signed
        return out

    shapes = []

    def predict(x, t, cond):
        shapes.append(cond.shape)
        return x * cond.sum()

    z = torch.randn(1, 4, 2, 2)
    dif.token_consistency_losses(predict, tokens, torch.zeros(1, 10, 4), torch.zeros(1, 10, 4), z, z,
                                 torch.tensor([1]), z, z, compose=paste)
    assert shapes == [(1, 10, 4), (1, 10, 4)]


# --- CLIP direction loss -----------------------------------------------------------------------


def _visii_clip_term(edit_direction_embed: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """visii.py:930-934, verbatim up to the weight: the term subtracted as ``lambda_clip * loss_clip``."""
    text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
    loss_clip = nn.CosineSimilarity()(edit_direction_embed, text_embeds)
    loss_clip = torch.clamp(loss_clip, min=-1, max=0.5)
    return -loss_clip


def test_clip_loss_matches_visii_formula():
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        d = dif.normalize(torch.randn(768, generator=g))
        feat = torch.randn(1, 768, generator=g)
        assert torch.allclose(dif.clip_direction_loss(feat, d), _visii_clip_term(d, feat).mean(), atol=1e-6)
    # strongly aligned case (clamp active) and anti-aligned
    d = dif.normalize(torch.randn(768, generator=g))
    for feat in (3.0 * d[None] + 0.01 * torch.randn(1, 768, generator=g), -d[None]):
        assert torch.allclose(dif.clip_direction_loss(feat, d), _visii_clip_term(d, feat).mean(), atol=1e-6)


def test_clip_loss_minimal_when_aligned():
    d = dif.normalize(torch.randn(32, generator=torch.Generator().manual_seed(10)))
    ortho = torch.randn(32, generator=torch.Generator().manual_seed(16))
    ortho = dif.normalize(ortho - (ortho @ d) * d)
    aligned = dif.clip_direction_loss(2.0 * d, d)
    assert math.isclose(aligned.item(), -0.5, abs_tol=1e-6)
    assert math.isclose(dif.clip_direction_loss(ortho, d).item(), 0.0, abs_tol=1e-6)
    assert math.isclose(dif.clip_direction_loss(-d, d).item(), 1.0, abs_tol=1e-6)
    for _ in range(20):
        assert dif.clip_direction_loss(torch.randn(32), d).item() >= aligned.item() - 1e-7


def test_clip_loss_through_projected_tokens_and_zero_init_is_finite():
    torch.manual_seed(11)
    proj = nn.Linear(8, 6, bias=False)
    d = dif.normalize(torch.randn(6))
    tokens = dif.difference_tokens(4, 8)
    loss = dif.clip_direction_loss(dif.difference_token_feature(tokens, proj), d)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(tokens.grad).all()
    # away from zero the gradient pulls the projected feature towards d
    tokens = (0.1 * torch.randn(4, 8)).requires_grad_(True)
    opt = torch.optim.SGD([tokens], lr=0.5)
    first = dif.clip_direction_loss(dif.difference_token_feature(tokens, proj), d).item()
    for _ in range(50):
        opt.zero_grad()
        dif.clip_direction_loss(dif.difference_token_feature(tokens, proj), d).backward()
        opt.step()
    last = dif.clip_direction_loss(dif.difference_token_feature(tokens, proj), d).item()
    assert last < first


# --- timesteps ---------------------------------------------------------------------------------


def test_shuffled_timesteps_distinct_in_range_deterministic():
    ts = dif.shuffled_timesteps(300, 1000, torch.Generator().manual_seed(12))
    assert ts.dtype == torch.long and ts.shape == (300,)
    assert len(set(ts.tolist())) == 300
    assert ts.min() >= 0 and ts.max() < 1000
    again = dif.shuffled_timesteps(300, 1000, torch.Generator().manual_seed(12))
    assert torch.equal(ts, again)
    other = dif.shuffled_timesteps(300, 1000, torch.Generator().manual_seed(13))
    assert not torch.equal(ts, other)


def test_shuffled_timesteps_full_schedule_and_longer_runs():
    full = dif.shuffled_timesteps(1000, 1000, torch.Generator().manual_seed(14))
    assert sorted(full.tolist()) == list(range(1000))  # VISII: every timestep exactly once
    assert not torch.equal(full, torch.arange(1000))
    long = dif.shuffled_timesteps(25, 10, torch.Generator().manual_seed(15))
    assert long.shape == (25,)
    assert sorted(long[:10].tolist()) == list(range(10)) and sorted(long[10:20].tolist()) == list(range(10))
    assert len(set(long[20:].tolist())) == 5
    assert dif.shuffled_timesteps(0).numel() == 0


def test_add_to_padding_rows_keeps_the_length_and_is_exact_for_a_zero_difference():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 154, 8, generator=g)
    rows = torch.randn(3, 8, generator=g, requires_grad=True)
    assert torch.equal(dif.add_to_padding_rows(cond, torch.zeros(3, 8)), cond)
    out = dif.add_to_padding_rows(cond, rows)
    assert out.shape == cond.shape and torch.equal(out[:, :-3], cond[:, :-3])
    assert torch.allclose(out[:, -3:], cond[:, -3:] + rows)
    negated = dif.add_to_padding_rows(cond, -rows)
    assert torch.allclose(negated - cond, -(out - cond), atol=1e-6)
    out.sum().backward()
    assert torch.equal(rows.grad, torch.full((3, 8), 2.0))  # both batch entries
    half = dif.add_to_padding_rows(cond.half(), rows.detach())
    assert half.dtype == torch.float16
    with pytest.raises(ValueError):
        dif.add_to_padding_rows(cond[:, :2], rows)
