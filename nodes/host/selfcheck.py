"""The host conventions the pack relies on, checked once when the pack loads.

A ComfyUI update that moves one of them is reported in the ComfyUI log by name at start-up,
instead of surfacing as a KeyError in the middle of sampling. ``problems()`` returns the list.
"""
from __future__ import annotations

import inspect
import logging
import re
from typing import Callable, Iterable, Optional

LOG = logging.getLogger("exemplar_edit")

TRANSFORMER_OPTION_KEYS = {
    # key the pack's attention patches and wrappers read -> the host module that sets it
    "block": "comfy.ldm.modules.diffusionmodules.openaimodel",
    "original_shape": "comfy.ldm.modules.diffusionmodules.openaimodel",
    "block_index": "comfy.ldm.modules.attention",
    "activations_shape": "comfy.ldm.modules.attention",
    "n_heads": "comfy.ldm.modules.attention",
    "cond_or_uncond": "comfy.samplers",
    "sigmas": "comfy.samplers",
    "sample_sigmas": "comfy.samplers",
}

SAMPLER_CALLBACK_FIELDS = {"x", "i", "denoised", "sigma", "sigma_hat"}
"""What the pack's sampler loops hand a k-diffusion style callback (``host.make_sampler``)."""

WRAPPER_TYPES = ("OUTER_SAMPLE", "PREPARE_SAMPLING", "SAMPLER_SAMPLE", "PREDICT_NOISE", "APPLY_MODEL")

PATCHER_METHODS = ("clone", "add_wrapper_with_key", "add_weight_wrapper", "add_object_patch", "get_model_object",
                   "set_model_attn1_patch", "set_model_attn1_output_patch", "set_model_attn2_replace",
                   "set_model_sampler_post_cfg_function", "set_model_patch_replace")

DIT_CONVENTIONS = {
    # what the FLUX adapter (host.backbone) relies on -> the host module that keeps it
    "optimized_attention_override": "comfy.ldm.modules.attention",  # wrap_attn calls the override
    "double_block": "comfy.ldm.flux.model",  # patches_replace["dit"][("double_block", i)]
    "single_block": "comfy.ldm.flux.model",
    "original_block": "comfy.ldm.flux.model",
    "transformer_options": "comfy.ldm.flux.math",  # attention() passes it to optimized_attention
}

SAMPLING_FUNCTIONS = ("calc_cond_batch", "sampling_function", "cfg_function", "process_conds", "calculate_sigmas")


def missing_keys(source: str, keys: Iterable[str]) -> list[str]:
    """The keys that ``source`` never writes as ``[...]["key"] =`` or ``["key"] =`` style assignment
    nor mentions as a quoted string: a key the host stopped setting."""
    return [key for key in keys if not re.search(r"""["']%s["']""" % re.escape(key), source)]


def callback_fields_read(source: str) -> set[str]:
    """The fields a KSAMPLER's callback adapter reads from the step dict (``x["i"]``, ...)."""
    return set(re.findall(r"""\bx\[["'](\w+)["']\]""", source))


def _check(name: str, check: Callable[[], Optional[str]]) -> Optional[str]:
    try:
        problem = check()
    except Exception as e:  # the check itself could not run: a moved module or symbol
        problem = f"{type(e).__name__}: {e}"
    return f"{name}: {problem}" if problem else None


def _transformer_option_keys() -> Optional[str]:
    import importlib

    by_module: dict[str, list[str]] = {}
    for key, module in TRANSFORMER_OPTION_KEYS.items():
        by_module.setdefault(module, []).append(key)
    gone = []
    for module, keys in by_module.items():
        source = inspect.getsource(importlib.import_module(module))
        gone += [f"{key} ({module})" for key in missing_keys(source, keys)]
    return f"no longer set by the host: {', '.join(gone)}" if gone else None


def _sampler_callback() -> Optional[str]:
    import comfy.samplers

    read = callback_fields_read(inspect.getsource(comfy.samplers.KSAMPLER.sample))
    if not read:
        return "KSAMPLER.sample no longer reads its callback fields as x['...']"
    extra = read - SAMPLER_CALLBACK_FIELDS
    return f"KSAMPLER callbacks read fields the pack's samplers do not give: {sorted(extra)}" if extra else None


def _embedding_loader() -> Optional[str]:
    import comfy.sd1_clip

    parameters = list(inspect.signature(comfy.sd1_clip.load_embed).parameters)
    if parameters[:4] != ["embedding_name", "embedding_directory", "embedding_size", "embed_key"]:
        return f"comfy.sd1_clip.load_embed takes {parameters}"
    return None


def _wrappers() -> Optional[str]:
    import comfy.patcher_extension

    gone = [w for w in WRAPPER_TYPES if not hasattr(comfy.patcher_extension.WrappersMP, w)]
    return f"WrappersMP lacks {gone}" if gone else None


def _patcher() -> Optional[str]:
    import comfy.model_patcher

    gone = [m for m in PATCHER_METHODS if not callable(getattr(comfy.model_patcher.ModelPatcher, m, None))]
    return f"ModelPatcher lacks {gone}" if gone else None


def _sampling() -> Optional[str]:
    import comfy.samplers

    gone = [f for f in SAMPLING_FUNCTIONS if not callable(getattr(comfy.samplers, f, None))]
    guider = comfy.samplers.CFGGuider
    gone += [f"CFGGuider.{m}" for m in ("sample", "inner_set_conds", "set_cfg") if not callable(getattr(guider, m, None))]
    if not hasattr(comfy.samplers, "Sampler") or not hasattr(comfy.samplers, "KSAMPLER"):
        gone.append("Sampler/KSAMPLER")
    return f"comfy.samplers lacks {gone}" if gone else None


def _dit_conventions() -> Optional[str]:
    import importlib

    gone = [f"{key} ({module})" for key, module in DIT_CONVENTIONS.items()
            if key not in inspect.getsource(importlib.import_module(module))]
    return f"FLUX block and attention conventions moved: {', '.join(gone)}" if gone else None


CHECKS: dict[str, Callable[[], Optional[str]]] = {
    "transformer_options keys": _transformer_option_keys,
    "sampler callback fields": _sampler_callback,
    "embedding loader": _embedding_loader,
    "wrapper types": _wrappers,
    "ModelPatcher methods": _patcher,
    "sampling functions": _sampling,
    "FLUX patch points": _dit_conventions,
}


def problems() -> list[str]:
    """Every convention the pack relies on that this host no longer keeps, by name."""
    return [p for p in (_check(name, check) for name, check in CHECKS.items()) if p]


def report() -> list[str]:
    """Runs the checks and writes what moved to the ComfyUI log (one warning each)."""
    found = problems()
    for problem in found:
        LOG.warning("[Exemplar Edit] host check: %s. The nodes that rely on it may fail; please report it "
                    "with your ComfyUI version.", problem)
    return found
