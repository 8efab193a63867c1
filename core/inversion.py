"""Diffusion inversion in sigma space, in plain PyTorch.

Every function here works in the coordinates that ComfyUI's samplers use for the model. For the
usual SD models (eps or v prediction) that is sigma ("variance exploding") space, process ``VE``:
a latent at noise level sigma is ``x = x0 + sigma * eps``, the same process as
``x_vp = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` with ``x = x_vp / sqrt(alpha_bar)``
and ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``, so DDIM and DDPM steps keep their meaning.
For rectified-flow models (FLUX.1, ComfyUI's ``CONST``), process ``FLOW``, the latent at level
sigma in [0, 1] is ``x = (1 - sigma) x0 + sigma eps``. It is the same Gaussian process rescaled:
``x / (1 - sigma) = x0 + (sigma / (1 - sigma)) eps``. So the deterministic step, written with
``d = (x - x0_hat) / sigma`` as ``x + (sigma_to - sigma_from) d``, is DDIM in VE coordinates and the
rectified-flow Euler step in FLOW coordinates (there ``d`` is the velocity eps - x0); only the
stochastic (DDPM) posterior and the noisy latents of a trajectory differ between the processes.

The model is only ever seen through a *denoiser* ``denoise(x, sigma) -> x0_hat`` (ComfyUI's
``model_sampling`` turns eps or v predictions into that), which keeps this module free of any
parameterisation.

References
- DDIM: Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, Eq. 12.
- DDPM posterior: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020, Eq. 6-7.
- Sigma-space ODE: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
  Models", 2022, Eq. 1-3.
- Edit-friendly DDPM inversion: Huberman-Spiegelglas, Kulikov, Michaeli, "An Edit Friendly
  DDPM Noise Space: Inversion and Manipulations", CVPR 2024, Eq. 4-5.
- Rectified flow: Liu, Gong, Liu, "Flow Straight and Fast", ICLR 2023, Eq. 1; Esser et al.,
  "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3), 2024, Eq. 2-3.
- Noise regularisation: Parmar et al., "Zero-shot Image-to-Image Translation" (pix2pix-zero),
  SIGGRAPH 2023, Sec. 3.1 and the official ``src/utils/ddim_inv.py``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x, sigma) -> x0_hat``; ``sigma`` has shape ``[batch]``."""

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``callback(step_index, x, x0_hat)`` after each step (progress bars, interruption)."""

DDIM = "ddim"
EDIT_FRIENDLY_DDPM = "edit_friendly_ddpm"
MODES = (DDIM, EDIT_FRIENDLY_DDPM)

VE = "variance_exploding"
"""x = x0 + sigma * eps: ComfyUI's sigma space for eps- and v-prediction models (SD1.x, SD2.x, SDXL)."""
FLOW = "rectified_flow"
"""x = (1 - sigma) x0 + sigma * eps, sigma in [0, 1]: ComfyUI's CONST models (FLUX.1, SD3.x)."""
PROCESSES = (VE, FLOW)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A sigma (scalar or ``[batch]``) shaped to broadcast over ``like``. A Python number stays one:
    it broadcasts as it is, where a tensor made of it would be a (blocking) upload to the device."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    value = value.to(dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape[:1] + (1,) * (like.ndim - 1))


