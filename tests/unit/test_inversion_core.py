"""core.inversion without ComfyUI: sigma-space DDIM / DDPM algebra, inversion loops, and a
numerical comparison with diffusers' schedulers (an independent implementation)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from exemplar_edit.core import inversion as inv

# Stable Diffusion's training schedule ("scaled_linear", 1000 steps).
BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0)
SIGMAS_ALL = ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD).sqrt()


def c_in(sigma: float) -> float:
    return 1.0 / math.sqrt(sigma**2 + 1.0)


def ddim_uniform(steps: int) -> tuple[torch.Tensor, list[int]]:
    """ComfyUI's ddim_uniform schedule: timesteps 1, 1 + 1000//steps, ... descending, then sigma 0."""
    stride = 1000 // steps
    timesteps = list(range(1, 1000, stride))[:steps][::-1]
    sigmas = torch.tensor([float(SIGMAS_ALL[t]) for t in timesteps] + [0.0], dtype=torch.float64)
    return sigmas, timesteps


def timestep_of(sigma: torch.Tensor) -> int:
    return int((SIGMAS_ALL - float(sigma.flatten()[0])).abs().argmin())


class ToyEps(torch.nn.Module):
    """A smooth, nonlinear, timestep-dependent eps predictor on VP latents."""

    def __init__(self, channels: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64) * 0.2)

    def forward(self, x_vp: torch.Tensor, t: int) -> torch.Tensor:
        h = torch.nn.functional.conv2d(x_vp, self.weight, padding=1)
        return torch.tanh(h * (1.0 + t / 1000.0)) + 0.05 * math.sin(t / 50.0)


