"""Everything this pack touches in ComfyUI, in one place.

The node modules and ``core`` never import ``comfy`` themselves: when a ComfyUI update moves a
symbol, this file is the one edit. Only documented patch points are used (``ModelPatcher.clone``
and its ``set_model_*`` / wrapper APIs, ``KSAMPLER`` sampler functions, ``comfy.sample``), all of
which exist unchanged in ComfyUI 0.3.75 and in current ComfyUI.
"""
from __future__ import annotations

import weakref
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
            return tensor
        return _WeightReference(*entry[1:])

    @staticmethod
    def unpack(packed):
        return packed.materialise() if isinstance(packed, _WeightReference) else packed


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
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "weight_function"):
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

    def __deepcopy__(self, memo):  # holds a module of the shared model: never copy it
        return self


def differentiable_model(model):
    """A clone of a MODEL whose UNet builds an autograd graph (use it inside ``gradient_mode``).

    The loaded model and its weights are untouched; each forward copies every weight once, and
    the copies are not kept for the backward pass (``_SavedWeights``).
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
        self._saved = torch.autograd.graph.saved_tensors_hooks(_SAVED_WEIGHTS.pack, _SAVED_WEIGHTS.unpack)
        self._inference.__enter__()
        self._grad.__enter__()
        self._saved.__enter__()
        return self

    def __exit__(self, *exc):
        self._saved.__exit__(*exc)
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


# --- text tokens, embeddings, CLIP vision (Difference Inversion, nodes/analogy.py) ---------------
#
# A Difference embedding is a few vectors per text encoder of the CLIP, in the encoder's *input*
# token-embedding space, stored as ComfyUI's ``embedding:`` files read them
# (``comfy/sd1_clip.py load_embed``): ``{"clip_l": [K, 768]}`` for SD1.x, plus ``"clip_g": [K, 1280]``
# for SDXL. Vectors enter a prompt as ``(tensor_row, 1.0)`` entries of ``clip.tokenize(...)``, exactly
# as the tokenizer inserts an ``embedding:NAME`` it loaded.


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a CLIP: its key in ``clip.tokenize(...)`` ("l", "g", "h"), the key its
    vectors have in an embedding file ("clip_l", ...), and its token-embedding width."""

    key: str
    embedding_key: str
    width: int


def _sub_tokenizer(clip, key: str):
    tokenizer = clip.tokenizer
    sub = getattr(tokenizer, f"clip_{key}", None)
    if sub is None and getattr(tokenizer, "clip_name", None) == key:
        sub = getattr(tokenizer, tokenizer.clip, None)
    return sub


def text_encoder_slots(clip) -> list[TextEncoderSlot]:
    """The text encoders of ``clip`` whose prompts take embedding vectors, in tokenize order."""
    slots = []
    for key in clip.tokenize(""):
        sub = _sub_tokenizer(clip, key)
        if sub is None or not hasattr(sub, "embedding_key"):
            raise InputError(f"clip: text encoder {key!r} of this CLIP does not accept embeddings (not a CLIP tokenizer)")
        slots.append(TextEncoderSlot(key=key, embedding_key=sub.embedding_key, width=int(sub.embedding_size)))
    return slots


def append_embedding_rows(clip, tokens: dict, rows_by_key: dict[str, torch.Tensor]) -> dict:
    """``tokens`` (from ``clip.tokenize(prompt)``) with ``rows_by_key[key]`` appended as one group of
    embedding vectors after the prompt's words, each at weight 1.0: the token lists ComfyUI's
    tokenizer makes for ``prompt + " embedding:NAME"`` when the file holds these rows. The rows keep
    their autograd graph. The tokenizer's chunking is reproduced (``sd1_clip.py``
    ``tokenize_with_weights``): a group shorter than ``max_word_length`` that does not fit the last
    75-token chunk opens a new chunk; a longer one is split across chunks."""
    import numbers

    out = {}
    for key, chunks in tokens.items():
        rows = rows_by_key.get(key)
        if rows is None:
            out[key] = chunks
            continue
        sub = _sub_tokenizer(clip, key)
        if (sub is None or sub.start_token is None or sub.end_token is None or not sub.pad_to_max_length
                or sub.pad_left or sub.min_length is not None or sub.min_padding is not None):
            raise InputError(f"clip: the tokenizer of text encoder {key!r} is not a CLIP tokenizer this node supports")
        end, start, pad = sub.end_token, sub.start_token, sub.pad_token
        chunks = [list(chunk) for chunk in chunks]
        last = chunks.pop()
        eos = next(i for i in range(1, len(last))
                   if isinstance(last[i][0], numbers.Integral) and int(last[i][0]) == end)
        batch = [tuple(entry[:2]) for entry in last[:eos]]
        chunks.append(batch)
        group = [(rows[i], 1.0) for i in range(rows.shape[0])]
        is_large = len(group) >= sub.max_word_length
        while group:
            if len(group) + len(batch) > sub.max_length - 1:
                remaining = sub.max_length - len(batch) - 1
                if is_large:
                    batch.extend(group[:remaining])
                    batch.append((end, 1.0))
                    group = group[remaining:]
                else:
                    batch.append((end, 1.0))
                    batch.extend([(pad, 1.0)] * remaining)
                batch = [(start, 1.0)]
                chunks.append(batch)
            else:
                batch.extend(group)
                group = []
        batch.append((end, 1.0))
        batch.extend([(pad, 1.0)] * (sub.max_length - len(batch)))
        out[key] = chunks
    return out


