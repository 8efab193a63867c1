"""SemanticFeatureRearrange: Eye-for-an-eye appearance transfer (Go et al., arXiv 2406.07008) as a
patch on a clone of the MODEL.

The user samples the *output* branch with the stock SamplerCustom and an Inversion Replay Sampler
of the target's inversion. The patch adds two more branches to every UNet call, the reference
(appearance) image and the target (structure) image, each replaying its own inversion, and steps
them itself after CFG. In the chosen decoder self-attention layers, the output's ``norm1``
features inside the target mask are replaced by the reference features that match them best
(``core.correspondence``), except on structure steps, which take the target's own features.
After each late step the output latent's colour statistics are aligned to the reference latent's
(masked AdaIN). Schedules follow the official code (sooyeon-go/eye_for_an_eye), including its
step counter: the UNet call of denoising step k sees counter ``max(k - 1, 0)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core import correspondence as corr
from ..core.correspondence import TransferSchedule
from ..core import freeu
from ..core import inversion as inv
from ..core import segmentation as seg
from . import host
from .host import InputError, io
from .inversion import InversionType

CATEGORY = f"{host.ROOT_CATEGORY}/appearance"

LAYER_CHOICES = host.UNET_LAYER_CHOICES_NAMES + host.FLUX_LAYER_CHOICES
_LAYOUT_KEY = "exemplar_edit_appearance_rows"  # output rows per batch chunk, set by our wrapper
_STEP_KEY = "exemplar_edit_appearance_step"  # denoising step k of the current UNet call
_IMAGE_DOWNSCALE = 8  # pixels per latent cell for every model family the pack supports
REPLAYED, FROM_INVERSION = "replayed_each_step", "collected_from_inversion"
FEATURE_SOURCES = (REPLAYED, FROM_INVERSION)
SELF_SEGMENTATION, CROSS_ATTENTION, OFF = "self_segmentation", "cross_attention", "off"
AUTO_MASKS = (SELF_SEGMENTATION, CROSS_ATTENTION, OFF)
OFFICIAL_ROWS, CONDITIONAL_ROWS = "official", "conditional"
STRUCTURE_ROWS = (OFFICIAL_ROWS, CONDITIONAL_ROWS)


class AppearanceTransferPatch:
    """The state and the three hooks (apply-model wrapper, attn1 patch, post-CFG + step hook)."""

    def __init__(self, reference: inv.Inversion, target: inv.Inversion, blocks: frozenset[tuple[str, int]],
                 masks: list[tuple[torch.Tensor, torch.Tensor]], schedule: TransferSchedule,
                 strength: float, restrict_to_reference_mask: bool, feature_source: str = REPLAYED,
                 chunk_size: int = 1024, structure_rows: str = OFFICIAL_ROWS, matching: Optional[str] = None):
        self.reference, self.target = reference, target
        self.num_references = reference.latents[0].shape[0]  # object k takes reference k when > 1
        self.structure_rows = structure_rows
        self.matching = matching  # DiT backbones: which features are matched (host.FLUX_MATCHING)
        self.feature_source = feature_source
        # collected_from_inversion: (step, block, block_index) -> [HW, C] features of the branch
        # the step needs (structure steps: the target; others: the reference), see collect_features
        self.collected: dict[tuple, torch.Tensor] = {}
        # the layers' blocks as host.backbone names them; a bare number is a UNet output block
        self.blocks = frozenset(b if isinstance(b, tuple) else ("output", b) for b in blocks)
        self.masks = masks  # [(target_mask [H, W], reference_mask [H, W]), ...] at image size, one per object
        self.schedule = schedule
        self.strength = strength
        self.restrict_to_reference_mask = restrict_to_reference_mask
        self.chunk_size = chunk_size
        self._token_masks: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._adain_masks_cache: dict[tuple, list[tuple]] = {}
        self._target_sigmas: list[float] = target.sigmas.tolist()  # host copy: matching needs no tensor reads
        self._run_sigmas: Optional[torch.Tensor] = None  # the sampler's sample_sigmas, held so identity is safe
        self._run_first_sigma = math.nan
        self._reset()

    def __deepcopy__(self, memo):  # ComfyUI 0.3.75 deep-copies model_options on every clone
        return self

    def _reset(self) -> None:
        # branch rows: the N reference images, then the structure (target) image
        self._branches: dict[int, torch.Tensor] = {}  # step -> [N + 1, C, h, w]
        self._predictions: dict[int, torch.Tensor] = {}  # cond_or_uncond -> branch x0 [N + 1, C, h, w]
        self._step: Optional[int] = None
        self._awaiting_step_hook = False
        self._uploads: dict[tuple, torch.Tensor] = {}  # (name, device) -> fixed inversion data on the device
        self._uncond_steps: set[int] = set()  # steps whose UNet calls included an unconditional chunk

    # --- schedule bookkeeping -----------------------------------------------------------------

    def _global_index(self, sigma: float) -> int:
        sigmas = self._target_sigmas
        for index in range(self.target.start_step, len(sigmas) - 1):
            if math.isclose(sigmas[index], sigma, rel_tol=1e-4, abs_tol=1e-6):
                return index
        raise InputError(
            "sigmas: the sampler's schedule does not follow the target inversion's; connect the target "
            "DDIMInvert's SIGMAS output to the sampler"
        )

    def _first_sample_sigma(self, sample_sigmas: torch.Tensor) -> float:
        """``sample_sigmas[0]``, read to the host once per sampling run (every call of a run gets the
        same tensor) instead of once per UNet call."""
        if sample_sigmas is not self._run_sigmas:
            self._run_sigmas, self._run_first_sigma = sample_sigmas, sample_sigmas[0].item()
        return self._run_first_sigma

    def _uploaded(self, name: str, tensors: list[torch.Tensor], device) -> torch.Tensor:
        """``tensors`` (one ``[batch, ...]`` per step) stacked on ``device``: uploaded on first use in a
        sampling run, then indexed there, so no step blocks on a host-to-device copy."""
        key = (name, str(device))
        if key not in self._uploads:
            self._uploads[key] = torch.stack(list(tensors)).to(device)
        return self._uploads[key]

    def _branch_latents(self, step: int, device, dtype) -> torch.Tensor:
        if step not in self._branches:
            if step >= len(self.target.latents) - 1:
                raise InputError("sigmas: the sampler went past the target inversion's schedule")
            rows = torch.cat([self.reference.latents[step], self.target.latents[step][:1]])
            self._branches[step] = rows.to(device)  # one upload per run; later steps are made on the device
        return self._branches[step].to(device=device, dtype=dtype)

    # --- 1. apply-model wrapper: append the reference and structure branches to every chunk ----

    def apply_model(self, executor, x, sigma, c_concat, c_crossattn, control, transformer_options, **extra_conds):
        cond_or_uncond = list(transformer_options["cond_or_uncond"])
        chunks = len(cond_or_uncond)
        rows = x.shape[0] // chunks
        sigma_value = sigma[0].item()  # the call's only host read
        step = self._global_index(sigma_value) - self.target.start_step
        sample_sigmas = transformer_options.get("sample_sigmas")
        first = sample_sigmas is not None and math.isclose(self._first_sample_sigma(sample_sigmas), sigma_value,
                                                           rel_tol=1e-6)
        if first:
            if self._step != step:
                self._reset()
        elif self._awaiting_step_hook and step != self._step:
            raise InputError(
                "sampler: SemanticFeatureRearrange needs the Inversion Replay Sampler of the target's "
                "inversion as the sampler (SamplerCustom's sampler input)"
            )
        if self._step != step:
            self._predictions = {}
        self._step = step
        if 1 in cond_or_uncond:
            self._uncond_steps.add(step)
        # Other patches (e.g. Perturbed-Attention Guidance) may run extra UNet passes in the same
        # step; only the sampler's own first pass per cond/uncond, before CFG, steps the branches.
        record = not self._awaiting_step_hook
        if self.feature_source == FROM_INVERSION:
            options = dict(transformer_options)
            options[_LAYOUT_KEY] = rows
            options[_STEP_KEY] = step
            if record:
                self._predictions.setdefault(0, x)  # marks the step as run for post_cfg
            return executor(x, sigma, c_concat, c_crossattn, control, options, **extra_conds)
        branches = self._branch_latents(step, x.device, x.dtype)
        extra_rows = branches.shape[0]

        def extend(tensor):
            if not torch.is_tensor(tensor) or tensor.ndim == 0 or tensor.shape[0] != x.shape[0]:
                return tensor
            per_chunk = tensor.reshape(chunks, rows, *tensor.shape[1:])
            extra = per_chunk[:, :1].expand(chunks, extra_rows, *tensor.shape[1:])
            return torch.cat([per_chunk, extra], dim=1).reshape(chunks * (rows + extra_rows), *tensor.shape[1:])

        x_chunks = x.reshape(chunks, rows, *x.shape[1:])
        x_ext = torch.cat([x_chunks, branches[None].expand(chunks, *branches.shape)], dim=1)
        x_ext = x_ext.reshape(chunks * (rows + extra_rows), *x.shape[1:])
        options = dict(transformer_options)
        options[_LAYOUT_KEY] = rows
        options[_STEP_KEY] = step
        # a ControlNet acts on the output rows only: the branches stay exact replays of their inversions
        control = host.control_with_extra_rows(control, chunks, rows, extra_rows)
        out = executor(x_ext, extend(sigma), extend(c_concat), extend(c_crossattn), control, options,
                       **{name: extend(value) for name, value in extra_conds.items()})
        out = out.reshape(chunks, rows + extra_rows, *out.shape[1:])
        for chunk, kind in enumerate(cond_or_uncond):
            if record and kind not in self._predictions:
                self._predictions[kind] = out[chunk, rows:].detach()
        return out[:, :rows].reshape(chunks * rows, *out.shape[2:])

    # --- 2. attn1 patch: rearrange the output's norm1 features ---------------------------------

    def _layer_masks(self, hw: tuple[int, int], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The masks resized to a token grid, made once per grid and device (not per layer call)."""
        key = (hw, str(device))
        if key not in self._token_masks:
            self._token_masks[key] = [(corr.resize_mask(t, hw).to(device), corr.resize_mask(r, hw).to(device))
                                      for t, r in self.masks]
        return self._token_masks[key]

    def _adain_masks(self, hw: tuple[int, int], device) -> list[tuple]:
        """``(target_mask, reference_mask, target_pixels, reference_pixels)`` per pair on the latent grid,
        made once per grid and device: the pixel counts (and their at-least-2 check) are read back
        here, so masked AdaIN at each step needs no host read."""
        key = (hw, str(device))
        if key not in self._adain_masks_cache:
            self._adain_masks_cache[key] = [
                (t.view(hw), r.view(hw), corr.pixel_selection(t), corr.pixel_selection(r))
                for t, r in self._layer_masks(hw, device)
            ]
        return self._adain_masks_cache[key]

    def attn1_patch(self, n, context, value, extra_options):
        """:meth:`on_tokens` as the UNet's ``attn1_patch`` (what ``host.backbone`` installs on a UNet)."""
        return host.unet_attn1_patch(self.on_tokens, self.blocks)(n, context, value, extra_options)

    def on_tokens(self, tokens: host.ImageTokens) -> Optional[torch.Tensor]:
        """Token hook (``host.backbone``): the output rows' replaceable features at a chosen layer."""
        options = tokens.options
        rows = options.get(_LAYOUT_KEY)
        if rows is None:
            return None
        step = options[_STEP_KEY]
        if not self.schedule.injects(step):
            return None
        values, match = tokens.values, tokens.match
        cond_or_uncond = options["cond_or_uncond"]
        per_chunk = values.shape[0] // len(cond_or_uncond)
        structure = self.schedule.takes_structure(step)
        masks = self._layer_masks(tokens.grid, values.device)
        new = values.clone()
        for chunk, kind in enumerate(cond_or_uncond):
            if structure:
                if not self._takes_structure_features(kind, step, cond_or_uncond):
                    continue
            elif kind != 0:  # the unconditional branch is left unrearranged
                continue
            base = chunk * per_chunk
            if self.feature_source == FROM_INVERSION:
                stored_match, stored_values = self.collected[(step, tokens.block, tokens.depth)]
                ref_matches = [stored_match.to(values.device, match.dtype)]
                ref_values = [stored_values.to(values.device, values.dtype)]
                structure_feat = ref_values[0]
            else:
                first = base + rows
                ref_matches = list(match[first : first + self.num_references])
                ref_values = list(values[first : first + self.num_references])
                structure_feat = values[first + self.num_references]
            for row in range(base, base + rows):
                if structure:
                    new[row] = structure_feat
                    continue
                new[row] = self._rearranged(match[row], values[row], ref_matches, ref_values, masks)
        return new

    def _takes_structure_features(self, kind: int, step: int, cond_or_uncond) -> bool:
        """Whether the output rows of a chunk of ``kind`` (0 cond, 1 uncond) take the target's features
        on a structure step. ``official``: the unconditional output when the step runs one (cfg > 1;
        the official ``h[OUT_INDEX] = h[STRUCT_INDEX]`` with global indices 0/2 of its batch of 6,
        appearance_transfer_model_final.py L205), the conditional output left alone; at cfg 1, where
        the official code has no behaviour, the conditional output. ``conditional``: always the
        conditional output. Whether the step runs an unconditional pass is known from this call, or
        from the step or the one before when ComfyUI splits cond and uncond into separate calls."""
        if self.structure_rows == CONDITIONAL_ROWS:
            return kind == 0
        runs_uncond = 1 in cond_or_uncond or step in self._uncond_steps or step - 1 in self._uncond_steps
        return kind == (1 if runs_uncond else 0)

    def _rearranged(self, out_match, out_values, ref_matches: list[torch.Tensor], ref_values: list[torch.Tensor],
                    masks):
        """One output row's rearranged values. ``ref_matches`` / ``ref_values``: the matched and the
        replaceable features of each reference image (object k takes reference k when there are
        several; one reference serves every object). On a UNet both are its ``norm1`` features."""
        # fp16 cosines on CUDA (core casts after normalising): a near-tie may flip an argmax. CPU: unchanged.
        dtype = torch.float16 if out_match.is_cuda else None
        if len(masks) > 1:
            several = len(ref_matches) > 1
            per_object = ref_matches if several else ref_matches * len(masks)
            per_object_values = ref_values if several else ref_values * len(masks)
            return corr.rearrange_pairs(out_match, per_object, masks, self.strength, self.chunk_size, dtype,
                                        out_values=out_values, ref_values=per_object_values)
        out_mask, ref_mask = masks[0] if masks else (None, None)
        indices, valid = corr.semantic_nearest_neighbours(
            out_match, ref_matches[0], out_mask, ref_mask, chunk_size=self.chunk_size, dtype=dtype,
            restrict_to_ref_mask=self.restrict_to_reference_mask,
        )
        return corr.rearrange_features(out_values, ref_values[0], indices, valid, self.strength)

    # --- 3. after CFG: step the branches; after the sampler's step: masked AdaIN -------------

    def post_cfg(self, args) -> torch.Tensor:
        if self._step is None or 0 not in self._predictions:
            return args["denoised"]
        step = self._step
        if self.feature_source == FROM_INVERSION:
            self._predictions = {}
            self._awaiting_step_hook = True
            return args["denoised"]
        cond = self._predictions[0]
        uncond = self._predictions.get(1)
        scale = float(args["cond_scale"])
        x0 = cond if uncond is None else uncond + scale * (cond - uncond)
        index = self.target.start_step + step
        sigma_t, sigma_s = self._target_sigmas[index], self._target_sigmas[index + 1]
        current = self._branch_latents(step, x0.device, x0.dtype)
        stepped = []
        branches = [("reference", self.reference, k) for k in range(self.num_references)]
        for b, (name, inversion, image) in enumerate(branches + [("target", self.target, 0)]):
            noise_map = None
            if inversion.noise_maps is not None:
                noise_maps = self._uploaded(f"noise_maps_{name}", inversion.noise_maps, x0.device)
                noise_map = noise_maps[index - inversion.start_step][image].to(x0.dtype)
            stepped.append(inv.replay_step(current[b], x0[b], sigma_t, sigma_s, noise_map, True, self.target.process))
        self._branches[step + 1] = torch.stack(stepped)
        self._predictions = {}
        self._awaiting_step_hook = True
        return args["denoised"]

    def after_step(self, _sampler_step: int, x: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self._awaiting_step_hook = False
        if self._step is None or not self.schedule.aligns_colour(self._step):
            return x
        if self.feature_source == FROM_INVERSION:
            latents = self._uploaded("reference_latents", self.reference.latents, x.device)
            references = latents[min(self._step + 1, len(self.reference.latents) - 1)]
        else:
            branches = self._branches.get(self._step + 1)
            if branches is None:
                return x
            references = branches[: self.num_references]
        references = references.to(x.device, x.dtype)  # [N, C, h, w]: object k's statistics from reference k
        hw = tuple(x.shape[-2:])
        aligned = []
        for latent in x:
            if not self.masks:
                aligned.append(corr.adain(latent, references[0]))
                continue
            for k, (target_mask, reference_mask, target_pixels, reference_pixels) in enumerate(
                    self._adain_masks(hw, x.device)):
                reference = references[k if self.num_references > 1 else 0]
                latent = corr.masked_adain(latent, reference, target_mask, reference_mask,
                                           content_selection=target_pixels, style_selection=reference_pixels)
            aligned.append(latent)
        return torch.stack(aligned)


def collect_features(model, patch: AppearanceTransferPatch, positive) -> None:
    """Fills ``patch.collected`` for ``collected_from_inversion``: one conditional UNet evaluation
    per injected step, on the stored inversion latent of the branch that step needs (the target on
    structure steps, the reference otherwise), recording the chosen layers' ``norm1`` features.

    This equals the replayed branches exactly when the branches would retrace their inversions:
    the sampler's cfg and conditioning equal the inversion's and the model carries the same
    patches. It costs one batch-1 evaluation per injected step instead of two extra rows per
    chunk at every step.
    """
    steps = [k for k in range(len(patch.target.latents) - 1) if patch.schedule.injects(k)]
    if not steps:
        return
    recording: dict = {}

    def record(tokens: host.ImageTokens) -> None:
        keep = lambda t: t[0].detach().to(torch.float16 if t.is_cuda else t.dtype).clone()  # noqa: E731
        match = keep(tokens.match)
        values = match if tokens.values is tokens.match else keep(tokens.values)
        patch.collected[(recording["step"], tokens.block, tokens.depth)] = (match, values)
        return None

    recorder = model.clone()
    host.backbone(model).add_token_hook(recorder, record, patch.blocks, patch.matching)
    latent = patch.target.latents[0]

    def collect(run: host.ModelRun) -> None:
        device = run.device
        prepared = run.prepare_conditioning(host.without_control(positive), latent.to(device))
        for step in steps:
            host.check_interrupted()
            source = patch.target if patch.schedule.takes_structure(step) else patch.reference
            x = source.latents[step][:1].to(device)
            sigma = patch.target.sigmas[patch.target.start_step + step].reshape(1).to(device)
            recording["step"] = step
            run.denoise(x, sigma, prepared)

    host.run_with_model(recorder, tuple(latent.shape), collect)


def automatic_masks(model, reference: inv.Inversion, target: inv.Inversion, positive, token: int, mode: str,
                    step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target_mask, reference_mask)``, binary ``[H, W]`` at image size, made from the UNet's own
    attention as the official code makes them without SAM masks (``core.segmentation``).

    One conditional evaluation of the reference and target inversion latents at editing step
    ``step`` (the branches' latents there when they retrace their inversions) records, overwriting
    per call as the official ``Segmentor.update_attention`` does, the head-averaged maps of the
    last decoder self-attention at the highest attention level and of the last decoder
    cross-attention at the level below (SD1.5 at 512 px: 64x64 and 32x32, the official
    ``self_attention_64`` / ``cross_attention_64``); ``self_segmentation`` clusters the former and
    names the clusters by the word's column of the latter. ``cross_attention`` thresholds the
    word's column of the last cross-attention two levels below (16x16, the official
    ``cross_attention_32`` of ``cross_attn_map``). Masks on a token grid are repeated to image size.
    """
    latent_hw = tuple(target.latents[0].shape[-2:])
    captured: dict[str, torch.Tensor] = {}

    def capture(kind: str):
        def store(maps: torch.Tensor, grid: tuple[int, int]) -> None:
            captured[kind], captured[kind + "_hw"] = maps, grid
        return store

    backbone = host.backbone(model)
    self_block, cross_block = backbone.segmentation_blocks(mode)
    recorder = model.clone()
    if mode == SELF_SEGMENTATION:
        backbone.add_attention_capture(recorder, self_block, "self", capture("self"))
    backbone.add_attention_capture(recorder, cross_block, "cross", capture("cross"))
    step = max(0, min(step, len(target.latents) - 2))

    def evaluate(run: host.ModelRun) -> None:
        device = run.device
        x = torch.cat([reference.latents[step][:1], target.latents[step][:1]]).to(device)
        prepared = run.prepare_conditioning(host.without_control(positive), x)
        sigma = target.sigmas[target.start_step + step].reshape(1).expand(2).to(device)
        run.denoise(x, sigma, prepared)

    host.run_with_model(recorder, (2, *target.latents[0].shape[1:]), evaluate)
    image_hw = tuple(d * _IMAGE_DOWNSCALE for d in latent_hw)
    if token >= captured["cross"].shape[-1]:
        raise InputError(f"object_word: is text token {token}, past the conditioning's {captured['cross'].shape[-1]} "
                         "tokens; connect the positive conditioning of the prompt that holds the word")
    masks = []
    for row in (1, 0):  # target, reference
        if mode == SELF_SEGMENTATION:
            grid = seg.self_segmentation_mask(captured["self"][row], captured["cross"][row], token,
                                              captured["self_hw"], captured["cross_hw"])
        else:
            grid = seg.cross_attention_mask(captured["cross"][row], token, captured["cross_hw"])
        if float(grid.sum()) == 0:
            raise InputError(f"object_word: its cross-attention is flat, so {mode} finds no object; connect "
                             "masks or set auto_mask to off")
        masks.append(seg.upsample_nearest(grid, image_hw))
    return masks[0], masks[1]


def _check_inversion(inversion, name: str) -> inv.Inversion:
    if not isinstance(inversion, inv.Inversion):
        raise InputError(f"{name}: expected the INVERSION output of DDIMInvert")
    return inversion


def _mask_list(mask: Optional[torch.Tensor], name: str, image_hw: tuple[int, int]) -> Optional[list[torch.Tensor]]:
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise InputError(f"{name}: expected a MASK [objects, height, width], got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != image_hw:
        raise InputError(
            f"{name}: is {mask.shape[-1]}x{mask.shape[-2]} px but its image is {image_hw[1]}x{image_hw[0]} px; "
            "make the mask from the same (scaled) image that was inverted"
        )
    masks = [m.float().cpu() for m in mask]
    for index, m in enumerate(masks):
        if float(m.max()) <= 0:
            raise InputError(f"{name}: mask {index} is empty; mark the object (white = object) or leave the input unconnected")
        if int((m >= 1.0).sum()) < 2:
            raise InputError(f"{name}: mask {index} has fewer than 2 fully selected pixels; its colour statistics need more")
    return masks


def build_patch(model, reference, target, layers: str, strength: float, schedule: TransferSchedule,
                restrict_to_reference_mask: bool, reference_mask=None, target_mask=None,
                feature_source: str = REPLAYED, structure_rows: str = OFFICIAL_ROWS,
                dit_matching: Optional[str] = None) -> AppearanceTransferPatch:
    """Validates the inputs and makes the patch for ``model`` (not yet applied)."""
    reference = _check_inversion(reference, "reference")
    target = _check_inversion(target, "target")
    family = host.model_family(model)
    for name, inversion in (("reference", reference), ("target", target)):
        if inversion.model_family != family:
            raise InputError(f"{name}: inverted with a {inversion.model_family} model but the model is {family}; "
                             "invert with the same model family")
    ref_batch, tgt_batch = reference.latents[0].shape[0], target.latents[0].shape[0]
    if tgt_batch != 1:
        raise InputError(f"target: inverted from a batch of {tgt_batch} images; invert one target image (several "
                         "references, one per object, are a batch on the reference side)")
    if reference.latents[0].shape[1:] != target.latents[0].shape[1:]:
        ref_hw = tuple(d * _IMAGE_DOWNSCALE for d in reference.latents[0].shape[-2:])
        tgt_hw = tuple(d * _IMAGE_DOWNSCALE for d in target.latents[0].shape[-2:])
        raise InputError(f"reference: its image is {ref_hw[1]}x{ref_hw[0]} px but the target's is {tgt_hw[1]}x{tgt_hw[0]} px; "
                         "scale both images to the same size")
    if (reference.start_step != target.start_step or reference.sigmas.shape != target.sigmas.shape
            or not torch.allclose(reference.sigmas, target.sigmas)):
        raise InputError("reference: inverted with another schedule than the target (steps, scheduler or skip_steps "
                         "differ); invert both images with the same DDIMInvert settings")
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"strength: {strength} must be between 0 and 1")
    image_hw = tuple(d * _IMAGE_DOWNSCALE for d in target.latents[0].shape[-2:])
    target_masks = _mask_list(target_mask, "target_mask", image_hw)
    reference_masks = _mask_list(reference_mask, "reference_mask", image_hw)
    if target_masks is None and reference_masks is None:
        masks = []
    else:
        if target_masks is None:
            target_masks = [torch.ones(image_hw)] * len(reference_masks)
        if reference_masks is None:
            reference_masks = [torch.ones(image_hw)] * len(target_masks)
        if len(target_masks) != len(reference_masks):
            raise InputError(f"reference_mask: has {len(reference_masks)} object masks but target_mask has "
                             f"{len(target_masks)}; give one reference mask per target mask, in the same order")
        masks = list(zip(target_masks, reference_masks))
    if feature_source not in FEATURE_SOURCES:
        raise InputError(f"feature_source: {feature_source!r} is not one of {list(FEATURE_SOURCES)}")
    if ref_batch > 1:
        if target_mask is None or len(masks) != ref_batch:
            given = "none" if target_mask is None else len(masks)
            raise InputError(f"target_mask: the reference is a batch of {ref_batch} images, so connect {ref_batch} "
                             f"target masks (object k takes reference image k's appearance); it has {given}")
        if feature_source == FROM_INVERSION:
            raise InputError("feature_source: collected_from_inversion takes one reference image; use "
                             "replayed_each_step with a batch of references")
    blocks = host.backbone(model).select_layers(layers)
    if structure_rows not in STRUCTURE_ROWS:
        raise InputError(f"structure_rows: {structure_rows!r} is not one of {list(STRUCTURE_ROWS)}")
    if dit_matching is not None and dit_matching not in host.FLUX_MATCHING:
        raise InputError(f"dit_matching: {dit_matching!r} is not one of {list(host.FLUX_MATCHING)}")
    return AppearanceTransferPatch(reference, target, blocks, masks, schedule, strength, restrict_to_reference_mask,
                                   feature_source, structure_rows=structure_rows, matching=dit_matching)


def apply_patch(model, patch: AppearanceTransferPatch):
    """A clone of ``model`` carrying the patch."""
    patched = model.clone()
    host.add_apply_model_wrapper(patched, "exemplar_edit_appearance", patch.apply_model)
    host.backbone(model).add_token_hook(patched, patch.on_tokens, patch.blocks, patch.matching)
    host.add_post_cfg_function(patched, patch.post_cfg)
    host.add_step_hook(patched, patch.after_step)
    return patched


class SemanticFeatureRearrange(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = TransferSchedule()
        step_tip = " Counted as the official code does: the UNet call of denoising step k uses counter max(k-1, 0)."
        return io.Schema(
            node_id="SemanticFeatureRearrange",
            display_name="Semantic Feature Rearrange (Eye-for-an-eye)",
            category=CATEGORY,
            description=(
                "Appearance transfer by semantic correspondence (Eye-for-an-eye, Go et al. 2024): the output keeps "
                "the target's structure and takes the reference's appearance, eye to eye and wheel to wheel. Returns "
                "a patched MODEL; sample it with SamplerCustom (add_noise off, cfg 1 by default), the Inversion Replay "
                "Sampler of the TARGET's inversion, and the target DDIMInvert's LATENT and SIGMAS. Invert both images "
                "with DDIMInvert (edit_friendly_ddpm, 100 steps, cfg 3.5, skip_steps 32 in the paper's code). With no "
                "mask connected, auto_mask can make the object masks from the model's own attention (official "
                "self-segmentation); a batch of N reference images with N target masks gives object k reference "
                "k's appearance; a ControlNet on the sampler's conditioning acts on the output only."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input stays untouched). "
                               "Other patches such as FreeU_V2 or LoRAs may come before or after."),
                InversionType.Input("reference", tooltip="Inversion of the appearance (reference) image, from DDIMInvert."),
                InversionType.Input("target", tooltip="Inversion of the structure (target) image, from DDIMInvert with the "
                                    "same settings; also feed it to the Inversion Replay Sampler."),
                io.Combo.Input("layers", options=list(LAYER_CHOICES), default="two_highest_decoder_levels",
                               tooltip="Decoder self-attention layers whose features are rearranged. "
                                       "two_highest_decoder_levels is the official choice: SD1.5 output blocks 6-11 "
                                       "(32x32 and 64x64 at 512 px); SDXL output blocks 0-5 (all 36 transformer blocks "
                                       "at 32x32 and 64x64 at 1024 px)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1: each output feature is replaced by its best-matching reference feature "
                                       "(official hard nearest neighbour). Lower blends with the output's own feature."),
                io.Int.Input("injection_start_step", default=defaults.injection_start, min=0, max=1000,
                             tooltip="First step of feature injection (official feat_range 10-70)." + step_tip),
                io.Int.Input("injection_end_step", default=defaults.injection_end, min=0, max=1000,
                             tooltip="Injection stops before this step." + step_tip),
                io.Int.Input("structure_interval", default=defaults.structure_interval, min=0, max=1000,
                             tooltip="Every this many steps (and below structure_end_step) the output takes the "
                                     "target's own features instead of rearranged ones, to keep the structure "
                                     "(official: 5). 0 turns structure steps off."),
                io.Int.Input("structure_end_step", default=defaults.structure_end, min=0, max=1000,
                             tooltip="Structure steps happen only below this step (official: 40)." + step_tip),
                io.Int.Input("adain_start_step", default=defaults.adain_start, min=0, max=1000,
                             tooltip="After each denoising step from this one on, the output latent's per-channel "
                                     "statistics inside the target mask are matched to the reference latent's inside "
                                     "its mask (masked AdaIN; official: from step 49, i.e. steps 49-67 of 68)."),
                io.Int.Input("adain_end_step", default=defaults.adain_end, min=0, max=1000,
                             tooltip="Masked AdaIN stops before this step (official: 101, i.e. through the last step)."),
                io.Boolean.Input("restrict_to_reference_mask", default=False,
                                 tooltip="Off (official): reference positions outside the reference mask remain "
                                         "candidates with cosine 0. On: matches never leave the reference mask."),
                io.Combo.Input("feature_source", options=list(FEATURE_SOURCES), default=REPLAYED,
                               tooltip="replayed_each_step: the reference and target branches are replayed beside "
                                       "the output in every UNet batch (exact at any cfg; about 3x plain sampling). "
                                       "collected_from_inversion: their features are collected once, before sampling, "
                                       "from the stored inversion latents (one conditional evaluation per injected "
                                       "step; identical when the sampler's cfg and prompt equal the inversion's). "
                                       "Needs 'positive'."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="For auto_mask and collected_from_inversion: the conditioning the "
                                              "images were inverted with (DDIMInvert's positive). A ControlNet "
                                              "attached to it is ignored there."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="Where the object is in the reference image (image size). A batch of N masks "
                                      "pairs with N target masks: object k of the target takes the appearance of "
                                      "object k of the reference. Unconnected: the whole image."),
                io.Mask.Input("target_mask", optional=True,
                              tooltip="Where the object is in the target image (image size). Outside it the target is "
                                      "kept, so its background survives. Unconnected: auto_mask decides."),
                io.Combo.Input("auto_mask", options=list(AUTO_MASKS), default=OFF, optional=True,
                               tooltip="When no mask is connected, make both masks from the UNet's own attention, as "
                                       "the official code does without SAM masks. self_segmentation: k-means (5 "
                                       "clusters) over the self-attention of each image, the clusters the object "
                                       "word attends to. cross_attention: the object word's cross-attention map, "
                                       "min-max normalised, above 0.1. off: the whole image (the background is "
                                       "repainted). Needs positive, clip, prompt and object_word."),
                io.String.Input("object_word", default="", optional=True,
                                tooltip="auto_mask: the word of the prompt that names the object (official: the "
                                        "domain word of 'A photo of a {domain}')."),
                io.Clip.Input("clip", optional=True,
                              tooltip="auto_mask: the CLIP that encoded the prompt, to find object_word's token."),
                io.Combo.Input("structure_rows", options=list(STRUCTURE_ROWS), default=OFFICIAL_ROWS, optional=True,
                               tooltip="At cfg above 1, which output rows take the target's features on structure "
                                       "steps. official: the unconditional output (as the official code at its "
                                       "README's cfg 2.5; the conditional output keeps its own features). "
                                       "conditional: the conditional output, the unconditional left alone. At cfg 1 "
                                       "both take the conditional output."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="auto_mask: the text of the positive prompt (the same text as its "
                                        "CLIPTextEncode), to find object_word's token."),
                io.Combo.Input("dit_matching", options=list(host.FLUX_MATCHING), default=host.FLUX_DEFAULT_MATCHING,
                               optional=True,
                               tooltip="FLUX-class (DiT) models only: which image-token features find the "
                                       "correspondence. key/query/value: the self-attention's own (rotary "
                                       "embedding undone); hidden: the block's input hidden state. The rearranged "
                                       "features are the tokens' queries, keys and values in every case. UNet "
                                       "models match their norm1 features and ignore this."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The patched clone of the model."),
                     io.Mask.Output(display_name="target_mask",
                                    tooltip="The target masks used (connected, automatic, or the whole image)."),
                     io.Mask.Output(display_name="reference_mask",
                                    tooltip="The reference masks used (connected, automatic, or the whole image).")],
        )

    @classmethod
    def validate_inputs(cls, injection_start_step=None, injection_end_step=None, adain_start_step=None,
                        adain_end_step=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        for start, end in (("injection_start_step", "injection_end_step"), ("adain_start_step", "adain_end_step")):
            problem = host.step_window_problem(start, values.get(start), end, values.get(end))
            if problem:
                raise InputError(problem)

    @classmethod
    def execute(cls, model, reference, target, layers, strength, injection_start_step, injection_end_step,
                structure_interval, structure_end_step, adain_start_step, adain_end_step,
                restrict_to_reference_mask, feature_source=REPLAYED, positive=None, reference_mask=None,
                target_mask=None, auto_mask=OFF, object_word="", clip=None, structure_rows=OFFICIAL_ROWS,
                prompt="", dit_matching=None) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        host.check_sigma_space_model(model, flows=True)
        schedule = TransferSchedule(injection_start_step, injection_end_step, structure_interval,
                                    structure_end_step, adain_start_step, adain_end_step)
        if auto_mask != OFF and reference_mask is None and target_mask is None:
            build_patch(model, reference, target, layers, strength, schedule, restrict_to_reference_mask)  # checks first
            if positive is None:
                raise InputError(f"positive: auto_mask {auto_mask} needs the conditioning of the prompt that holds "
                                 "object_word; connect it, or set auto_mask to off")
            if clip is None:
                raise InputError(f"clip: auto_mask {auto_mask} needs the CLIP that encoded the prompt, to find "
                                 "object_word; connect it, or set auto_mask to off")
            token = host.word_token_position(clip, prompt, object_word)
            target_mask, reference_mask = automatic_masks(model, reference, target, positive, token, auto_mask,
                                                          schedule.adain_start)
            target_mask, reference_mask = target_mask[None], reference_mask[None]
        patch = build_patch(model, reference, target, layers, strength, schedule, restrict_to_reference_mask,
                            reference_mask, target_mask, feature_source, structure_rows, dit_matching)
        if feature_source == FROM_INVERSION:
            if positive is None:
                raise InputError("positive: collected_from_inversion needs the conditioning the images were inverted "
                                 "with; connect it, or use replayed_each_step")
            collect_features(model, patch, positive)
        image_hw = tuple(d * _IMAGE_DOWNSCALE for d in patch.target.latents[0].shape[-2:])
        pairs = patch.masks or [(torch.ones(image_hw), torch.ones(image_hw))]
        used_target = torch.stack([t for t, _ in pairs])
        used_reference = torch.stack([r for _, r in pairs])
        return io.NodeOutput(apply_patch(model, patch), used_target, used_reference)


class OfficialFreeUPatch:
    """``output_block_patch``: the official Eye-for-an-eye FreeU (``core.freeu``) at the first output
    block of each decoder level, on the backbone ``h`` only (the skip passes unchanged)."""

    def __init__(self, level_starts: frozenset[int], model_channels: int, b1: float, b2: float, s1: float,
                 s2: float):
        self.level_starts, self.model_channels = level_starts, model_channels
        self.b1, self.b2, self.s1, self.s2 = b1, b2, s1, s2

    def __call__(self, h, hsp, transformer_options):
        block = transformer_options.get("block")
        if block is None or block[0] != "output" or block[1] not in self.level_starts:
            return h, hsp
        constants = freeu.level_constants(h.shape[1], self.model_channels, self.b1, self.b2, self.s1, self.s2)
        if constants is None:
            return h, hsp
        return freeu.official_freeu(h, *constants), hsp


class EyeForAnEyeFreeU(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        (b1, b2), (s1, s2) = freeu.BACKBONE_SCALES, freeu.SKIP_FREQUENCY_SCALES
        return io.Schema(
            node_id="EyeForAnEyeFreeU",
            display_name="FreeU (Eye-for-an-eye official)",
            category=CATEGORY,
            description=(
                "FreeU as the official Eye-for-an-eye UNet hard-codes it: once per decoder level, on the backbone "
                "features entering the level (before the skip is concatenated), the first half of the channels "
                "is scaled by b and the whole backbone's lowest frequencies by s. ComfyUI's FreeU node acts at "
                "every output block and filters the skip features instead. Apply it to the model that inverts "
                "AND samples (the official code runs it in both)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input stays untouched)."),
                io.Float.Input("b1", default=b1, min=0.0, max=10.0, step=0.01,
                               tooltip="Backbone scale at levels with 4x the base channels (SD1.5: 1280; official 1.2)."),
                io.Float.Input("b2", default=b2, min=0.0, max=10.0, step=0.01,
                               tooltip="Backbone scale at levels with 2x the base channels (SD1.5: 640; official 1.4)."),
                io.Float.Input("s1", default=s1, min=0.0, max=10.0, step=0.01,
                               tooltip="Low-frequency scale of the backbone at the b1 levels (official 0.9)."),
                io.Float.Input("s2", default=s2, min=0.0, max=10.0, step=0.01,
                               tooltip="Low-frequency scale of the backbone at the b2 levels (official 0.2)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The patched clone of the model.")],
        )

    @classmethod
    def execute(cls, model, b1, b2, s1, s2) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if host.backbone(model).kind != "unet":
            raise InputError("model: FreeU scales the skip and backbone features of a UNet decoder; this model is a "
                             "FLUX-class DiT, which has none. Leave this node out for it.")
        patched = model.clone()
        patched.set_model_output_block_patch(
            OfficialFreeUPatch(host.decoder_level_starts(model), host.model_channels(model), b1, b2, s1, s2))
        return io.NodeOutput(patched)
