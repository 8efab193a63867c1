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
import comfy.patcher_extension
import comfy.sample
import comfy.sampler_helpers
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
    step_hooks: tuple = ()

    def after_step(self, step_index: int, x: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """Runs the model's step hooks (``add_step_hook``) on the latent a step produced."""
        for hook in self.step_hooks:
            x = hook(step_index, x, sigma_next)
        return x


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
        transformer_options = extra_args.get("model_options", {}).get("transformer_options", {})
        context = LoopContext(model_family=type(base_model.latent_format).__name__,
                              step_hooks=tuple(transformer_options.get(STEP_HOOKS_KEY, ())))

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


# --- running the UNet and the text encoder with gradients, on clones ----------------------------
#
# ComfyUI executes every node under ``torch.inference_mode()``: loaded weights are inference
# tensors, which autograd refuses to save, and its CLIP layers add in place (``x += ...``) onto
# tensors their LayerNorms saved. The recipe (research notes, comfyui_host.md §2, after
# ``comfy_extras/nodes_train.py``): identity weight wrappers on a *clone*, which make
# ``comfy.ops.cast_bias_weight`` hand each forward a fresh, ordinary copy of every weight, and, for
# the text encoder, an object patch on each LayerNorm's ``forward`` that normalises a copy of its
# input. Both are documented patch points on the clone; the shared model is never changed.


def _identity_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight


def _add_identity_weight_wrappers(patcher) -> None:
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        for param in ("weight", "bias"):
            if getattr(module, param, None) is not None:
                patcher.add_weight_wrapper(f"{name}.{param}" if name else param, _identity_weight)


class _NormalizeCopy:
    """``forward`` for a LayerNorm that normalises a copy of its input, so the caller's later
    in-place ``x += ...`` does not clobber the tensor autograd saved."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return type(self.module).forward(self.module, x.clone(), *args, **kwargs)

    def __deepcopy__(self, memo):  # holds a module of the shared model: never copy it
        return self


def differentiable_model(model):
    """A clone of a MODEL whose UNet builds an autograd graph (use it inside ``gradient_mode``).

    The loaded model and its weights are untouched; the clone costs one weight copy per forward.
    """
    clone = model.clone()
    _add_identity_weight_wrappers(clone)
    return clone


def differentiable_clip(clip):
    """A clone of a CLIP whose text encoder builds an autograd graph back to its input embeddings."""
    clone = clip.clone()
    _add_identity_weight_wrappers(clone.patcher)
    for name, module in clone.patcher.model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            clone.patcher.add_object_patch(f"{name}.forward", _NormalizeCopy(module))
    return clone


class gradient_mode:
    """``with host.gradient_mode():`` autograd on, inside ComfyUI's inference-mode execution.

    Tensors made before (images, latents, conditioning) are inference tensors: ``.clone()`` them
    inside the block before they take part in a graph that needs them saved.
    """

    def __enter__(self):
        self._inference = torch.inference_mode(False)
        self._grad = torch.enable_grad()
        self._inference.__enter__()
        self._grad.__enter__()
        return self

    def __exit__(self, *exc):
        self._grad.__exit__(*exc)
        self._inference.__exit__(*exc)
        return False


class model_session:
    """``with host.model_session(model, shape):`` the model loaded with its patches and made the
    active patcher, as a sampler does around its loop, for direct ``denoise_with`` calls."""

    def __init__(self, model, latent_shape: tuple[int, ...]):
        self.model = model
        self.latent_shape = latent_shape

    def __enter__(self):
        _, _, self._loaded = comfy.sampler_helpers.prepare_sampling(
            self.model, self.latent_shape, {}, self.model.model_options)
        self.model.pre_run()
        return self

    def __exit__(self, *exc):
        try:
            self.model.cleanup()
        finally:
            comfy.sampler_helpers.cleanup_models({}, self._loaded)
        return False


def compute_device() -> torch.device:
    return comfy.model_management.get_torch_device()


def prepare_conditioning(model, conditioning: list, x: torch.Tensor) -> list:
    """A CONDITIONING made ready for ``denoise_with`` at latents shaped like ``x``, exactly as a
    sampler prepares it (model-specific extra conds such as SDXL's size embedding included).
    Differentiable with respect to the conditioning tensors."""
    conds = comfy.samplers.process_conds(
        model.model, x, {"positive": comfy.sampler_helpers.convert_cond(conditioning)}, x.device,
        latent_image=x, seed=0,
    )
    return conds["positive"]


def denoise_with(model, x: torch.Tensor, sigma: torch.Tensor, prepared: list) -> torch.Tensor:
    """D(x; sigma): the model's x0 prediction under one prepared conditioning, as the sampler
    computes it (patches and attention hooks on ``model`` apply; no CFG).

    ``x`` is in sigma space (``x0 + sigma * noise``) and ``sigma`` has shape ``[batch]``.
    Differentiable when ``model`` is a ``differentiable_model`` and this runs in ``gradient_mode``.
    """
    return comfy.samplers.calc_cond_batch(model.model, [prepared], x, sigma, model.model_options)[0]


def output_scale(model, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """dD/d(output): how the model's raw output (eps, v, ...) enters its x0 prediction.

    Every ComfyUI parameterisation is affine in the network output, D = a(x, sigma) + b(sigma) *
    output, so ``(D_hat - x0) / b`` is the error in the model's own prediction target
    (eps - eps_hat for eps models, v - v_hat for v models): the quantity it was trained on.
    """
    sampling = model_sampling(model)
    sigma = sigma.to(like.device, like.dtype)
    zero = torch.zeros_like(like)
    return sampling.calculate_denoised(sigma, torch.ones_like(like), zero) - sampling.calculate_denoised(sigma, zero, zero)


# --- patch points used by attention-editing methods ---------------------------------------------

STEP_HOOKS_KEY = "exemplar_edit_step_hooks"


def add_apply_model_wrapper(model, key: str, wrapper: Callable) -> None:
    """Wraps ``BaseModel.apply_model`` on the clone ``model``:
    ``wrapper(executor, x, sigma, c_concat, c_crossattn, control, transformer_options, **extra_conds)``."""
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key, wrapper)


def add_post_cfg_function(model, function: Callable) -> None:
    """``function(args) -> denoised`` after CFG; args carry cond_scale, cond/uncond_denoised, sigma."""
    model.set_model_sampler_post_cfg_function(function)


def add_step_hook(model, hook: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``hook(step_index, x_next, sigma_next) -> x_next`` runs after every step of the pack's own
    samplers (Inversion Replay Sampler), e.g. to align the colour statistics of the new latent."""
    options = model.model_options.setdefault("transformer_options", {})
    options[STEP_HOOKS_KEY] = list(options.get(STEP_HOOKS_KEY, [])) + [hook]


def decoder_attention_downscales(model) -> dict[int, int]:
    """``{output_block_index: downscale}`` for the UNet decoder blocks that have attention, where
    downscale is latent size / token grid size (1 = full latent resolution)."""
    config = model.model.model_config.unet_config
    channel_mult = list(config["channel_mult"])
    num_res_blocks = config["num_res_blocks"]
    if isinstance(num_res_blocks, int):
        num_res_blocks = [num_res_blocks] * len(channel_mult)
    depth_output = list(config.get("transformer_depth_output") or [])
    levels = []
    for level in reversed(range(len(channel_mult))):
        levels += [level] * (num_res_blocks[level] + 1)
    depths = list(reversed(depth_output)) if depth_output else [1] * len(levels)
    return {index: 2 ** level for index, (level, depth) in enumerate(zip(levels, depths)) if depth > 0}


