"""core.difference's training-loop helpers without ComfyUI: the sigma-space noised latent and the
fair selection of the tokens on a fixed validation set."""
from __future__ import annotations

import math

import pytest
import torch

from exemplar_edit.core import difference as dif


def test_noised_latent_matches_the_ddpm_forward_process_after_rescaling():
    """x = x0 + sigma eps equals z_t / sqrt(abar) with z_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for abar in (0.999, 0.5, 0.01):
        sigma = math.sqrt((1 - abar) / abar)
        z_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
        got = dif.noised_latent(x0, torch.tensor(sigma), eps)
        assert torch.allclose(got * math.sqrt(abar), z_t, atol=1e-5)
    # per-sample sigmas broadcast over the latent axes; sigma 0 is the clean latent
    sigmas = torch.tensor([0.0, 2.0])
    out = dif.noised_latent(x0, sigmas, eps)
    assert torch.equal(out[0], x0[0]) and torch.allclose(out[1], x0[1] + 2.0 * eps[1])
    assert torch.allclose(dif.noised_latent(x0, 1.5, eps), x0 + 1.5 * eps)


def _quality(k: int) -> float:
    """What the tokens after k updates are worth (lower is better): a fast fall, then a plateau that
    drifts a little, as a real run does; its best is at one step whatever the timesteps drawn."""
    return 0.01 + 0.5 * math.exp(-k / 20.0) + 0.004 * (1.0 + math.sin(k / 9.0))


def _error(k: int, t: int, noise: torch.Tensor) -> float:
    """A single-draw consistency error as on a real model: it falls 200x from t = 0 to t = 999, far
    more than the tokens move it, plus a little noise dependence."""
    return 200.0 ** (1.0 - t / 999.0) * _quality(k) * (1.0 + 0.05 * float(noise.mean()))


def test_validation_set_spreads_over_the_schedule_and_is_fixed_by_the_seed():
    ts = dif.validation_timesteps(8, 1000)
    assert ts.tolist() == [62, 187, 312, 437, 562, 687, 812, 937]  # one per eighth of the schedule
    assert dif.validation_timesteps(2000, 1000).unique().numel() == 1000
    a, b, c = (dif.validation_noises(4, (1, 4, 8, 8), seed) for seed in (3, 3, 4))
    assert a.shape == (4, 1, 4, 8, 8) and torch.equal(a, b) and not torch.allclose(a, c)
    assert [s for s in range(1, 11) if dif.is_validation_step(s, 10, 4)] == [4, 8, 10]


def test_selection_on_the_validation_set_does_not_follow_the_timestep():
    """Judged on the fixed validation set, the kept candidate is the one whose tokens are best, for
    every order of training timesteps; judged on each step's own draw (VISII's rule), the choice
    follows the drawn timestep and changes with the order."""
    steps, every = 300, 10
    candidates = list(range(every, steps + 1, every))
    truly_best = min(candidates, key=_quality)
    check_t = dif.validation_timesteps(8, 1000)
    check_noise = dif.validation_noises(len(check_t), (16,), seed=1)
    single_choices = set()
    for order_seed in range(3):
        timesteps = dif.shuffled_timesteps(steps, 1000, torch.Generator().manual_seed(order_seed))
        # VISII's rule: the lowest single-draw error, each candidate at its own step's timestep
        single_choice = min(candidates, key=lambda k: _error(k, int(timesteps[k - 1]), torch.zeros(1)))
        single_choices.add(single_choice)
        assert single_choice != truly_best and _quality(single_choice) > _quality(truly_best)

        selection = dif.TokenSelection(dif.KEEP_BEST_ON_VALIDATION)
        selection.baseline = dif.validation_loss(
            lambda t, n: torch.tensor(_error(0, int(t), n)), check_t, check_noise)
        for k in range(1, steps + 1):
            if dif.is_validation_step(k, steps, every):
                loss = dif.validation_loss(lambda t, n: torch.tensor(_error(k, int(t), n)), check_t, check_noise)
                selection.offer(k, loss, {"l": torch.full((2, 3), float(k))})
        assert selection.kept_step == truly_best
        assert torch.equal(selection.kept_tokens["l"], torch.full((2, 3), float(truly_best)))
        assert [s for s, _ in selection.history] == candidates
        assert selection.baseline > max(v for _, v in selection.history)
        assert f"step {truly_best}: " in selection.summary() and "<- kept" in selection.summary()
    assert len(single_choices) > 1  # the single-draw choice moves with the timestep order


def test_selection_keep_last_and_nonfinite_losses():
    last = dif.TokenSelection(dif.KEEP_LAST)
    best = dif.TokenSelection(dif.KEEP_BEST_ON_VALIDATION)
    for step, loss in ((1, 0.5), (2, 0.2), (3, float("nan")), (4, 0.9)):
        for selection in (last, best):
            selection.offer(step, loss, {"l": torch.full((1,), float(step))})
    assert last.kept_step == 4 and float(last.kept_tokens["l"]) == 4.0
    assert best.kept_step == 2 and best.kept_loss == 0.2 and len(best.history) == 4
    with pytest.raises(ValueError):
        dif.TokenSelection("lowest")


def test_noised_latent_of_a_flow_model_and_its_velocity_target():
    """FLOW: x = (1 - sigma) x0 + sigma eps; the velocity eps - x0 is what takes x0 to x: x = x0 + sigma v.
    sigma 0 is the clean latent and sigma 1 the noise alone, exactly."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    for sigma in (0.1, 0.5, 0.9):
        x = dif.noised_latent(x0, torch.tensor(sigma), eps, dif.FLOW)
        assert torch.allclose(x, (1 - sigma) * x0 + sigma * eps, atol=1e-6)
        assert torch.allclose(x, x0 + sigma * (eps - x0), atol=1e-6)
    ends = dif.noised_latent(x0, torch.tensor([0.0, 1.0]), eps, dif.FLOW)
    assert torch.equal(ends[0], x0[0]) and torch.equal(ends[1], eps[1])
    assert torch.equal(dif.noised_latent(x0, 0.5, eps), dif.noised_latent(x0, 0.5, eps, dif.VE))


def test_pooled_difference_is_exact_at_zero_and_negates():
    g = torch.Generator().manual_seed(2)
    pooled, delta = torch.randn(2, 768, generator=g).half(), torch.randn(1, 768, generator=g)
    assert torch.equal(dif.add_to_pooled(pooled, torch.zeros(1, 768)), pooled)
    assert torch.equal(dif.add_to_pooled(pooled, -0.0 * delta), pooled)
    plus, minus = dif.add_to_pooled(pooled, delta), dif.add_to_pooled(pooled, -delta)
    assert plus.dtype == torch.float16 and torch.allclose(plus - pooled, pooled - minus, atol=1e-2)
    tokens = dif.difference_tokens(1, 768)
    dif.add_to_pooled(pooled.float(), tokens).sum().backward()
    assert torch.equal(tokens.grad, torch.full((1, 768), 2.0))
