"""Running the UNet and the text encoders with gradients, without touching the shared model.

ComfyUI executes every node under ``torch.inference_mode()``: loaded weights are inference
tensors, which autograd refuses to save for a backward pass. The pack gets gradients the way the
host's own training node (``comfy_extras/nodes_train.py``, ``TrainLoraNode``) does, chosen by what
the host offers, not by its version:

- ``reload`` (ComfyUI with ``ModelPatcher.clone(force_deepcopy=...)``, Dynamic VRAM era): the
  model is loaded again from its file by the loader's own factory (``cached_patcher_init``), with
  ``disable_dynamic=True`` and outside inference mode, so its weights are ordinary tensors that no
  other model shares; it is loaded in full (``force_full_load``), LoRA and other weight patches are
  merged into it the standard way, and autograd differentiates through those merged weights
  directly. Nothing depends on how the host casts weights (Dynamic VRAM's reused GPU buffers,
  ``weight_lowvram_function`` LoRA patches). The copy is kept between runs of the same shared model
  (``_PrivateCopies``: later runs clone it with ``model_override``, as the host builds its own
  non-dynamic delegates, so their LoRA and other patches are applied by ComfyUI's clone mechanics)
  until ComfyUI unloads it (``POST /free``, memory for another model) or the shared model is freed.
- ``copy_weights`` (hosts before Dynamic VRAM, e.g. the pinned 0.3.75): the shared weights are copied
  into ordinary tensors. The denoiser's clone carries a zero-strength difference patch on every
  parameter, so ComfyUI's own patching (the LoRA mechanism), which the pack runs outside inference
  mode, materialises each weight once as an ordinary tensor when it loads the clone (exactly equal:
  a zero-strength patch adds nothing), keeps them while the clone stays loaded, and restores the
  shared originals when it unloads it. Text encoders, which ComfyUI may load again under inference
  mode between the pack's passes, get identity weight wrappers instead: ``comfy.ops.cast_bias_weight``
  then hands each forward a fresh ordinary copy of every weight (the recipe of 0.3.75's training
  node); the copies are not kept for the backward pass.

A model whose patcher is dynamic but that cannot be reloaded is refused with the fix named.
In both cases the text encoder's LayerNorms normalise a copy of their input (an object patch), as
ComfyUI's CLIP layers add in place (``x += ...``) onto tensors a LayerNorm saved; so do the
LayerNorms of a denoiser whose backbone adds its residuals in place (FLUX's blocks).
"""
from __future__ import annotations

import gc
import inspect
import uuid
import weakref

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.sampler_helpers

from .facts import InputError

RELOAD = "reload"
COPY_WEIGHTS = "copy_weights"
WRAPPER_KEY = "exemplar_edit_gradients"


