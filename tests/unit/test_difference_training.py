"""core.difference's training-loop helpers without ComfyUI: the sigma-space noised latent and
keeping the best tokens without a device-to-host copy."""
from __future__ import annotations

import math

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


def test_keep_best_keeps_the_lowest_loss_and_respects_eligibility():
    best_loss, best = torch.tensor(float("inf")), torch.zeros(2, 3)
    sequence = [(5.0, 1.0, True), (3.0, 2.0, True), (4.0, 3.0, True), (1.0, 4.0, False), (2.0, 5.0, True)]
    for loss, value, eligible in sequence:
        best_loss, best = dif.keep_best(best_loss, best, torch.tensor(loss), torch.full((2, 3), value), eligible)
    assert float(best_loss) == 2.0 and torch.equal(best, torch.full((2, 3), 5.0))


def test_keep_best_does_not_keep_the_graph():
    tokens = torch.ones(2, 3, requires_grad=True)
    loss = (tokens ** 2).sum()
    best_loss, best = dif.keep_best(torch.tensor(float("inf")), torch.zeros(2, 3), loss, tokens)
    assert not best.requires_grad and not best_loss.requires_grad
    assert torch.equal(best, torch.ones(2, 3)) and float(best_loss) == 6.0


def test_keep_best_with_a_python_eligible_needs_no_tensor_and_matches_a_tensor_eligible():
    best_loss, best = torch.tensor(float("inf")), torch.zeros(2, 3)
    loss, tokens = torch.tensor(1.0), torch.ones(2, 3)
    kept_loss, kept = dif.keep_best(best_loss, best, loss, tokens, False)
    assert kept_loss is best_loss and kept is best
    for eligible in (True, False):
        got = dif.keep_best(best_loss, best, loss, tokens, eligible)
        expected = dif.keep_best(best_loss, best, loss, tokens, torch.tensor(eligible))
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
