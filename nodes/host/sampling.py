"""Sampling: the pack's samplers, guiders and direct UNet evaluations, all run by ComfyUI's own
sampling code (``CFGGuider.sample``) and extended only through its documented extension points:
``KSAMPLER`` sampler functions, ``comfy.samplers.Sampler`` objects, and ``WrappersMP`` wrappers."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import latent_preview

from .facts import InputError, check_interrupted, output_scale

WRAPPER_KEY = "exemplar_edit"
STEP_HOOKS_KEY = "exemplar_edit_step_hooks"

# --- a custom sampler loop (Inversion Replay Sampler, DDIMInvert) -------------------------------

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


class _LoopSampler(comfy.samplers.Sampler):
    """A SAMPLER (for SamplerCustom / SamplerCustomAdvanced) that runs one of the pack's loops.

    It is ``KSAMPLER`` without the model's noise scaling at the start when no noise is added: the
    loops start from the latent they are given (an inversion's latent, or the clean image), and a
    rectified-flow model's scaling (``sigma * noise + (1 - sigma) * latent``) would erase a latent
    given at sigma 1. For eps/v models that scaling is the identity when the noise is zero, so
    nothing changes there. Added noise (add_noise on) is scaled as the stock samplers scale it."""

    def __init__(self, loop: "SamplerLoop"):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        sampling = model_wrap.inner_model.model_sampling
        if latent_image is None:
            x = noise
        elif bool(torch.count_nonzero(noise) == 0):
            x = latent_image
        else:
            x = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        k_callback = None
        total_steps = len(sigmas) - 1
        if callback is not None:
            k_callback = lambda step: callback(step["i"], step["denoised"], step["x"], total_steps)  # noqa: E731
        samples = self._run(model_k, x, sigmas, extra_args, k_callback)
        if float(sigmas[-1]) < 1.0:  # a rectified-flow model divides by 1 - sigma here
            samples = sampling.inverse_noise_scaling(sigmas[-1], samples)
        return samples

    @torch.no_grad()
    def _run(self, model, x, sigmas, extra_args, callback):
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

        return self.loop(denoise, x, sigmas, context, on_step)


def make_sampler(loop: SamplerLoop) -> Any:
    """A SAMPLER (for SamplerCustom / SamplerCustomAdvanced) that runs ``loop``.

    ``denoise(x, sigma)`` is ComfyUI's guided x0 prediction: CFG, the model's patches and
    wrappers, ControlNets and LoRAs all apply as with any stock sampler.
    """
    return _LoopSampler(loop)


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


# --- direct UNet evaluations inside ComfyUI's sampling set-up ----------------------------------

T = TypeVar("T")


class ModelRun:
    """A model loaded and made active by ComfyUI's own sampler set-up (``CFGGuider.sample``: model
    and ControlNet loading, hooks, wrappers, ``pre_run``/``cleanup``), for direct evaluations.

    ``denoise`` evaluates the model the run actually loaded, which for a ``differentiable_model``
    on a current host is a private copy with ordinary weights (``host.gradients``)."""

    def __init__(self, guider, model_options: dict):
        self._guider = guider
        self.model_options = model_options

    @property
    def base_model(self):
        """The loaded ``BaseModel`` the run evaluates."""
        return self._guider.inner_model

    @property
    def patcher(self):
        """The ModelPatcher the run loaded (for model facts: ``host.uses_pooled_text(run.patcher)``)."""
        return self._guider.model_patcher

    @property
    def device(self) -> torch.device:
        return self._guider.model_patcher.load_device

    def prepare_conditioning(self, conditioning: list, x: torch.Tensor) -> list:
        """A CONDITIONING made ready for ``denoise`` at latents shaped like ``x``, exactly as a
        sampler prepares it (model-specific extra conds such as SDXL's size embedding included).
        Differentiable with respect to the conditioning tensors."""
        conds = comfy.samplers.process_conds(
            self.base_model, x, {"positive": comfy.sampler_helpers.convert_cond(conditioning)}, x.device,
            latent_image=x, seed=0,
        )
        return conds["positive"]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, prepared: list) -> torch.Tensor:
        """D(x; sigma): the model's x0 prediction under one prepared conditioning, as the sampler
        computes it (patches and attention hooks apply; no CFG). ``x`` is in sigma space
        (``x0 + sigma * noise``), ``sigma`` has shape ``[batch]``. Differentiable inside
        ``gradient_mode`` when the run's model is a ``differentiable_model``."""
        return comfy.samplers.calc_cond_batch(self.base_model, [prepared], x, sigma, self.model_options)[0]

    def output_scale(self, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """dD/d(output) of the run's model (see ``facts.output_scale``)."""
        return output_scale(self.patcher, sigma, like)


class _BodySampler(comfy.samplers.Sampler):
    """A ``comfy.samplers.Sampler`` whose ``sample`` runs a body once (as ComfyUI's training node
    runs its training loop), then hands the latent back unchanged."""

    def __init__(self, body: Callable[[ModelRun], Any]):
        self.body = body
        self.result: Any = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.result = self.body(ModelRun(model_wrap, extra_args.get("model_options", {})))
        return latent_image if latent_image is not None else noise


def run_with_model(model, latent_shape: tuple[int, ...], body: Callable[[ModelRun], T]) -> T:
    """``body(run)`` with ``model`` set up by the stock ``CFGGuider.sample`` for latents of
    ``latent_shape`` (model loading, wrappers and callbacks of every pack, cleanup afterwards);
    returns what the body returns. Nothing is sampled."""
    guider = comfy.samplers.CFGGuider(model)
    sampler = _BodySampler(body)
    zeros = torch.zeros(latent_shape)
    guider.sample(zeros, zeros.clone(), sampler, torch.tensor([1.0, 0.0]), disable_pbar=True, seed=0)
    return sampler.result


# --- patch points used by attention-editing methods ---------------------------------------------


def add_apply_model_wrapper(model, key: str, wrapper: Callable) -> None:
    """Wraps ``BaseModel.apply_model`` on the clone ``model``:
    ``wrapper(executor, x, sigma, c_concat, c_crossattn, control, transformer_options, **extra_conds)``."""
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key, wrapper)


def control_with_extra_rows(control: Optional[dict], chunks: int, rows: int, extra_rows: int) -> Optional[dict]:
    """The ``control`` an apply-model wrapper received (ControlNet / T2I-Adapter residuals: lists of
    ``[chunks*rows, C, h, w]`` tensors under "input", "middle", "output") for a batch the wrapper
    widened to ``rows + extra_rows`` per chunk: the original rows keep their residuals, the extra
    rows get zeros, so they run as without the control."""
    if control is None:
        return None

    def widen(residual):
        if not torch.is_tensor(residual):
            return residual
        if residual.shape[0] != chunks * rows:
            residual = residual.expand(chunks * rows, *residual.shape[1:])
        per_chunk = residual.reshape(chunks, rows, *residual.shape[1:])
        zeros = per_chunk.new_zeros(chunks, extra_rows, *residual.shape[1:])
        return torch.cat([per_chunk, zeros], dim=1).reshape(chunks * (rows + extra_rows), *residual.shape[1:])

    return {key: [widen(r) for r in value] if isinstance(value, list) else value for key, value in control.items()}


def without_control(conditioning: list) -> list:
    """A CONDITIONING without the ControlNets attached to it (ControlNetApply puts them in each
    entry's options under "control"), for evaluations that must not see them."""
    return [[tensor, {k: v for k, v in options.items() if k != "control"}] for tensor, options in conditioning]


def add_post_cfg_function(model, function: Callable) -> None:
    """``function(args) -> denoised`` after CFG; args carry cond_scale, cond/uncond_denoised, sigma."""
    model.set_model_sampler_post_cfg_function(function)


def add_step_hook(model, hook: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``hook(step_index, x_next, sigma_next) -> x_next`` runs after every step of the pack's own
    samplers (Inversion Replay Sampler), e.g. to align the colour statistics of the new latent."""
    options = model.model_options.setdefault("transformer_options", {})
    options[STEP_HOOKS_KEY] = list(options.get(STEP_HOOKS_KEY, [])) + [hook]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's optimised attention on projected ``[B, tokens, heads*dim]`` q/k/v (for replaces)."""
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.optimized_attention(q, k, v, heads)


# --- a guider whose sampling is a step-by-step program (pix2pix-zeroCon) --------------------------


class GuidedSteps:
    """What a :func:`make_stepwise_guider` program sees: the user's sampler, one step at a time.

    - ``sample_step(x, k, positive, negative, cond_offset=None)``: the user's sampler from
      ``sigmas[k]`` to ``sigmas[k+1]`` with CFG of the named conditionings (keys of the guider's
      conds). ``cond_offset``: the positive row is evaluated at ``x + cond_offset`` (its own,
      separately guided latent, as pix2pix-zero's CFG batch), combined in eps space.
    - ``denoise(x, sigma, key)``: x0 prediction under one conditioning, no CFG; differentiable
      inside ``gradient_mode`` (the guider's model is a ``differentiable_model``).
    """

    def __init__(self, guider, sample, passes: "_Passes", sigmas, extra_args: dict, callback):
        self.guider = guider
        self._sample = sample  # the rest of the SAMPLER_SAMPLE chain: other packs' wrappers, then the sampler
        self.sampler = sample.class_obj  # the user's SAMPLER
        self._moved_checked = False
        self._passes = passes
        self.sigmas = sigmas
        self.model_options = extra_args.get("model_options", {})
        self.seed = extra_args.get("seed")
        self._extra_args = extra_args
        self.callback = callback
        self.steps = len(sigmas) - 1
        self.levels: list[float] = sigmas.tolist()  # the schedule on the host, read once per run
        self.cfg = float(guider.cfg)
        flow = isinstance(guider.inner_model.model_sampling, comfy.model_sampling.CONST)
        self.process = "rectified_flow" if flow else "variance_exploding"  # core.inversion.FLOW / VE

    def _max_denoise(self, sigma: float) -> bool:
        max_sigma = float(self.guider.inner_model.model_sampling.sigma_max)
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    def start(self, noise: torch.Tensor, latent_image: torch.Tensor) -> torch.Tensor:
        """The latent at ``sigmas[0]``: the noise added as the stock samplers add it. Without noise it is
        the latent itself (an inverted latent), also for rectified-flow models, whose scaling
        ``sigma * noise + (1 - sigma) * latent`` would erase a latent given at sigma 1."""
        if not bool(torch.count_nonzero(noise)):
            return latent_image
        sampling = self.guider.inner_model.model_sampling
        return sampling.noise_scaling(self.sigmas[0], noise, latent_image, self._max_denoise(self.levels[0]))

    def _noise_starting_at(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The noise for which the sampler's own noise scaling at ``sigmas[k]`` with latent ``x`` gives
        ``x``: zero for eps/v models (their scaling adds ``sigma * noise``); for rectified-flow models,
        whose scaling is ``sigma * noise + (1 - sigma) * x``, the noise that restores the lost ``sigma * x``.
        Solved from the host's (affine) scaling itself, so a model's noise scale is honoured."""
        sampling = self.guider.inner_model.model_sampling
        sigma, max_denoise = self.sigmas[k], self._max_denoise(self.levels[k])
        zeros = torch.zeros_like(x)
        offset = sampling.noise_scaling(sigma, zeros, x, max_denoise)  # b(x)
        if torch.equal(offset, x):
            return zeros
        gain = sampling.noise_scaling(sigma, torch.ones_like(x[:1]), zeros[:1], max_denoise).flatten()[0]
        return (x - offset) / gain

    def sample_step(self, x: torch.Tensor, k: int, positive: str, negative: str,
                    cond_offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_interrupted()
        self._passes.current = (positive, negative, cond_offset)
        try:
            callback = None
            if self.callback is not None:
                callback = lambda i, denoised, x_now, _total: self.callback(k + i, denoised, x_now, self.steps)  # noqa: E731
            extra_args = dict(self._extra_args, seed=None if self.seed is None else self.seed + k)
            noise = self._noise_starting_at(x, k)
            # the sampler gets its own copy of the two levels: one that edits its sigmas in place (as
            # uni_pc sets a final 0 to 0.001) must neither change the schedule nor fail on an
            # inference-mode tensor (the guider samples outside inference mode)
            levels = self.sigmas[k:k + 2].clone()
            x_next = self._sample(self.guider, levels, extra_args, callback, noise, x, None, True)
            if noise is not None and bool(torch.count_nonzero(noise)):
                # the stock sampler divided its result by (1 - sigma_next) (inverse noise scaling): undo it
                sampling = self.guider.inner_model.model_sampling
                x_next = sampling.noise_scaling(self.sigmas[k + 1], torch.zeros_like(x_next), x_next)
        finally:
            self._passes.current = _Passes.DEFAULT
        if not self._moved_checked and self.levels[k] != self.levels[k + 1]:
            self._moved_checked = True  # once per run: the comparison waits for the device
            if torch.equal(x_next, x):
                name = stock_sampler_name(self.sampler, comfy.samplers.SAMPLER_NAMES) or "this sampler"
                raise InputError(f"sampler: {name} left the latent where it was in a step from sigma "
                                 f"{self.levels[k]:.4g} to {self.levels[k + 1]:.4g}, so it cannot run one step at a "
                                 f"time, as this guider runs your sampler; {SAMPLERS_THAT_RUN}")
        return x_next

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, key: str) -> torch.Tensor:
        return comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.guider.conds[key]], x, sigma,
                                              self.model_options)[0]

    def denoise_each(self, inputs: dict[str, torch.Tensor], sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{key: D(x_key; sigma)}``: several conditionings, each at its own latent, in one batched model
        call (as a CFG batch; ``cond_or_uncond`` indexes ``inputs`` in order). Differentiable inside
        ``gradient_mode`` with respect to every input. Conditionings with an area, a mask or a ControlNet
        (which read the latent before the model call) are evaluated one call each."""
        keys = list(inputs)
        conds = [self.guider.conds[key] for key in keys]
        if len(keys) == 1 or not _batchable(conds):
            return {key: self.denoise(inputs[key], sigma, key) for key in keys}
        base = inputs[keys[0]].detach()
        # y - x is exact for neighbouring floats (Sterbenz), so the model reads x + (y - x) == y
        offsets = [inputs[key] - base for key in keys]
        with self._passes.row_offsets(offsets):
            out = comfy.samplers.calc_cond_batch(self.guider.inner_model, conds, base, sigma, self.model_options)
        return {key: pred + offset for key, pred, offset in zip(keys, out, offsets)}

    def input_scale(self, sigma: float) -> float:
        """c_in(sigma): the model input is ``c_in * x`` (``1/sqrt(1+sigma^2)`` for eps/v models)."""
        sampling = self.guider.inner_model.model_sampling
        return float(sampling.calculate_input(torch.tensor([sigma]), torch.ones(1))[0])


StepProgram = Callable[[GuidedSteps, torch.Tensor], torch.Tensor]

NOT_STEPWISE = {
    "uni_pc": "UniPC only evaluates the model in the first step of a call and moves from the second on",
    "uni_pc_bh2": "UniPC only evaluates the model in the first step of a call and moves from the second on",
    "dpm_adaptive": "adaptive DPM-Solver picks its own steps between the first and the last level",
}
"""Stock samplers that cannot run one step of the schedule per call (``GuidedSteps.sample_step``),
refused before the first step. A sampler that leaves the latent where it was in a step is refused
after its first step (``GuidedSteps.sample_step``): ``sa_solver`` and ``sa_solver_pece`` of hosts
whose SA-Solver returns its corrected state, not the step's prediction (0.3.75; fixed by v0.33).
Every other stock sampler runs, multistep ones in their first-order form (README)."""

SAMPLERS_THAT_RUN = ("choose another in KSamplerSelect: ddim or euler (the papers' sampler), euler_ancestral, dpmpp_2m, "
                     "heun and the other stock samplers run (multistep ones in their first-order form)")


def stock_sampler_name(sampler, names) -> Optional[str]:
    """Which of the stock samplers ``names`` (KSamplerSelect's names) the SAMPLER ``sampler`` is, or None:
    the same sampler function as ``comfy.samplers.sampler_object(name)``, wherever the SAMPLER was
    made (KSamplerSelect, a node with the sampler's own options)."""
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        return None
    for name in names:
        try:
            stock = comfy.samplers.sampler_object(name).sampler_function
        except Exception:  # not a sampler of this host
            continue
        same = stock is function or (getattr(stock, "__qualname__", None) == getattr(function, "__qualname__", "")
                                     and getattr(stock, "__module__", None) == getattr(function, "__module__", ""))
        if same:
            return name
    return None


def check_stepwise_sampler(sampler) -> None:
    """InputError naming the sampler when it is one of ``NOT_STEPWISE``, and the samplers that run."""
    name = stock_sampler_name(sampler, NOT_STEPWISE)
    if name is not None:
        raise InputError(f"sampler: {name} cannot run one step at a time, as this guider runs your sampler "
                         f"({NOT_STEPWISE[name]}); {SAMPLERS_THAT_RUN}")


def _batchable(conds: list) -> bool:
    """Whether conditionings may share one model call with a different latent per conditioning: none
    reads the latent before the model call (area crops, masks, ControlNet hints)."""
    return all(not any(entry.get(name) is not None for name in ("area", "mask", "control"))
               for cond in conds for entry in (cond or []))


class _Passes:
    """Which conditionings the sampler's CFG combines in the current pass (PREDICT_NOISE wrapper), and
    the per-conditioning latent offsets of a batched call (APPLY_MODEL wrapper, ``row_offsets``)."""

    DEFAULT = ("positive", "negative", None)

    def __init__(self):
        self.current: tuple = self.DEFAULT
        self.offsets: Optional[list] = None

    def __deepcopy__(self, memo):
        return self

    @contextlib.contextmanager
    def row_offsets(self, offsets: list):
        """Inside the block, the model reads ``x + offsets[i]`` in the rows of conditioning ``i`` of a
        ``calc_cond_batch`` call (its ``cond_or_uncond``)."""
        self.offsets = offsets
        try:
            yield
        finally:
            self.offsets = None

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},  # noqa: B006
                    **kwargs):
        offsets = self.offsets
        if offsets is not None:
            chunks = list(transformer_options.get("cond_or_uncond") or [0])
            x = x + torch.cat([offsets[index].to(x) for index in chunks])
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def predict_noise(self, executor, x, timestep, model_options={}, seed=None, **kwargs):  # noqa: B006 (host signature)
        positive, negative, offset = self.current
        if self.current == self.DEFAULT:
            return executor(x, timestep, model_options, seed, **kwargs)
        guider = executor.class_obj
        model, cfg = guider.inner_model, guider.cfg
        cond, uncond = guider.conds.get(positive), guider.conds.get(negative)
        if positive == negative and not math.isclose(cfg, 1.0) and offset is None \
                and "sampler_calc_cond_batch_function" not in model_options:
            # CFG of a conditioning with itself is its own prediction: one evaluation serves both rows
            pred = comfy.samplers.calc_cond_batch(model, [cond], x, timestep, model_options)[0]
            return _cfg(model, [cond, cond], [pred, pred], cfg, x, timestep, model_options)
        if offset is None or math.isclose(cfg, 1.0):
            return comfy.samplers.sampling_function(model, x, timestep, uncond, cond, cfg,
                                                    model_options=model_options, seed=seed)
        offset = offset.to(x)
        if _batchable([cond, uncond]):  # one call: the positive rows read x + offset
            with self.row_offsets([offset, torch.zeros_like(offset)]):
                cond_pred, uncond_pred = comfy.samplers.calc_cond_batch(model, [cond, uncond], x, timestep,
                                                                        model_options)
            cond_pred = cond_pred - offset
        else:
            cond_pred = comfy.samplers.calc_cond_batch(model, [cond], x + offset, timestep, model_options)[0] - offset
            uncond_pred = comfy.samplers.calc_cond_batch(model, [uncond], x, timestep, model_options)[0]
        return comfy.samplers.cfg_function(model, cond_pred, uncond_pred, cfg, x, timestep,
                                           model_options=model_options, cond=cond, uncond=uncond)


def _cfg(model, conds: list, out: list, cfg: float, x, timestep, model_options: dict):
    """The end of ``comfy.samplers.sampling_function`` after its model call: pre-CFG functions, then CFG."""
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cfg, "timestep": timestep, "input": x, "sigma": timestep,
                "model": model, "model_options": model_options}
        out = fn(args)
    return comfy.samplers.cfg_function(model, out[0], out[1], cfg, x, timestep, model_options=model_options,
                                       cond=conds[0], uncond=conds[1])