def _accepts(function, *names: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


def _is_dynamic(patcher) -> bool:
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def gradient_strategy(patcher) -> str:
    """How gradients are obtained for models of this patcher (see the module docstring)."""
    if _accepts(type(patcher).clone, "force_deepcopy", "disable_dynamic") and \
            getattr(patcher, "cached_patcher_init", None) is not None:
        return RELOAD
    if _is_dynamic(patcher):
        raise InputError(
            "model: ComfyUI holds this model under Dynamic VRAM and the loader that made it cannot load it again, "
            "which gradients through the model need (as ComfyUI's own training node does). Load it with a core "
            "loader (Load Checkpoint, Load Diffusion Model, Load CLIP), or start ComfyUI with --disable-dynamic-vram."
        )
    return COPY_WEIGHTS


class _PrivateCopies:
    """reload hosts: the private copy of each shared model, kept between runs (see the module docstring).

    An entry is the private patcher of the last run of a shared model (ComfyUI tracks loaded models
    through their patchers, so it stays known to ComfyUI's memory management while it is kept). It is
    dropped when ComfyUI unloads it (``detach`` with its weights unpatched: ``POST /free``, or memory
    another model needs; switching between clones of it detaches without unpatching) and when the
    shared model is freed.

    ComfyUI unloads inside a loop over its loaded models (``free_memory``), and stops watching the
    unloaded weights for garbage collection only after the detach callbacks ran: a copy freed in the
    callback would make ComfyUI's cleanup shorten that list under the loop. So the callback only sets
    the copy aside, and it is let go at the first garbage collection (``gc.callbacks``; ComfyUI collects
    right after ``POST /free``) or pack call at which no loaded model uses its weights any more."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, object]] = {}
        self._unloaded: list = []

    def patcher_for(self, source):
        """A private, non-dynamic copy of ``source`` with ordinary weights (``TrainLoraNode``:
        ``model.clone(force_deepcopy=True)`` under ``inference_mode(False)``), loaded again only when
        no copy of ``source``'s shared model is kept. Its patches, wrappers and options are ``source``'s;
        its weights require no gradient."""
        self.release_unloaded()
        shared = source.model
        entry = self._entries.get(id(shared))
        kept = entry[1] if entry is not None and entry[0]() is shared else None
        with torch.inference_mode(False):
            if kept is None:
                private = source.clone(disable_dynamic=True, force_deepcopy=True)
            else:
                private = source.clone(disable_dynamic=True, model_override=kept.get_clone_model_override())
        private.model.requires_grad_(False)
        private.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, WRAPPER_KEY, self._on_detach)
        key = id(shared)
        self._entries[key] = (weakref.ref(shared, lambda _dead, key=key: self._entries.pop(key, None)), private)
        return private

    def _on_detach(self, patcher, unpatch_all: bool) -> None:
        if not unpatch_all:
            return
        for key, (_shared, private) in list(self._entries.items()):
            if private.model is patcher.model:
                del self._entries[key]
                self._unloaded.append(private)

    def release_unloaded(self) -> None:
        """Lets go of the copies set aside at unloading that no loaded model uses any more."""
        if not self._unloaded:
            return
        in_use = {id(loaded.model) for loaded in comfy.model_management.loaded_models() if loaded is not None}
        self._unloaded = [private for private in self._unloaded if id(private.model) in in_use]

    def _after_collection(self, phase: str, _info: dict) -> None:
        if phase == "stop" and self._unloaded:
            self.release_unloaded()

    def kept(self) -> list:
        """The private patchers kept now (for tests and the bench)."""
        return [private for _shared, private in self._entries.values()]


PRIVATE_COPIES = _PrivateCopies()
gc.callbacks.append(PRIVATE_COPIES._after_collection)


def reloaded_patcher(patcher):
    """The private copy of ``patcher``'s model for one run (see ``_PrivateCopies.patcher_for``)."""
    return PRIVATE_COPIES.patcher_for(patcher)


# --- copy_weights: a no-op weight patch per parameter, identity weight wrappers for text encoders ---


_NO_CHANGE = torch.zeros(())  # a zero-strength "diff" patch never reads its tensor


def _add_no_op_weight_patches(patcher) -> None:
    """A zero-strength difference patch on every parameter (see the module docstring): ComfyUI patches
    each weight into an ordinary copy equal to it when it loads the clone, and restores it afterwards.
    The patch set's id is derived from the source's (``add_patches`` draws a new one), so another clone
    of the same model and patches (the node run again with other settings) finds its copies in place
    while ComfyUI keeps them loaded, as it does for a LoRA that did not change."""
    source_id = patcher.patches_uuid
    names = [name for name, _param in patcher.model.named_parameters()]
    patcher.add_patches({name: (_NO_CHANGE,) for name in names}, strength_patch=0.0)
    patcher.patches_uuid = uuid.uuid5(source_id, WRAPPER_KEY)



class _SavedWeights:
    """Keeps the per-forward weight copies out of the autograd graph.

    With a weight wrapper on a layer, ``comfy.ops.cast_bias_weight`` hands the forward a fresh copy
    of the weight; autograd would keep every layer's copy alive until the backward pass (one whole
    extra model in memory). The wrapper records which module each copy came from, and the
    ``saved_tensors_hooks`` of ``gradient_mode`` store a small reference instead of the copy; the
    backward pass reads the module's own weight again (a zero-copy alias when dtype and device match).
    A copy is only replaced when the wrapper is the layer's only weight function, so on-the-fly
    patches (LoRA in low-VRAM mode, quantised weights) keep the exact tensor they produced."""

    def __init__(self):
        self._copies: dict[int, tuple] = {}
        self._patchers = weakref.WeakSet()  # patchers that carry identity weight wrappers

    def add_patcher(self, patcher) -> None:
        self._patchers.add(patcher)

    def needed(self) -> bool:
        """Whether a patcher with identity weight wrappers exists: only then ``gradient_mode`` installs the
        saved-tensor hooks (which otherwise cost memory: with them the allocator keeps the freed activations
        of every backward pass, measured +12 MiB per guided step on the CPU test model)."""
        return len(self._patchers) > 0

    def record(self, copy: torch.Tensor, module: torch.nn.Module, param: str) -> None:
        source = getattr(module, param, None)
        if (not isinstance(source, torch.Tensor) or type(source) not in (torch.Tensor, torch.nn.Parameter)
                or len(getattr(module, f"{param}_function", ())) != 1 or source.shape != copy.shape):
            return
        key = id(copy)
        self._copies[key] = (weakref.ref(copy), module, param, copy.dtype, copy.device)
        weakref.finalize(copy, self._copies.pop, key, None)

    def pack(self, tensor: torch.Tensor):
        entry = self._copies.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            # autograd skips its own check that a saved tensor was not modified in place when hooks are
            # installed: keep the version, checked on unpack, so such a graph still fails loudly
            return _Saved(tensor, tensor._version)
        return _WeightReference(*entry[1:])

    @staticmethod
    def unpack(packed):
        if isinstance(packed, _WeightReference):
            return packed.materialise()
        if packed.tensor._version != packed.version:
            raise RuntimeError(
                f"one of the tensors saved for the backward pass ({list(packed.tensor.shape)}) was modified in place "
                "after it was saved; the model's forward adds in place onto it (host.gradients)")
        return packed.tensor


class _Saved:
    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor, version: int):
        self.tensor, self.version = tensor, version