def encode_tokens(clip, tokens: dict) -> list:
    """A CONDITIONING for ``tokens``, as CLIPTextEncode makes it (``encode_from_tokens_scheduled``)."""
    return clip.encode_from_tokens_scheduled(tokens)


def load_embedding_rows(clip, name: str) -> dict[str, torch.Tensor]:
    """The vectors ``embedding:NAME`` inserts for each text encoder of ``clip``, read by ComfyUI's
    own loader from the CLIP's embedding folders. Raises InputError when no encoder finds them."""
    import comfy.sd1_clip

    rows = {}
    for slot in text_encoder_slots(clip):
        sub = _sub_tokenizer(clip, slot.key)
        embed = comfy.sd1_clip.load_embed(name, sub.embedding_directory, sub.embedding_size, sub.embedding_key)
        if embed is None:
            continue
        if embed.ndim == 1:
            embed = embed.unsqueeze(0)
        if embed.shape[-1] != slot.width:
            continue  # the tokenizer skips a width mismatch too (with a warning)
        rows[slot.key] = embed.float()
    if not rows:
        raise InputError(
            f"embedding_name: no embedding {name!r} with vectors for this CLIP in the embeddings folders "
            f"{list(getattr(_sub_tokenizer(clip, text_encoder_slots(clip)[0].key), 'embedding_directory', []) or [])}; "
            "train one with Delta Interpolation Trainer or check the name"
        )
    return rows


def embeddings_folder() -> str:
    """Where new embeddings are saved: the first ``embeddings`` model folder."""
    import folder_paths

    return folder_paths.get_folder_paths("embeddings")[0]


def add_model_folder(kind: str, path: str) -> None:
    """Makes ``path`` the first folder ComfyUI searches for models of ``kind`` (e.g. "embeddings")."""
    import folder_paths

    folder_paths.add_model_folder_path(kind, str(path), is_default=True)


def text_encoder_file_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("text_encoders")


