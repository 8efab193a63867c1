"""Everything this pack touches in ComfyUI, in one place.

The node modules and ``core`` never import ``comfy`` themselves: when a ComfyUI update moves a
symbol, this file is the one edit. Only documented patch points are used (``ModelPatcher.clone``
and its ``set_model_*`` / wrapper APIs, ``KSAMPLER`` sampler functions, ``comfy.sample``), all of
which exist unchanged in ComfyUI 0.3.75 and in current ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import ComfyExtension, io  # noqa: F401  (re-exported for the node modules)

SCHEDULER_NAMES: list[str] = list(comfy.samplers.SCHEDULER_NAMES)
ROOT_CATEGORY = "Exemplar Edit"


class InputError(ValueError):
    """A bad node input. The message names the input and says how to fix it."""


def model_family(model) -> str:
    """A name for the latent space a model works in (e.g. ``SD15``, ``SDXL``)."""
    return type(model.model.latent_format).__name__


def model_sampling(model):
    """The model's sampling object, with object patches (e.g. ModelSamplingDiscrete) applied."""
    return model.get_model_object("model_sampling")


def check_sigma_space_model(model, input_name: str = "model") -> None:
    """Inversion math here is written for eps / v prediction models (SD1.x, SD2.x, SDXL)."""
    sampling = model_sampling(model)
    if not isinstance(sampling, comfy.model_sampling.EPS):
        raise InputError(
            f"{input_name}: this model predicts with {type(sampling).__name__}; inversion supports "
            "eps- and v-prediction models (SD1.x, SD2.x, SDXL). Use one of those checkpoints."
        )


def schedule(model, scheduler: str, steps: int) -> torch.Tensor:
    """The descending sigma schedule ``[s_0, ..., 0]`` ComfyUI samples with for these settings.

    Like the stock samplers, it is used as the scheduler makes it: ``ddim_uniform`` gives a step
    or two more than ``steps`` when 1000 is not a multiple of it.
    """
    if scheduler not in SCHEDULER_NAMES:
        raise InputError(f"scheduler: unknown scheduler {scheduler!r}; choose one of {SCHEDULER_NAMES}")
    return comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps).cpu().float()


def input_scale(model) -> Callable[[float], float]:
    """c_in(sigma): how the model scales a latent at level sigma before the UNet sees it."""
    sampling = model_sampling(model)

    def c_in(sigma: float) -> float:
        return float(sampling.calculate_input(torch.tensor([sigma]), torch.ones(1))[0])

    return c_in


def check_interrupted() -> None:
    """Raises ComfyUI's interruption exception when the user pressed cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def latent_channels(model) -> int:
    return int(model.model.latent_format.latent_channels)


# --- running a custom sampler loop through ComfyUI ---------------------------------------------

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OnStep = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class LoopContext:
    """What a sampler loop may know about the model it runs under."""

    model_family: str


SamplerLoop = Callable[[Denoise, torch.Tensor, torch.Tensor, LoopContext, OnStep], torch.Tensor]
"""``loop(denoise, x, sigmas, context, on_step) -> x``, all in the sampler's internal latent space."""


def make_sampler(loop: SamplerLoop) -> Any:
    """A SAMPLER (for SamplerCustom / SamplerCustomAdvanced) that runs ``loop``.

    ``denoise(x, sigma)`` is ComfyUI's guided x0 prediction: CFG, the model's patches and
    wrappers, ControlNets and LoRAs all apply as with any stock sampler.
    """

    @torch.no_grad()
    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        base_model = model.inner_model.inner_model
        context = LoopContext(model_family=type(base_model.latent_format).__name__)

        def denoise(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return model(x_in, sigma, **extra_args)

        def on_step(i: int, x_now: torch.Tensor, x0_hat: torch.Tensor) -> None:
            check_interrupted()
            if callback is not None:
                callback({"x": x_now, "i": i, "sigma": sigmas[min(i, len(sigmas) - 1)],
                          "sigma_hat": sigmas[min(i, len(sigmas) - 1)], "denoised": x0_hat})

        return loop(denoise, x, sigmas, context, on_step)

    return comfy.samplers.KSAMPLER(sampler_function)


def run_sampler(
    model, sampler, sigmas: torch.Tensor, positive, negative, cfg: float, latent: dict, seed: int,
    progress_steps: Optional[int] = None,
) -> torch.Tensor:
    """Runs ``sampler`` like SamplerCustom with add_noise off; returns the output latent samples.

    The progress bar and latent previews are ComfyUI's own; the interrupt button is honoured.
    """
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
    steps = progress_steps if progress_steps is not None else len(sigmas) - 1
    callback = latent_preview.prepare_callback(model, steps)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    return comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, samples,
        noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar, seed=seed,
    )