class _WeightReference:
    __slots__ = ("module", "param", "dtype", "device")

    def __init__(self, module, param, dtype, device):
        self.module, self.param, self.dtype, self.device = module, param, dtype, device

    def materialise(self) -> torch.Tensor:
        source = getattr(self.module, self.param)
        if source.dtype != self.dtype or source.device != self.device:
            return source.detach().to(device=self.device, dtype=self.dtype)
        alias = torch.empty(0, dtype=source.dtype, device=source.device)  # an ordinary tensor on the same storage
        return alias.set_(source.untyped_storage(), source.storage_offset(), source.size(), source.stride())


_SAVED_WEIGHTS = _SavedWeights()


class _WeightWrapper:
    """Identity weight wrapper of one layer parameter (see ``_SavedWeights``)."""

    def __init__(self, module: torch.nn.Module, param: str):
        self.module, self.param = module, param

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        # The copy is made with autograd on, from a parameter that requires grad: without the detach
        # every backward pass would also compute weight gradients and accumulate them into the
        # shared model's parameters.
        weight = weight.detach()
        if torch.is_grad_enabled():  # otherwise nothing is saved for a backward pass
            _SAVED_WEIGHTS.record(weight, self.module, self.param)
        return weight

    def __deepcopy__(self, memo):  # holds a module of the shared model: never copy it
        return self


def _add_identity_weight_wrappers(patcher) -> None:
    """Identity weight wrappers on every ComfyUI layer; the few parameters of plain torch modules
    (0.3.75's FLUX QK-norm ``scale``) get an object patch with an ordinary copy instead, since no
    weight function reaches them and an inference tensor cannot be saved for backward."""
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "weight_function"):
            for param, value in module.named_parameters(recurse=False):
                with torch.inference_mode(False):
                    copy = torch.nn.Parameter(value.detach().clone(), requires_grad=False)
                patcher.add_object_patch(f"{name}.{param}" if name else param, copy)
            continue
        for param in ("weight", "bias"):
            if getattr(module, param, None) is not None:
                patcher.add_weight_wrapper(f"{name}.{param}" if name else param, _WeightWrapper(module, param))