def image_embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embeddings ``[batch, D]`` (``CLIPVisionEncode``'s ``image_embeds``)."""
    return clip_vision.encode_image(image, crop=True)["image_embeds"].float()


def vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """VAE Encode: raw latents of an IMAGE batch, as the stock node computes them."""
    return vae.encode(image[:, :, :, :3])


def model_space_latent(model, samples: torch.Tensor) -> torch.Tensor:
    """A VAE latent scaled into the space the model denoises in (the sampler's ``process_latent_in``)."""
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    return model.model.process_latent_in(samples)


def training_sigmas(model) -> torch.Tensor:
    """sigma(t) for the model's training timesteps t = 0..T-1 (ascending, T = 1000 for SD)."""
    return model_sampling(model).sigmas.detach().float().cpu().clone()


@dataclass
class AlignmentEncoder:
    """A CLIP text encoder with a real text projection, loaded from a file (see
    ``load_alignment_text_encoder``): the text side of the joint space the CLIP vision model embeds in."""

    clip: Any
    slot: TextEncoderSlot
    projection: torch.Tensor  # [D, width]: feature = hidden @ projection.T (nn.Linear, no bias)


_PROJECTION_KEYS = ("text_projection.weight", "text_projection", "transformer.text_projection.weight")


def load_alignment_text_encoder(file_name: str, input_name: str) -> AlignmentEncoder:
    """Loads a single CLIP text encoder file from ``models/text_encoders`` with ComfyUI's own loader
    (what CLIPLoader does, type stable_diffusion), after checking that the file carries its
    ``text_projection``. Checkpoint CLIPs are never used for this: SD1.x checkpoints do not store
    CLIP-L's projection and ComfyUI leaves it uninitialised."""
    import comfy.sd
    import comfy.utils
    import folder_paths

    path = folder_paths.get_full_path(  # None when missing
        "text_encoders", file_name) if file_name else None
    if path is None:
        raise InputError(f"{input_name}: text encoder file {file_name!r} not found in models/text_encoders")
    state_dict = comfy.utils.load_torch_file(path, safe_load=True)
    if not any(k in state_dict for k in _PROJECTION_KEYS):
        raise InputError(
            f"{input_name}: {file_name} has no text_projection, so its text features are not in CLIP's joint "
            "image-text space; use the full CLIP text model that matches the CLIP vision model (for ViT-L/14: "
            "OpenAI clip-vit-large-patch14's text encoder, e.g. a clip_l.safetensors that includes text_projection.weight)"
        )
    clip = comfy.sd.load_text_encoder_state_dicts(
        state_dicts=[state_dict], embedding_directory=folder_paths.get_folder_paths("embeddings"),
        clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    slots = text_encoder_slots(clip)
    if len(slots) != 1:
        raise InputError(f"{input_name}: {file_name} holds {len(slots)} text encoders; give a single CLIP text encoder file")
    slot = slots[0]
    module = getattr(clip.cond_stage_model, f"clip_{slot.key}", None)
    projection = getattr(getattr(module, "transformer", None), "text_projection", None)
    if projection is None:
        raise InputError(f"{input_name}: {file_name} is not a CLIP text encoder with a text projection")
    # Read the encoder's last layer (final LayerNorm), as CLIP's own text features do, whatever the
    # family's default layer for conditioning is: a layer index beyond the depth selects "last".
    clip.clip_layer(-(10 ** 6))
    weight = projection.weight.detach().float().clone()
    return AlignmentEncoder(clip=clip, slot=slot, projection=weight)


def last_hidden_and_pooled(clip, tokens: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's final-LayerNorm hidden states ``[chunks, 77, width]`` and its *unprojected*
    pooled state at the end token ``[1, width]``, for an ``AlignmentEncoder.clip``."""
    out = clip.encode_from_tokens(tokens, return_pooled="unprojected", return_dict=True)
    return out["cond"].float(), out["pooled_output"].float()


def token_embedding_scale(clip, key: str) -> float:
    """max |value| of the encoder's token-embedding table: the scale of real input vectors."""
    module = getattr(clip.cond_stage_model, f"clip_{key}", None)
    if module is None:
        module = clip.cond_stage_model
    table = module.transformer.get_input_embeddings().weight
    return float(table.detach().float().abs().max())


def save_tensors_atomically(path: str, tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    """Writes a safetensors file via a temporary file in the same folder and ``os.replace``."""
    import os
    import tempfile

    import safetensors.torch

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                                    metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TrainingProgress:
    """ComfyUI's progress bar for a training loop, plus the current loss as the node's progress text."""

    def __init__(self, total: int):
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        self.node_id = context.node_id if context is not None else None
        self.bar = comfy.utils.ProgressBar(total)

    def update(self, step: int, text: Optional[str] = None) -> None:
        self.bar.update_absolute(step)
        if text is None or self.node_id is None:
            return
        try:
            from server import PromptServer

            instance = getattr(PromptServer, "instance", None)
            if instance is not None:
                instance.send_progress_text(text, self.node_id)
        except Exception:  # no server (in-process runs): the bar alone
            pass


# --- attention, text encoding and a step-by-step guider (pix2pix-zeroCon) ----------------------

import math  # noqa: E402

import comfy.model_patcher  # noqa: E402


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's optimised attention on projected ``[B, tokens, heads*dim]`` q/k/v (for replaces)."""
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.optimized_attention(q, k, v, heads)


def context_width(model) -> Optional[int]:
    """Width of the text conditioning the model's UNet cross-attends to (768 SD1.x, 2048 SDXL)."""
    width = model.model.model_config.unet_config.get("context_dim")
    return int(width) if width is not None else None


def uses_pooled_text(model) -> bool:
    """Whether the model also takes a pooled text embedding (SDXL's ``y`` vector)."""
    return model.model.model_config.unet_config.get("adm_in_channels") is not None


def encode_text(clip, text: str) -> tuple[torch.Tensor, Optional[torch.Tensor], tuple[str, ...]]:
    """``(cond [1, 77*k, width], pooled or None, text-encoder keys)`` as CLIPTextEncode encodes
    ``text`` (the CLIP's own layer setting and encoders: ``("l",)`` SD1.x, ``("g", "l")`` SDXL)."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled, tuple(sorted(tokens))


def clip_identity(clip) -> object:
    """The object that identifies a CLIP with its patches (LoRAs, layer setting): its patcher."""
    return clip.patcher


class GuidedSteps:
    """What a :func:`make_stepwise_guider` program sees: the user's sampler, one step at a time.

    - ``sample_step(x, k, positive, negative, cond_offset=None)``: the user's sampler from
      ``sigmas[k]`` to ``sigmas[k+1]`` with CFG of the named conditionings (keys of the guider's
      conds). ``cond_offset``: the positive row is evaluated at ``x + cond_offset`` (its own,
      separately guided latent, as pix2pix-zero's CFG batch), combined in eps space.
    - ``denoise(x, sigma, key)``: x0 prediction under one conditioning, no CFG; differentiable
      inside ``gradient_mode`` (the guider's model is a ``differentiable_model``).
    """

    def __init__(self, guider, sampler, sigmas, model_options, callback, seed):
        self.guider = guider
        self.sampler = sampler
        self.sigmas = sigmas
        self.model_options = model_options
        self.callback = callback
        self.seed = seed
        self.steps = len(sigmas) - 1
        self.levels: list[float] = sigmas.tolist()  # the schedule on the host, read once per run
        self.cfg = float(guider.cfg)

    def start(self, noise: torch.Tensor, latent_image: torch.Tensor) -> torch.Tensor:
        """The latent at ``sigmas[0]``: the noise added as the stock samplers add it."""
        sampling = self.guider.inner_model.model_sampling
        max_sigma, first = float(sampling.sigma_max), self.levels[0]
        max_denoise = math.isclose(max_sigma, first, rel_tol=1e-05) or first > max_sigma
        return sampling.noise_scaling(self.sigmas[0], noise, latent_image, max_denoise)

    def sample_step(self, x: torch.Tensor, k: int, positive: str, negative: str,
                    cond_offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_interrupted()
        self.guider._pass = (positive, negative, cond_offset)
        try:
            callback = None
            if self.callback is not None:
                callback = lambda i, denoised, x_now, _total: self.callback(k + i, denoised, x_now, self.steps)  # noqa: E731
            extra_args = {"model_options": self.model_options,
                          "seed": None if self.seed is None else self.seed + k}
            return self.sampler.sample(self.guider, self.sigmas[k:k + 2], extra_args, callback,
                                       torch.zeros_like(x), x, None, True)
        finally:
            self.guider._pass = ("positive", "negative", None)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, key: str) -> torch.Tensor:
        return comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.guider.conds[key]], x, sigma,
                                              self.model_options)[0]

    def input_scale(self, sigma: float) -> float:
        """c_in(sigma): the model input is ``c_in * x`` (``1/sqrt(1+sigma^2)`` for eps/v models)."""
        sampling = self.guider.inner_model.model_sampling
        return float(sampling.calculate_input(torch.tensor([sigma]), torch.ones(1))[0])


StepProgram = Callable[[GuidedSteps, torch.Tensor], torch.Tensor]


class _StepwiseGuider(comfy.samplers.CFGGuider):
    """A CFG guider that hands sampling to a pack ``program`` which runs the user's sampler one step
    at a time (so it can run several passes and change x between steps). Model loading, hooks,
    wrappers, conditioning processing and latent in/out scaling are the stock CFGGuider's."""

    def __init__(self, model, conds: dict, cfg: float, program: StepProgram):
        super().__init__(model)
        self.inner_set_conds(conds)
        self.set_cfg(cfg)
        self._program = program
        self._pass: tuple = ("positive", "negative", None)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (host signature)
        positive, negative, offset = self._pass
        cond, uncond = self.conds.get(positive), self.conds.get(negative)
        if offset is None or math.isclose(self.cfg, 1.0):
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, uncond, cond, self.cfg,
                                                    model_options=model_options, seed=seed)
        offset = offset.to(x)
        cond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [cond], x + offset, timestep, model_options)[0] - offset
        uncond_pred = comfy.samplers.calc_cond_batch(self.inner_model, [uncond], x, timestep, model_options)[0]
        return comfy.samplers.cfg_function(self.inner_model, cond_pred, uncond_pred, self.cfg, x, timestep,
                                           model_options=model_options, cond=cond, uncond=uncond)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar,
                     seed, **kwargs):
        if denoise_mask is not None:
            raise InputError("latent_image: a noise mask is not supported by this guider; remove it (SetLatentNoiseMask)")
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = comfy.samplers.process_conds(self.inner_model, noise, self.conds, device, latent_image,
                                                  denoise_mask, seed, **kwargs)
        options = comfy.model_patcher.create_model_options_clone(self.model_options)
        options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        steps = GuidedSteps(self, sampler, sigmas, options, callback, seed)
        samples = self._program(steps, steps.start(noise, latent_image))
        return self.inner_model.process_latent_out(samples.to(torch.float32))


def make_stepwise_guider(model, conds: dict, cfg: float, program: StepProgram):
    """A GUIDER (for SamplerCustomAdvanced) over ``model`` with named conditionings ``conds``
    (``"positive"`` and ``"negative"`` plus any others the program uses) whose sampling is
    ``program(steps, x_start) -> x_final`` (see :class:`GuidedSteps`)."""
    return _StepwiseGuider(model, conds, cfg, program)


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
