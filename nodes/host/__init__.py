"""Everything this pack touches in ComfyUI, in one place: one module per job.

The node modules and ``core`` never import ``comfy`` themselves: when a ComfyUI update moves a
symbol, this package is the one edit. Only documented patch points are used (``ModelPatcher.clone``
and its ``set_model_*`` / wrapper APIs, ``KSAMPLER`` and ``comfy.samplers.Sampler`` objects run by
the stock ``CFGGuider``, ``comfy.sample``); what changed between hosts is chosen by feature
detection, never by version number. ``selfcheck`` reports a moved convention at load.

- ``backbone``: one interface to the denoiser's image tokens and attention (SD UNet, FLUX-class DiT)
- ``facts``: model facts (family, prediction type, schedule, UNet layout) and ``InputError``
- ``sampling``: the pack's samplers and guiders, direct UNet evaluations (``run_with_model``)
- ``gradients``: the UNet and text encoders with gradients (the host training node's way)
- ``text``: tokens, embeddings, text and image encoders, the VAE
- ``files``: the embeddings folder, atomic writes, progress
- ``validation``: ``PackNode``, the base of every node (ranges, finite numbers, names, windows)
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io  # noqa: F401  (re-exported for the node modules)

from .backbone import (FLUX_DEFAULT_MATCHING, FLUX_LAYER_CHOICES, FLUX_MATCHING, UNET_LAYER_CHOICES_NAMES, Backbone,  # noqa: F401
                       CrossAttentionMaps, CrossAttentionProbe, ImageTokens, TokenFeatures, backbone,
                       unet_attn1_patch)
from .facts import *  # noqa: F401,F403
from .files import *  # noqa: F401,F403
from .gradients import differentiable_clip, differentiable_model, gradient_mode, gradient_strategy  # noqa: F401
from .sampling import *  # noqa: F401,F403
from .text import *  # noqa: F401,F403
from .validation import PackNode, file_stem, number_problem, step_window_problem  # noqa: F401
from . import selfcheck

selfcheck.report()