class _ProgramRunner:
    """SAMPLER_SAMPLE wrapper that hands the run to a step program (see ``GuidedSteps``)."""

    def __init__(self, program: StepProgram, passes: _Passes):
        self.program = program
        self.passes = passes

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                 disable_pbar=False, *args, **kwargs):
        if denoise_mask is not None:
            raise InputError("latent_image: a noise mask is not supported by this guider; remove it (SetLatentNoiseMask)")
        check_stepwise_sampler(executor.class_obj)  # before any step: the sampler is known only now
        steps = GuidedSteps(guider, executor, self.passes, sigmas, extra_args, callback)
        return self.program(steps, steps.start(noise, latent_image))


def make_stepwise_guider(model, conds: dict, cfg: float, program: StepProgram):
    """A GUIDER (for SamplerCustomAdvanced): ComfyUI's own ``CFGGuider`` over a clone of ``model``
    with named conditionings ``conds`` (``"positive"`` and ``"negative"`` plus any others the
    program uses), whose sampling is ``program(steps, x_start) -> x_final`` (see :class:`GuidedSteps`).

    The stock guider prepares everything (model loading, conditioning, hooks, latent scaling); the
    program takes over at the ``SAMPLER_SAMPLE`` wrapper and selects conditionings per pass at the
    ``PREDICT_NOISE`` wrapper, so other packs' wrappers of either kind still run."""
    patched = model.clone()
    passes = _Passes()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                 _ProgramRunner(program, passes))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY, passes.predict_noise)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, passes.apply_model)
    guider = comfy.samplers.CFGGuider(patched)
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    return guider


def stepwise_runner(guider) -> _ProgramRunner:
    """The ``SAMPLER_SAMPLE`` runner of a :func:`make_stepwise_guider` guider; its ``program`` is the
    step program (read by the node's tests, and swapped by them for a probe)."""
    wrappers = guider.model_patcher.wrappers.get(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, {})
    return next(w for w in wrappers.get(WRAPPER_KEY, []) if isinstance(w, _ProgramRunner))