class _NormalizeCopy:
    """``forward`` for a LayerNorm that normalises a copy of its input, so the caller's later
    in-place ``x += ...`` does not clobber the tensor autograd saved."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return type(self.module).forward(self.module, x.clone(), *args, **kwargs)

    def __deepcopy__(self, memo):  # holds a module of the model: never copy it
        return self


# --- the wrappers a differentiable model samples with -------------------------------------------


def _load_in_full(executor, model, noise_shape, conds, model_options=None, **kwargs):
    """PREPARE_SAMPLING wrapper: where the host can, the gradient model is loaded in full, so that no
    layer is cast into a reused buffer per forward (as TrainLoraNode's ``force_full_load``)."""
    if _accepts(comfy.sampler_helpers.prepare_sampling, "force_full_load"):
        kwargs["force_full_load"] = True
    return executor(model, noise_shape, conds, model_options=model_options, **kwargs)


def _sample_outside_inference_mode(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper (copy_weights): model loading (so the patched weight copies are ordinary
    tensors) and sampling outside inference mode."""
    with torch.inference_mode(False):
        return executor(*args, **kwargs)


def _sample_with_reloaded_weights(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper (reload): for this run the guider samples the private copy of its model
    with ordinary weights (``_PrivateCopies``), loaded outside inference mode."""
    guider = executor.class_obj
    source = guider.model_patcher
    with torch.inference_mode(False):
        guider.model_patcher = reloaded_patcher(source)
        try:
            return executor(*args, **kwargs)
        finally:
            guider.model_patcher = source


def differentiable_model(model):
    """A clone of a MODEL whose UNet builds an autograd graph when sampled by ComfyUI's own guider
    (``run_with_model``, ``make_stepwise_guider``) inside ``gradient_mode``. The loaded model and
    its weights are untouched, and no parameter gets a ``.grad`` (see the module docstring)."""
    clone = model.clone()
    strategy = gradient_strategy(clone)
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    if strategy == RELOAD:
        clone.add_wrapper_with_key(outer, WRAPPER_KEY, _sample_with_reloaded_weights)
    else:
        _add_no_op_weight_patches(clone)
        clone.add_wrapper_with_key(outer, WRAPPER_KEY, _sample_outside_inference_mode)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, WRAPPER_KEY, _load_in_full)
    from .backbone import backbone  # the backbone module imports sampling, which imports this one

    if backbone(clone).residuals_in_place:
        _normalize_copies(clone, "diffusion_model.")
    return clone


def _normalize_copies(patcher, prefix: str = "") -> None:
    """Every LayerNorm under ``prefix`` normalises a copy of its input (``_NormalizeCopy``), so the
    caller's later in-place residual add does not clobber the tensor autograd saved. In the denoiser
    only parameter-free ones (all of FLUX's): the patch calls the shared model's module, which must then
    hold no weight a reloaded private copy would replace."""
    for name, module in patcher.model.named_modules():
        if not (name.startswith(prefix) and isinstance(module, torch.nn.LayerNorm)):
            continue
        if prefix and next(module.parameters(recurse=False), None) is not None:
            continue
        patcher.add_object_patch(f"{name}.forward", _NormalizeCopy(module))


def differentiable_clip(clip):
    """A clone of a CLIP whose text encoder builds an autograd graph back to its input embeddings
    (inside ``gradient_mode``). ``reload``: the clone encodes with a private copy, loaded in full
    outside inference mode here, with its weight patches (LoRA) merged into ordinary tensors."""
    clone = clip.clone()
    reload = gradient_strategy(clip.patcher) == RELOAD
    if reload:
        clone.patcher = reloaded_patcher(clip.patcher)
        clone.cond_stage_model = clone.patcher.model
    else:
        _add_identity_weight_wrappers(clone.patcher)
        _SAVED_WEIGHTS.add_patcher(clone.patcher)
    _normalize_copies(clone.patcher)
    if reload:
        load = comfy.model_management.load_models_gpu
        with torch.inference_mode(False):
            load([clone.patcher], force_full_load=True) if _accepts(load, "force_full_load") else load([clone.patcher])
    return clone


class gradient_mode:
    """``with host.gradient_mode():`` autograd on, inside ComfyUI's inference-mode execution.

    Tensors made before (images, latents, conditioning) are inference tensors: ``.clone()`` them
    inside the block before they take part in a graph that needs them saved. Where the host has it,
    ``comfy.model_management.in_training`` is set for the block, as its training node sets it around
    training: ComfyUI from 0.16 then applies FLUX's rotary embedding in plain torch instead of a
    fused kernel that has no backward.
    """

    def __enter__(self):
        self._in_training = getattr(comfy.model_management, "in_training", None)
        if self._in_training is not None:
            comfy.model_management.in_training = True
        self._inference = torch.inference_mode(False)
        self._grad = torch.enable_grad()
        self._saved = None
        if _SAVED_WEIGHTS.needed():
            self._saved = torch.autograd.graph.saved_tensors_hooks(_SAVED_WEIGHTS.pack, _SAVED_WEIGHTS.unpack)
        self._inference.__enter__()
        self._grad.__enter__()
        if self._saved is not None:
            self._saved.__enter__()
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            self._saved.__exit__(*exc)
        self._grad.__exit__(*exc)
        self._inference.__exit__(*exc)
        if self._in_training is not None:
            comfy.model_management.in_training = self._in_training
        return False