def predicted_noise(x: torch.Tensor, x0_hat: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """eps_hat = (x - D(x; sigma)) / sigma  (Karras et al. 2022, Eq. 3; x = x0 + sigma * eps)."""
    return (x - x0_hat) / _per_sample(sigma, x)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Deterministic DDIM step (Song et al. 2021, Eq. 12 with eta = 0) in sigma space.

    x_to = x0_hat + sigma_to * eps with x0_hat = x - sigma_from * eps, i.e.
    x_to = x + (sigma_to - sigma_from) * eps. Runs both ways: sigma_to > sigma_from inverts.
    """
    return x + (sigma_to - sigma_from) * eps


def ddpm_posterior(
    x_t: torch.Tensor, x0_hat: torch.Tensor, sigma_t: float, sigma_s: float
) -> tuple[torch.Tensor, float]:
    """Mean and standard deviation of q(x_s | x_t, x0_hat), s < t (Ho et al. 2020, Eq. 6-7).

    In sigma space: std = sigma_s * sqrt(sigma_t^2 - sigma_s^2) / sigma_t and
    mean = x0_hat + (x_t - x0_hat) * sqrt(sigma_s^2 - std^2) / sigma_t
         = x0_hat + (x_t - x0_hat) * sigma_s^2 / sigma_t^2,
    which is the DDPM (eta = 1) step that ``edit_friendly`` inversion and replay both use.
    """
    if sigma_s <= 0.0:
        return x0_hat, 0.0
    variance = sigma_s**2 * (sigma_t**2 - sigma_s**2) / sigma_t**2
    std = max(variance, 0.0) ** 0.5
    return x0_hat + (x_t - x0_hat) * (sigma_s**2 / sigma_t**2), std


def flow_posterior(
    x_t: torch.Tensor, x0_hat: torch.Tensor, sigma_t: float, sigma_s: float
) -> tuple[torch.Tensor, float]:
    """Mean and standard deviation of q(x_s | x_t, x0_hat), s < t, for the rectified-flow process
    x_s = (1 - s) x0 + s eps: the DDPM posterior (Ho et al. 2020, Eq. 6-7) of the same Gaussian
    process, written in flow coordinates so that t = 1 (pure noise) needs no division by 1 - t.

    With eps_hat = (x_t - (1 - t) x0_hat) / t (the noise the model's x0 implies) and
    r = s (1 - t) / ((1 - s) t) (the ratio of the VE levels sigma_s / sigma_t):
    mean = (1 - s) x0_hat + s r eps_hat and std = s sqrt(1 - r^2). At t = 1, r = 0: the mean is
    (1 - s) x0_hat and the step draws fresh noise of std s; at s = 0 it is x0_hat with std 0.
    """
    if sigma_s <= 0.0:
        return x0_hat, 0.0
    ratio = sigma_s * (1.0 - sigma_t) / ((1.0 - sigma_s) * sigma_t)
    eps_hat = (x_t - (1.0 - sigma_t) * x0_hat) / sigma_t
    mean = (1.0 - sigma_s) * x0_hat + (sigma_s * ratio) * eps_hat
    return mean, sigma_s * max(1.0 - ratio**2, 0.0) ** 0.5


def posterior(
    x_t: torch.Tensor, x0_hat: torch.Tensor, sigma_t: float, sigma_s: float, process: str = VE
) -> tuple[torch.Tensor, float]:
    """The DDPM posterior of ``process`` (:func:`ddpm_posterior` or :func:`flow_posterior`)."""
    if process == FLOW:
        return flow_posterior(x_t, x0_hat, sigma_t, sigma_s)
    return ddpm_posterior(x_t, x0_hat, sigma_t, sigma_s)


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: float, process: str = VE) -> torch.Tensor:
    """x_sigma of the forward process: ``x0 + sigma * noise`` (VE) or ``(1 - sigma) x0 + sigma * noise``
    (FLOW; Liu et al. 2023, Eq. 1)."""
    if process == FLOW:
        return (1.0 - sigma) * x0 + sigma * noise
    return x0 + sigma * noise


def edit_friendly_noise_map(x_s: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """z_t = (x_{t-1} - mu_t(x_t)) / sigma_t  (Huberman-Spiegelglas et al. 2024, Eq. 5).

    On the last step (std = 0, towards sigma = 0) the DDPM step has no noise; the raw residual
    ``x_s - mean`` is returned instead, so that replaying the inversion lands exactly on the
    input latent (``replay_step`` adds it back unscaled).
    """
    if std == 0.0:
        return x_s - mean
    return (x_s - mean) / std


def sample_edit_friendly_trajectory(
    x0: torch.Tensor, sigmas: list[float], generator: torch.Generator, process: str = VE
) -> list[torch.Tensor]:
    """x_t = x0 + sigma_t * n_t with n_t ~ N(0, I) drawn independently for every t
    (Huberman-Spiegelglas et al. 2024, Eq. 4; the official ``sample_xts_from_x0``); for the FLOW
    process x_t = (1 - sigma_t) x0 + sigma_t n_t.

    ``sigmas`` is the descending schedule without the final 0. Noise is drawn on the CPU in
    schedule order, so a seed gives the same trajectory on every device.
    """
    out = []
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32, device="cpu")
        out.append(noisy_latent(x0, noise.to(device=x0.device, dtype=x0.dtype), sigma, process))
    return out


# --- pix2pix-zero noise regularisation -------------------------------------------------------


def auto_correlation_loss(noise: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Pairwise auto-correlation penalty of pix2pix-zero (Parmar et al. 2023, Sec. 3.1, L_auto).

    For each sample and channel, over a pyramid made by 2x2 average pooling until the side is
    at most 8: sum of mean(n * roll(n, d, H))^2 + mean(n * roll(n, d, W))^2 with one random
    shift d in [1, H/2) per level, drawn as the official code does since its commit ec33392
    ("random roll to start with offset 1", ``randrange(1, H // 2)``): a shift of 0 would turn the
    term into a penalty on the variance. A level narrower than 4 has no such shift and adds nothing
    (the official call fails there).
    """
    loss = noise.new_zeros(())
    for sample in noise:
        for channel in sample:
            level = channel[None, None]
            while True:
                if level.shape[2] // 2 > 1:
                    shift = rng.randrange(1, level.shape[2] // 2)
                    loss = loss + (level * torch.roll(level, shifts=shift, dims=2)).mean() ** 2
                    loss = loss + (level * torch.roll(level, shifts=shift, dims=3)).mean() ** 2
                if level.shape[2] <= 8:
                    break
                level = F.avg_pool2d(level, kernel_size=2)
    return loss


def kl_divergence_loss(noise: torch.Tensor) -> torch.Tensor:
    """KL penalty of pix2pix-zero (Sec. 3.1, L_KL): var + mean^2 - 1 - log(var + 1e-7),
    per sample over all its elements, summed over the batch."""
    flat = noise.flatten(1)
    mean, var = flat.mean(dim=1), flat.var(dim=1)
    return (var + mean**2 - 1 - torch.log(var + 1e-7)).sum()


@dataclass(frozen=True)
class NoiseRegularization:
    """pix2pix-zero's defaults: lambda_ac = lambda_kl = 20, 5 outer steps, 5 rolls."""

    lambda_ac: float = 20.0
    lambda_kl: float = 20.0
    num_reg_steps: int = 5
    num_ac_rolls: int = 5


def regularize_noise(
    eps: torch.Tensor, settings: NoiseRegularization, rng: random.Random
) -> torch.Tensor:
    """Gradient steps that push a predicted noise towards white Gaussian noise (pix2pix-zero,
    Sec. 3.1; official loop in ``ddim_inv.py``): ``num_reg_steps`` times, ``num_ac_rolls``
    steps e <- e - lambda_ac * grad(L_auto) / num_ac_rolls, then e <- e - lambda_kl * grad(L_KL).

    Works inside ``torch.inference_mode()``: the tensors it differentiates are made here.
    """
    with torch.inference_mode(False), torch.enable_grad():
        e = eps.detach().clone().float()
        for _ in range(settings.num_reg_steps):
            if settings.lambda_ac > 0:
                for _ in range(settings.num_ac_rolls):
                    var = e.detach().clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(auto_correlation_loss(var, rng), var)
                    e = e - settings.lambda_ac * grad / settings.num_ac_rolls
            if settings.lambda_kl > 0:
                var = e.detach().clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_divergence_loss(var), var)
                e = e - settings.lambda_kl * grad
            e = e.detach()
    return e.to(eps.dtype).clone()


# --- the inversion record --------------------------------------------------------------------


@dataclass
class Inversion:
    """What DDIMInvert hands to downstream nodes.

    ``sigmas`` is the full descending schedule ``[s_0 > ... > s_{N-1}, 0]``; the inversion covers
    steps ``start_step .. N-1``. ``latents[k]`` is the latent at ``sigmas[start_step + k]``
    (k = 0 is where denoising starts; the last entry is the clean input at sigma 0).
    ``noise_maps[k]`` (edit-friendly mode only) drives the step from ``sigmas[start_step + k]``
    to ``sigmas[start_step + k + 1]``. Latents are in the sampler's internal space (after the
    model's ``process_latent_in``). ``model_family`` names the latent format the inversion was
    made with, so another family's sampler refuses it; ``cfg`` is the guidance it was made with;
    ``process`` is the model's diffusion process (``VE`` or ``FLOW``), which the replay steps follow.
    """

    mode: str
    sigmas: torch.Tensor
    start_step: int
    latents: list[torch.Tensor]
    noise_maps: Optional[list[torch.Tensor]] = None
    model_family: str = ""
    cfg: float = 1.0
    process: str = VE

    @property
    def remaining_sigmas(self) -> torch.Tensor:
        return self.sigmas[self.start_step :]

    def __deepcopy__(self, memo):  # immutable after creation: share it, never copy big tensors
        return self


def _inversion_noise(
    denoise: Denoiser, x_in: torch.Tensor, level: float,
    regularization: Optional[NoiseRegularization], rng: Optional[random.Random],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_hat, x0_hat) of the model at ``level`` on ``x_in`` (Karras et al. 2022, Eq. 3), eps
    regularised as in pix2pix-zero when asked."""
    x0_hat = denoise(x_in, torch.full((x_in.shape[0],), level, dtype=x_in.dtype, device=x_in.device))
    eps = predicted_noise(x_in, x0_hat, level)
    if regularization is not None:
        eps = regularize_noise(eps, regularization, rng or random.Random(0))
    return eps, x0_hat


def invert_ddim(
    denoise: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    start_step: int,
    input_scale: Callable[[float], float],
    regularization: Optional[NoiseRegularization] = None,
    rng: Optional[random.Random] = None,
    callback: Optional[StepCallback] = None,
) -> list[torch.Tensor]:
    """DDIM inversion from sigma = 0 up to ``sigmas[start_step]`` (Song et al. 2021, Eq. 12 run
    backwards; Mokady et al. 2023, Eq. 4).

    As in diffusers' ``DDIMInverseScheduler`` and null-text inversion, the step from level a to
    a higher level b evaluates the model at level b on the current latent (the latent the UNet
    sees is kept, only its level label changes), which is the eps the DDIM step b -> a uses when
    sampling back. ``input_scale(sigma)`` is the model's input scaling c_in(sigma) (``1 /
    sqrt(sigma^2 + 1)`` for SD), used to relabel the latent. Optionally each eps is regularised
    as in pix2pix-zero. Returns the latents from ``sigmas[start_step]`` down to the clean input.
    """
    levels = sigmas[start_step:].flip(0).tolist()  # 0, s_{N-1}, ..., s_start
    x = x0
    trajectory = [x0]
    for i, (sigma_from, sigma_to) in enumerate(zip(levels[:-1], levels[1:])):
        x_in = x * (input_scale(sigma_from) / input_scale(sigma_to))
        eps, x0_hat = _inversion_noise(denoise, x_in, sigma_to, regularization, rng)
        x = ddim_step(x, eps, sigma_from, sigma_to)
        trajectory.append(x)
        if callback is not None:
            callback(i, x, x0_hat)
    return trajectory[::-1]


DIFFUSERS = "diffusers"
PIX2PIX_ZERO = "pix2pix_zero"
CONVENTIONS = (DIFFUSERS, PIX2PIX_ZERO)


def previous_training_level(training_sigmas: torch.Tensor) -> Callable[[float], float]:
    """sigma(t - 1) for a level sigma(t) of the model's training timesteps (``training_sigmas`` =
    sigma(0..T-1), ascending). pix2pix-zero's scheduler keeps its latents one timestep below the
    label it gives the UNet (``steps_offset = 1``: labels t, states at alphas_cumprod[t - 1])."""
    table = training_sigmas.double()

    def previous(sigma: float) -> float:
        index = int((table - sigma).abs().argmin())
        if not math.isclose(float(table[index]), sigma, rel_tol=1e-4) or index == 0:
            raise ValueError(f"sigma {sigma:.6g} is not a training timestep above 0 of the model")
        return float(table[index - 1])

    return previous


def invert_ddim_pix2pix_zero(
    denoise: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    start_step: int,
    input_scale: Callable[[float], float],
    previous_level: Callable[[float], float],
    regularization: Optional[NoiseRegularization] = None,
    rng: Optional[random.Random] = None,
    callback: Optional[StepCallback] = None,
) -> list[torch.Tensor]:
    """DDIM inversion in pix2pix-zero's convention (official ``src/utils/ddim_inv.py`` with its
    ``DDIMInverseScheduler``, ``steps_offset = 1``; Parmar et al. 2023, Sec. 3.1).

    The sampling schedule's levels are UNet labels t_{N-1} < ... < t_0 (``ddim_uniform``: 1, 21, ...,
    981 at 50 steps). The inversion's state for label t is the VP latent at alphas_cumprod[t - 1]:
    the clean latent is read as the state of the second-lowest label (at 50 steps: as the latent at
    alphas_cumprod[20]; the lowest label is never stepped from), and each step from label t_a to the
    next label t_b predicts eps with the UNet at label t_a on the state at t_a - 1, then moves the
    state to t_b - 1 by the DDIM update (Song et al. 2021, Eq. 12): at 50 steps 48 steps, labels 21
    .. 961, ending at alphas_cumprod[980]. The sampler reads each state at its label (the VP latent
    unchanged), as the official edit pass reads x_T at timestep 981.

    In sigma space (x = z / c_in(sigma)) with ``previous_level(s(t)) = s(t - 1)``: the UNet input is
    the state relabelled from s(t_a - 1) to s(t_a), and x += (s(t_b - 1) - s(t_a - 1)) * eps.
    Returns latents aligned with ``sigmas[start_step:]`` (each state read at its label; the lowest
    label holds the clean latent read there) followed by the clean input, as :func:`invert_ddim`.
    """
    labels = sigmas[start_step:].flip(0).tolist()[1:]  # s(t_{N-1}) < ... < s(t_start), without the 0
    if not labels:
        return [x0]
    states = [previous_level(level) for level in labels]
    readouts = [x0 / input_scale(labels[0])]  # the lowest label: the clean latent read there
    x = x0 / input_scale(states[1]) if len(labels) > 1 else x0
    for i in range(1, len(labels) - 1):
        label, state, next_state = labels[i], states[i], states[i + 1]
        readouts.append(x * (input_scale(state) / input_scale(label)))
        eps, x0_hat = _inversion_noise(denoise, readouts[-1], label, regularization, rng)
        x = ddim_step(x, eps, state, next_state)
        if callback is not None:
            callback(i - 1, x, x0_hat)
    if len(labels) > 1:
        readouts.append(x * (input_scale(states[-1]) / input_scale(labels[-1])))
    return readouts[::-1] + [x0]


def invert_edit_friendly(
    denoise: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    start_step: int,
    generator: torch.Generator,
    callback: Optional[StepCallback] = None,
    process: str = VE,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, Alg. 1).

    Samples x_t for every level of the full schedule independently (Eq. 4; all levels are drawn
    so that ``start_step`` does not change the random stream), then for each step from
    ``start_step`` on extracts the noise map that makes the DDPM step hit the sampled x_{t-1}
    exactly (Eq. 5). Returns ``(latents, noise_maps)`` as stored in :class:`Inversion`. For the
    FLOW process the trajectory and the posterior are the rectified-flow ones (:func:`noisy_latent`,
    :func:`flow_posterior`): the exact-replay counterpart of edit-friendly inversion for flow models.
    """
    levels = sigmas.tolist()
    noisy = sample_edit_friendly_trajectory(x0, levels[:-1], generator, process)
    latents = noisy[start_step:] + [x0]
    noise_maps = []
    for i in range(start_step, len(levels) - 1):
        x_t, x_s = noisy[i], (noisy[i + 1] if i + 1 < len(noisy) else x0)
        sigma = torch.full((x0.shape[0],), levels[i], dtype=x0.dtype, device=x0.device)
        x0_hat = denoise(x_t, sigma)
        mean, std = posterior(x_t, x0_hat, levels[i], levels[i + 1], process)
        noise_maps.append(edit_friendly_noise_map(x_s, mean, std))
        if callback is not None:
            callback(i - start_step, x_t, x0_hat)
    return latents, noise_maps


def replay_step(
    x: torch.Tensor, x0_hat: torch.Tensor, sigma_t: float, sigma_s: float,
    noise_map: Optional[torch.Tensor], exact_final_step: bool = True, process: str = VE,
) -> torch.Tensor:
    """One denoising step of an inversion replay.

    Without noise maps: the DDIM step (Song et al. 2021, Eq. 12, eta = 0; for the FLOW process the
    rectified-flow Euler step, see the module docstring). With noise maps: the edit-friendly DDPM
    step x_{t-1} = mu_t(x_t) + sigma_t z_t (Huberman-Spiegelglas et al. 2024, Eq. 3) with the
    process's posterior; on the final step to sigma = 0 the stored residual is added when
    ``exact_final_step`` (exact reconstruction), and dropped otherwise (the official code sets the
    last noise map to zero, which ends on the model's x0 prediction).
    """
    if noise_map is None:
        return ddim_step(x, predicted_noise(x, x0_hat, sigma_t), sigma_t, sigma_s)
    mean, std = posterior(x, x0_hat, sigma_t, sigma_s, process)
    if std == 0.0:
        return mean + noise_map if exact_final_step else mean
    return mean + std * noise_map