def toy_denoiser(eps_model: ToyEps):
    """D(x; sigma) of a VP eps model in sigma space: x - sigma * eps(c_in(sigma) x, t(sigma))."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma.flatten()[0])
        return x - s * eps_model(x * c_in(s), timestep_of(sigma))

    return denoise


@pytest.fixture
def latent() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_ddim_step_runs_both_ways(latent):
    eps = torch.randn_like(latent)
    up = inv.ddim_step(latent, eps, 0.5, 3.0)
    assert torch.allclose(inv.ddim_step(up, eps, 3.0, 0.5), latent)
    assert torch.allclose(inv.predicted_noise(up, up - 3.0 * eps, 3.0), eps)


def test_predicted_noise_takes_a_python_sigma_as_is_with_the_tensor_result():
    """A Python sigma broadcasts without being made a device tensor; float32 results are bit-equal."""
    g = torch.Generator().manual_seed(4)
    x, x0 = torch.randn(2, 4, 9, 7, generator=g), torch.randn(2, 4, 9, 7, generator=g)
    for sigma in (0.0291675, 1.7, 14.614641):
        assert isinstance(inv._per_sample(sigma, x), float)
        assert torch.equal(inv.predicted_noise(x, x0, sigma), inv.predicted_noise(x, x0, torch.tensor(sigma)))
    per_row = torch.tensor([1.0, 2.0])
    assert torch.equal(inv.predicted_noise(x, x0, per_row)[1], (x[1] - x0[1]) / 2.0)


def test_ddpm_posterior_matches_vp_formula():
    # DDPM posterior variance in VP coordinates (Ho et al. Eq. 7), rescaled by 1/alpha_bar_s.
    for t, s in [(981, 961), (501, 481), (41, 21), (21, 1)]:
        a_t, a_s = float(ALPHAS_CUMPROD[t]), float(ALPHAS_CUMPROD[s])
        var_vp = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        x_t, x0 = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
        mean, std = inv.ddpm_posterior(x_t, x0, float(SIGMAS_ALL[t]), float(SIGMAS_ALL[s]))
        assert std == pytest.approx(math.sqrt(var_vp / a_s), rel=1e-9)
        # VP posterior mean (Ho et al. Eq. 7) mapped to sigma space
        coef_x0 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
        coef_xt = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        mean_vp = coef_x0 * float(x0) + coef_xt * float(x_t) * math.sqrt(a_t)
        assert float(mean) == pytest.approx(mean_vp / math.sqrt(a_s), rel=1e-9)
    mean, std = inv.ddpm_posterior(torch.tensor(1.0), torch.tensor(0.25), 0.5, 0.0)
    assert std == 0.0 and float(mean) == 0.25


def test_ddim_inversion_matches_diffusers_inverse_scheduler(latent):
    diffusers = pytest.importorskip("diffusers")
    model = ToyEps()
    steps = 50
    sigmas, timesteps = ddim_uniform(steps)

    ours = inv.invert_ddim(toy_denoiser(model), latent, sigmas, 0, c_in)

    scheduler = diffusers.DDIMInverseScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=True, steps_offset=1,
    )
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == timesteps[::-1]
    x = latent.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, int(t)), t, x).prev_sample
    # ours is in sigma space: x_vp = sqrt(alpha_bar) * x
    ours_vp = ours[0] * c_in(float(sigmas[0]))
    # diffusers keeps alphas_cumprod in float32: agreement to float32 precision
    assert torch.allclose(ours_vp, x, atol=1e-5, rtol=1e-5), (ours_vp - x).abs().max()
    assert torch.equal(ours[-1], latent)
    # every intermediate level too
    x = latent.clone()
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            x = scheduler.step(model(x, int(t)), t, x).prev_sample
            level = steps - 1 - k
            assert torch.allclose(ours[level] * c_in(float(sigmas[level])), x, atol=1e-5, rtol=1e-5)


def test_ddim_replay_matches_diffusers_ddim_scheduler(latent):
    diffusers = pytest.importorskip("diffusers")
    model = ToyEps()
    steps = 20
    sigmas, _ = ddim_uniform(steps)
    denoise = toy_denoiser(model)

    x = latent * float(sigmas[0]) + latent.flip(0)
    ours = x.clone()
    for k in range(steps):
        s = sigmas[k].expand(x.shape[0])
        ours = inv.replay_step(ours, denoise(ours, s), float(sigmas[k]), float(sigmas[k + 1]), None)

    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=True, steps_offset=1,
    )
    scheduler.set_timesteps(steps)
    x_vp = x * c_in(float(sigmas[0]))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_vp = scheduler.step(model(x_vp, int(t)), t, x_vp, eta=0.0).prev_sample
    assert torch.allclose(ours, x_vp, atol=1e-5, rtol=1e-5)


def test_ddim_inversion_then_replay_error_falls_with_steps(latent):
    denoise = toy_denoiser(ToyEps())
    errors = []
    for steps in (5, 10, 20, 50):
        sigmas, _ = ddim_uniform(steps)
        x = inv.invert_ddim(denoise, latent, sigmas, 0, c_in)[0]
        for k in range(steps):
            x = inv.replay_step(x, denoise(x, sigmas[k].expand(2)), float(sigmas[k]), float(sigmas[k + 1]), None)
        errors.append(float((x - latent).abs().mean().detach()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("start_step", [0, 3])
def test_edit_friendly_replay_reconstructs_exactly(latent, start_step):
    denoise = toy_denoiser(ToyEps())
    sigmas, _ = ddim_uniform(10)
    latents, maps = inv.invert_edit_friendly(denoise, latent, sigmas, start_step, torch.Generator().manual_seed(3))
    assert len(latents) == len(sigmas) - start_step and len(maps) == len(sigmas) - 1 - start_step
    x = latents[0]
    for k, noise_map in enumerate(maps):
        i = start_step + k
        x = inv.replay_step(x, denoise(x, sigmas[i].expand(2)), float(sigmas[i]), float(sigmas[i + 1]), noise_map)
        assert torch.allclose(x, latents[k + 1], atol=1e-9)
    assert torch.allclose(x, latent, atol=1e-9)
    # official behaviour: without the final residual, the replay ends on the model's x0 prediction
    x = latents[-2]
    last = len(sigmas) - 2
    x0_hat = denoise(x, sigmas[last].expand(2))
    assert torch.equal(inv.replay_step(x, x0_hat, float(sigmas[last]), 0.0, maps[-1], exact_final_step=False), x0_hat)


def test_edit_friendly_random_stream_does_not_depend_on_start_step(latent):
    denoise = toy_denoiser(ToyEps())
    sigmas, _ = ddim_uniform(10)
    full, full_maps = inv.invert_edit_friendly(denoise, latent, sigmas, 0, torch.Generator().manual_seed(5))
    part, part_maps = inv.invert_edit_friendly(denoise, latent, sigmas, 4, torch.Generator().manual_seed(5))
    assert torch.equal(full[4], part[0])
    assert all(torch.equal(a, b) for a, b in zip(full_maps[4:], part_maps))


def test_edit_friendly_noise_map_statistics_for_a_perfect_denoiser():
    # With D = the true x0 and independent x_t = x0 + s_t n_t, z = (s_s n_s - r s_t n_t) / std with
    # r = s_s^2 / s_t^2 and std^2 = s_s^2 (1 - r): zero mean, variance (1 + r) / (1 - r) > 1 (the
    # edit-friendly maps are heavier than white noise, as Huberman-Spiegelglas et al. observe).
    x0 = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas, _ = ddim_uniform(10)
    _, maps = inv.invert_edit_friendly(lambda x, s: x0, x0, sigmas, 0, torch.Generator().manual_seed(7))
    for i, z in enumerate(maps[:-1]):
        r = float(sigmas[i + 1]) ** 2 / float(sigmas[i]) ** 2
        assert abs(float(z.mean())) < 0.05
        assert float(z.var()) == pytest.approx((1 + r) / (1 - r), rel=0.05)
    assert torch.allclose(maps[-1], x0 - x0)  # last step: residual of a perfect prediction is 0


def test_kl_loss_is_small_for_white_noise_and_large_otherwise():
    white = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    assert float(inv.kl_divergence_loss(white)) < 1e-2
    assert float(inv.kl_divergence_loss(white * 3 + 1)) > 1.0


def test_auto_correlation_loss_sees_spatial_correlation():
    white = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.avg_pool2d(white, 5, stride=1, padding=2) * 5
    assert float(inv.auto_correlation_loss(smooth, random.Random(0))) > 10 * float(
        inv.auto_correlation_loss(white, random.Random(0))
    )


def test_auto_correlation_shift_is_never_zero():
    """pix2pix-zero ec33392: shifts are drawn from [1, H/2); a zero shift makes the term the squared
    mean of n^2, a variance penalty that white noise cannot escape."""
    class Recorder(random.Random):
        drawn: list = []

        def randrange(self, *args):
            value = super().randrange(*args)
            Recorder.drawn.append((args, value))
            return value

    noise = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    inv.auto_correlation_loss(noise, Recorder(0))
    assert Recorder.drawn and all(args == (1, level) and 1 <= value < level
                                  for (args, value) in Recorder.drawn for level in [args[1]])
    constant = torch.ones(1, 1, 8, 8)  # correlated with itself at every shift
    assert float(inv.auto_correlation_loss(constant, random.Random(0))) > 0
    assert float(inv.auto_correlation_loss(torch.ones(1, 1, 3, 3), random.Random(0))) == 0  # no shift in [1, 1)


def test_regularization_whitens_noise_deterministically_even_in_inference_mode():
    g = torch.Generator().manual_seed(0)
    eps = torch.nn.functional.avg_pool2d(torch.randn(2, 4, 32, 32, generator=g), 3, stride=1, padding=1) * 2 + 0.3
    settings = inv.NoiseRegularization()
    with torch.inference_mode():
        eps_inference = eps.clone()
        out = inv.regularize_noise(eps_inference, settings, random.Random(1))
    again = inv.regularize_noise(eps, settings, random.Random(1))
    assert torch.equal(out, again)

    def total(e):
        return float(inv.auto_correlation_loss(e, random.Random(9)) + inv.kl_divergence_loss(e))

    # pix2pix-zero's steps are small (losses are means over all elements); they still help.
    assert total(out) < total(eps)
    assert float(inv.kl_divergence_loss(out)) < float(inv.kl_divergence_loss(eps))
    off = inv.regularize_noise(eps, inv.NoiseRegularization(lambda_ac=0, lambda_kl=0), random.Random(1))
    assert torch.equal(off, eps)


def test_inversion_record_is_shared_not_copied_on_deepcopy(latent):
    import copy

    record = inv.Inversion(mode=inv.DDIM, sigmas=torch.ones(3), start_step=0, latents=[latent])
    assert copy.deepcopy({"a": record})["a"] is record
    assert torch.equal(record.remaining_sigmas, torch.ones(3))


def official_pix2pix_zero_inversion(model: ToyEps, z: torch.Tensor, steps: int, regularize=None) -> torch.Tensor:
    """pix2pix-zero's inversion loop written out from its definition (VP latents, alphas_cumprod A):
    r = 1000 // N; labels t = r + 1, 2r + 1, ..., (N - 2) r + 1; eps = eps(z, t) on the latent at
    A[t - 1]; x0 = (z - sqrt(1 - A[t-1]) eps) / sqrt(A[t-1]); z = sqrt(A[t-1+r]) x0 + sqrt(1 - A[t-1+r]) eps."""
    stride = 1000 // steps
    for t in range(stride + 1, (steps - 2) * stride + 2, stride):
        a_cur, a_next = float(ALPHAS_CUMPROD[t - 1]), float(ALPHAS_CUMPROD[t - 1 + stride])
        eps = model(z, t)
        if regularize is not None:
            eps = regularize(eps)
        x0 = (z - (1 - a_cur) ** 0.5 * eps) / a_cur**0.5
        z = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return z


@pytest.mark.parametrize("steps", [50, 10])
def test_pix2pix_zero_convention_equals_the_official_loop(latent, steps):
    """48 steps at 50 (labels 21..961), the UNet at the current level's label, start at A[20], end at
    A[980]; the state is read by the sampler at the label above it (x_T at timestep 981)."""
    model = ToyEps()
    sigmas, timesteps = ddim_uniform(steps)
    calls = []

    def denoise(x, sigma):
        calls.append(timestep_of(sigma))
        return toy_denoiser(model)(x, sigma)

    previous = inv.previous_training_level(SIGMAS_ALL.float())
    ours = inv.invert_ddim_pix2pix_zero(denoise, latent, sigmas, 0, c_in, previous)
    stride = 1000 // steps
    assert calls == list(range(stride + 1, (steps - 2) * stride + 2, stride))
    assert len(ours) == len(sigmas) and torch.equal(ours[-1], latent)
    official = official_pix2pix_zero_inversion(model, latent.clone(), steps)
    ours_vp = ours[0] * c_in(float(sigmas[0]))  # the VP latent the edit pass starts from
    assert torch.allclose(ours_vp, official, atol=1e-6, rtol=1e-6), (ours_vp - official).abs().max()
    # it is not the diffusers convention (different levels and model evaluations)
    diffusers_like = inv.invert_ddim(toy_denoiser(model), latent, sigmas, 0, c_in)[0]
    assert (diffusers_like - ours[0]).norm() > 1e-3 * ours[0].norm()
    # an earlier stop is the same loop cut short: state after step k read at its label
    for skip in (1, steps - 3, steps - 2, steps - 1):
        cut = inv.invert_ddim_pix2pix_zero(toy_denoiser(model), latent, sigmas, skip, c_in, previous)
        assert len(cut) == len(sigmas) - skip
        for a, b in zip(cut, ours[skip:]):
            assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    # the two lowest levels hold the clean latent read at their labels (never stepped from)
    assert torch.allclose(ours[-2], latent / c_in(float(sigmas[-2])))
    assert torch.allclose(ours[-3], latent / c_in(float(sigmas[-3])))


def test_pix2pix_zero_convention_regularises_each_step_before_the_update(latent):
    model = ToyEps()
    sigmas, _ = ddim_uniform(10)
    settings = inv.NoiseRegularization(num_reg_steps=1, num_ac_rolls=2)
    previous = inv.previous_training_level(SIGMAS_ALL.float())
    ours = inv.invert_ddim_pix2pix_zero(toy_denoiser(model), latent, sigmas, 0, c_in, previous,
                                        settings, random.Random(3))
    rng = random.Random(3)
    official = official_pix2pix_zero_inversion(model, latent.clone(), 10,
                                               lambda eps: inv.regularize_noise(eps, settings, rng))
    assert torch.allclose(ours[0] * c_in(float(sigmas[0])), official, atol=1e-6, rtol=1e-6)


def test_previous_training_level_refuses_levels_off_the_timesteps():
    previous = inv.previous_training_level(SIGMAS_ALL.float())
    assert previous(float(SIGMAS_ALL[21])) == pytest.approx(float(SIGMAS_ALL[20]), rel=1e-6)
    with pytest.raises(ValueError, match="not a training timestep"):
        previous(float(SIGMAS_ALL[21] + SIGMAS_ALL[22]) / 2)


# --- rectified flow (FLUX-class models, ComfyUI's CONST) -------------------------------------


def flow_sigmas(steps: int) -> torch.Tensor:
    """ComfyUI's ``simple`` schedule of a shift-1 flow model: evenly spaced from 1 to 1/steps, then 0."""
    return torch.cat([torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def toy_flow_denoiser(eps_model: ToyEps):
    """D(x; s) of a velocity model v(x, s) on flow latents x = (1 - s) x0 + s eps: x - s * v."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma.flatten()[0])
        return x - s * (0.8 * x + 0.5 * eps_model(x, int(s * 999)))

    return denoise


def test_flow_posterior_is_the_ddpm_posterior_of_the_same_process(latent):
    """x_s / (1 - s) = x0 + (s / (1 - s)) eps: the flow posterior, mapped to VE coordinates, is the
    DDPM posterior there (mean and std scale by 1 - s)."""
    x0_hat = latent * 0.3 + 0.1
    for t, s in ((0.9, 0.6), (0.5, 0.2), (0.3, 0.29)):
        x_t = (1 - t) * latent + t * latent.flip(0)
        mean, std = inv.flow_posterior(x_t, x0_hat, t, s)
        ve_mean, ve_std = inv.ddpm_posterior(x_t / (1 - t), x0_hat, t / (1 - t), s / (1 - s))
        assert torch.allclose(mean, (1 - s) * ve_mean, atol=1e-12)
        assert std == pytest.approx((1 - s) * ve_std, rel=1e-12)


def test_flow_posterior_at_pure_noise_and_at_the_end(latent):
    x0_hat = latent * 0.5
    mean, std = inv.flow_posterior(latent, x0_hat, 1.0, 0.7)  # t = 1: no division by 1 - t
    assert torch.allclose(mean, 0.3 * x0_hat) and std == pytest.approx(0.7)
    mean, std = inv.flow_posterior(latent, x0_hat, 0.4, 0.0)
    assert torch.equal(mean, x0_hat) and std == 0.0


def test_flow_exact_replay_reconstructs_exactly(latent):
    denoise = toy_flow_denoiser(ToyEps())
    sigmas = flow_sigmas(8)
    latents, maps = inv.invert_edit_friendly(denoise, latent, sigmas, 1, torch.Generator().manual_seed(3),
                                             process=inv.FLOW)
    x = latents[0]
    for k, noise_map in enumerate(maps):
        i = 1 + k
        x = inv.replay_step(x, denoise(x, sigmas[i].expand(2)), float(sigmas[i]), float(sigmas[i + 1]), noise_map,
                            process=inv.FLOW)
        assert torch.allclose(x, latents[k + 1], atol=1e-9)
    assert torch.allclose(x, latent, atol=1e-9)


def test_flow_trajectory_is_the_rectified_flow_interpolation(latent):
    noisy = inv.sample_edit_friendly_trajectory(latent, [1.0, 0.5], torch.Generator().manual_seed(4), inv.FLOW)
    generator = torch.Generator().manual_seed(4)
    first, second = (torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent.dtype)
                     for _ in range(2))
    assert torch.allclose(noisy[0], first)  # sigma 1: pure noise, nothing of x0
    assert torch.allclose(noisy[1], 0.5 * latent + 0.5 * second)


def test_flow_euler_inversion_error_falls_with_steps(latent):
    """DDIM in flow coordinates is the rectified-flow Euler step (input scale 1): inverting and replaying
    reconstructs better the more steps, and the inversion reaches sigma 1 finitely."""
    denoise = toy_flow_denoiser(ToyEps())
    errors = []
    for steps in (4, 8, 16, 32):
        sigmas = flow_sigmas(steps)
        trajectory = inv.invert_ddim(denoise, latent, sigmas, 0, lambda s: 1.0)
        assert torch.isfinite(trajectory[0]).all()
        x = trajectory[0]
        for k in range(steps):
            x = inv.replay_step(x, denoise(x, sigmas[k].expand(2)), float(sigmas[k]), float(sigmas[k + 1]), None,
                                process=inv.FLOW)
        errors.append(float((x - latent).abs().mean().detach()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 4, errors
