"""Model facts: what kind of model a MODEL is, its schedule and its UNet layout."""
from __future__ import annotations

from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.samplers

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


FLOW_PREDICTION = "CONST"
"""ComfyUI's rectified-flow parameterisation (FLUX.1, SD3.x, ...): x = (1 - sigma) x0 + sigma eps,
the network predicting the velocity eps - x0."""

SUPPORTED_PREDICTIONS = ("EPS", "V_PREDICTION")
"""The parameterisations of the UNet models (SD1.x, SD2.x, SDXL) the pack's math is written for;
rectified-flow models (``FLOW_PREDICTION``) are accepted where a node says so."""


def prediction_type(model) -> str:
    """The name of the model's prediction class (``EPS``, ``V_PREDICTION``, ``CONST``, ``X0``, ``EDM``, ...).

    ComfyUI builds a model's sampling object as ``class ModelSampling(<schedule>, <prediction>)``;
    every prediction class but ``CONST`` derives from ``EPS`` (``V_PREDICTION``, ``EDM(V_PREDICTION)``,
    ``X0``, ``IMG_TO_IMG``, ``LCM``...), so an ``isinstance`` test would accept them all. The first
    class in the method resolution order below the object's own that is an ``EPS`` (or ``CONST``) is
    its prediction."""
    sampling = model_sampling(model)
    for cls in type(sampling).__mro__:
        if cls is not type(sampling) and (issubclass(cls, comfy.model_sampling.EPS) or
                                          cls is comfy.model_sampling.CONST):
            return cls.__name__
    return type(sampling).__name__


def is_flow_model(model) -> bool:
    """Whether the model is a rectified-flow model (CONST sampling: FLUX.1 and its family, SD3.x)."""
    return prediction_type(model) == FLOW_PREDICTION


def check_sigma_space_model(model, input_name: str = "model", flows: bool = False) -> None:
    """The pack's math is written for eps- and v-prediction models (SD1.x, SD2.x, SDXL) and, where the
    node supports them (``flows``), rectified-flow models (FLUX.1 family)."""
    kind = prediction_type(model)
    if kind in SUPPORTED_PREDICTIONS or (flows and kind == FLOW_PREDICTION):
        return
    if kind == FLOW_PREDICTION:
        raise InputError(
            f"{input_name}: this is a rectified-flow model (FLUX-class, {model_family(model)}); this node supports "
            "eps- and v-prediction UNet models (SD1.x, SD2.x, SDXL) so far. Use one of those checkpoints."
        )
    supported = "eps- and v-prediction models (SD1.x, SD2.x, SDXL)" + (
        " and rectified-flow models (FLUX.1 family)" if flows else "")
    raise InputError(
        f"{input_name}: this model predicts with {kind}; this node supports {supported}. Use one of those "
        "checkpoints, or remove the ModelSamplingDiscrete/ModelSamplingContinuousEDM node that switched it to "
        "another prediction type."
    )


def has_guidance_input(model) -> bool:
    """Whether the model takes a distilled-guidance value (FLUX.1-dev class ``guidance_embed``)."""
    return bool(model.model.model_config.unet_config.get("guidance_embed", False))


def with_guidance(conditioning: list, guidance: float) -> list:
    """A copy of a CONDITIONING whose entries carry ``guidance`` (what ComfyUI's FluxGuidance node sets)."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"guidance": guidance})


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


def training_sigmas(model) -> torch.Tensor:
    """sigma(t) for the model's training timesteps t = 0..T-1 (ascending, T = 1000 for SD)."""
    return model_sampling(model).sigmas.detach().float().cpu().clone()


def check_interrupted() -> None:
    """Raises ComfyUI's interruption exception when the user pressed cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def compute_device() -> torch.device:
    return comfy.model_management.get_torch_device()


def latent_channels(model) -> int:
    return int(model.model.latent_format.latent_channels)


def context_width(model) -> Optional[int]:
    """Width of the text conditioning the model attends to (768 SD1.x, 2048 SDXL; a FLUX-class DiT's
    ``context_in_dim``: 4096 T5-XXL for FLUX.1, 768 for the CLIP-L-conditioned test and toy models)."""
    config = model.model.model_config.unet_config
    width = config.get("context_dim", config.get("context_in_dim"))
    return int(width) if width is not None else None


def uses_pooled_text(model) -> bool:
    """Whether the model also takes a pooled text embedding (SDXL's ``y`` vector, FLUX's ``vector_in``)."""
    config = model.model.model_config.unet_config
    return config.get("adm_in_channels") is not None or config.get("vec_in_dim") is not None


def pooled_vector_width(model) -> Optional[int]:
    """Width of the pooled text vector a FLUX-class model reads through ``vector_in`` (CLIP-L's 768;
    it modulates every block), None for models without one (SD UNets; SDXL's pooled text enters
    through ``adm_in_channels``, see ``uses_pooled_text``)."""
    width = model.model.model_config.unet_config.get("vec_in_dim")
    return int(width) if width is not None else None


def attention_block_ids(model) -> list[tuple[str, int]]:
    """The UNet blocks holding transformer (attention) layers, as the ``(block_name, number)`` keys
    ``set_model_attn*_replace`` takes: ``("input", i)``, ``("middle", 0)``, ``("output", i)``."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model.model.diffusion_model
    ids: list[tuple[str, int]] = []
    for name, blocks in (("input", unet.input_blocks), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            if any(isinstance(m, SpatialTransformer) for m in block.modules()):
                ids.append((name, i))
    if any(isinstance(m, SpatialTransformer) for m in unet.middle_block.modules()):
        ids.append(("middle", 0))
    return ids


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


def decoder_level_starts(model) -> frozenset[int]:
    """The output block indices that open a decoder level (SD1.5: 0, 3, 6, 9): where the backbone
    ``h`` of an ``output_block_patch`` is the input of a diffusers up block."""
    config = model.model.model_config.unet_config
    num_res_blocks = config["num_res_blocks"]
    levels = len(config["channel_mult"])
    if isinstance(num_res_blocks, int):
        num_res_blocks = [num_res_blocks] * levels
    starts, index = [], 0
    for level in reversed(range(levels)):
        starts.append(index)
        index += num_res_blocks[level] + 1
    return frozenset(starts)


def model_channels(model) -> int:
    """The UNet's base channel count (``model_channels``: 320 for SD1.5 and SDXL)."""
    return int(model.model.model_config.unet_config["model_channels"])
