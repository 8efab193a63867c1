"""DDIMInvert and InversionReplaySampler: the inversion every method of the pack shares."""
from __future__ import annotations

import math
import random

import torch

from ..core import inversion as inv
from . import host
from .host import InputError, io

CATEGORY = f"{host.ROOT_CATEGORY}/inversion"

InversionType = io.Custom("EXEMPLAR_INVERSION")


def _check_latent(model, latent: dict, input_name: str = "latent") -> torch.Tensor:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise InputError(f"{input_name}: expected an image latent [batch, channels, height, width] (VAE Encode output)")
    channels = host.latent_channels(model)
    if samples.shape[1] != channels:
        raise InputError(
            f"{input_name}: has {samples.shape[1]} channels but the model's latent space ({host.model_family(model)}) "
            f"has {channels}; encode the image with this model's VAE"
        )
    if min(samples.shape[2:]) < 2:
        raise InputError(f"{input_name}: {samples.shape[3] * 8}x{samples.shape[2] * 8} px is too small to invert")
    return samples


class DDIMInvert(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DDIMInvert",
            display_name="DDIM Invert",
            category=CATEGORY,
            description=(
                "Inverts an encoded image into the model's noise space. 'ddim' runs the deterministic "
                "DDIM ODE backwards (Song et al. 2021), optionally with pix2pix-zero's noise regularisation; "
                "'edit_friendly_ddpm' extracts per-step noise maps (Huberman-Spiegelglas et al. 2024) that "
                "reproduce the image exactly. On rectified-flow models (FLUX.1 family) 'ddim' is the Euler "
                "inversion of the flow ODE and 'edit_friendly_ddpm' its exact-replay counterpart. Sample back "
                "with SamplerCustom + Inversion Replay Sampler, add_noise off, the SIGMAS output and the LATENT "
                "output."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to invert under; sample back with the same model (patches may differ)."),
                io.Conditioning.Input("positive", tooltip="Conditioning describing the image (its caption)."),
                io.Latent.Input("latent", tooltip="The image to invert, encoded with this model's VAE (VAE Encode)."),
                io.Combo.Input("mode", options=list(inv.MODES), default=inv.DDIM,
                               tooltip="ddim: deterministic DDIM inversion (pix2pix-zero, most editing methods); on "
                                       "FLUX-class flow models the Euler inversion of the flow ODE. "
                                       "edit_friendly_ddpm: edit-friendly DDPM inversion with noise maps (Eye-for-an-eye; "
                                       "on flow models the same with the rectified-flow posterior); replaying it "
                                       "reconstructs the input exactly."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Number of steps of the full schedule (pix2pix-zero: 50, Eye-for-an-eye: 100)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance during inversion. 1 uses the positive prompt alone "
                                       "(pix2pix-zero); Eye-for-an-eye inverts with 3.5. Above 1 needs 'negative'."),
                io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Sigma schedule. ddim_uniform matches the DDIM timesteps of the papers' code."),
                io.Int.Input("skip_steps", default=0, min=0, max=999,
                             tooltip="How many of the most noisy steps to skip: the inversion stops there and editing "
                                     "starts there (denoising strength = 1 - skip_steps / steps). Eye-for-an-eye: 32 of 100."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the independent noise samples of edit_friendly_ddpm and of the random "
                                     "shifts of the noise regularisation. Unused by plain ddim."),
                io.Boolean.Input("noise_regularization", default=False,
                                 tooltip="ddim only: pix2pix-zero's regularisation of each predicted noise towards "
                                         "white Gaussian noise (auto-correlation and KL penalties)."),
                io.Float.Input("lambda_ac", default=20.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Weight of the auto-correlation penalty (pix2pix-zero: 20)."),
                io.Float.Input("lambda_kl", default=20.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Weight of the KL penalty (pix2pix-zero: 20)."),
                io.Int.Input("regularization_steps", default=5, min=1, max=100,
                             tooltip="Outer regularisation iterations per step (pix2pix-zero: 5)."),
                io.Int.Input("auto_correlation_rolls", default=5, min=1, max=100,
                             tooltip="Auto-correlation gradient steps per outer iteration (pix2pix-zero: 5)."),
                io.Combo.Input("convention", options=list(inv.CONVENTIONS), default=inv.DIFFUSERS, optional=True,
                               tooltip="ddim only: which DDIM inversion. diffusers: from the clean latent at sigma 0 "
                                       "through every level, the model evaluated at the level being stepped to "
                                       "(diffusers' DDIMInverseScheduler, null-text inversion). pix2pix_zero: the "
                                       "official pix2pix-zero loop, the model evaluated at the current level, the "
                                       "clean latent read as the second-lowest level (48 steps at 50); needs "
                                       "scheduler ddim_uniform."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning, needed only when cfg is above 1."),
                io.Float.Input("guidance", default=-1.0, min=-1.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="Guidance-distilled flow models only (FLUX.1-dev class): the distilled "
                                       "guidance the model gets during inversion. -1 keeps the conditioning's own "
                                       "(FluxGuidance; 3.5 when unset). Stable Flow inverts FLUX.1-dev with 1. Sample "
                                       "back with the guidance you want the edit to have."),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The inverted latent at the start of editing (after skip_steps). "
                                 "Feed it to SamplerCustom with add_noise off."),
                InversionType.Output(display_name="INVERSION", tooltip="The inversion: schedule, latents at every step and, "
                                     "for edit_friendly_ddpm, the noise maps. Feed it to Inversion Replay Sampler."),
                io.Sigmas.Output(display_name="SIGMAS", tooltip="The remaining schedule from the start of editing to 0, for SamplerCustom."),
            ],
        )

    @classmethod
    def validate_inputs(cls, steps=None, skip_steps=None, mode=None, noise_regularization=None, convention=None,
                        scheduler=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        steps, skip_steps = values.get("steps"), values.get("skip_steps")
        if steps is not None and skip_steps is not None and not 0 <= skip_steps < steps:
            raise InputError(f"skip_steps: {skip_steps} must be between 0 and steps - 1 = {steps - 1}")
        if values.get("noise_regularization") and values.get("mode") not in (None, inv.DDIM):
            raise InputError("noise_regularization: only applies to mode 'ddim'; turn it off for edit_friendly_ddpm")
        guidance = values.get("guidance")
        if guidance is not None and guidance != -1.0 and guidance < 0.0:
            raise InputError(f"guidance: {guidance} is negative; give -1 (the conditioning's own) or a value from 0")
        if values.get("convention") == inv.PIX2PIX_ZERO:
            if values.get("mode") not in (None, inv.DDIM):
                raise InputError("convention: pix2pix_zero is a DDIM inversion; set mode to ddim or convention to diffusers")
            if values.get("scheduler") not in (None, "ddim_uniform"):
                raise InputError(
                    f"convention: pix2pix_zero is defined on the DDIM timesteps, not on scheduler "
                    f"{values.get('scheduler')!r}; set scheduler to ddim_uniform (or convention to diffusers)"
                )

    @classmethod
    def execute(cls, model, positive, latent, mode, steps, cfg, scheduler, skip_steps, seed,
                noise_regularization, lambda_ac, lambda_kl, regularization_steps, auto_correlation_rolls,
                convention=inv.DIFFUSERS, negative=None, guidance=-1.0) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if mode not in inv.MODES:
            raise InputError(f"mode: {mode!r} is not one of {list(inv.MODES)}")
        if steps < 1:
            raise InputError("steps: must be at least 1")
        if not 0 <= skip_steps < steps:
            raise InputError(f"skip_steps: {skip_steps} must be between 0 and steps - 1 = {steps - 1}")
        if cfg != 1.0 and negative is None:
            raise InputError(f"negative: cfg is {cfg}, so a negative conditioning is needed (or set cfg to 1)")
        if noise_regularization and mode != inv.DDIM:
            raise InputError("noise_regularization: only applies to mode 'ddim'; turn it off for edit_friendly_ddpm")
        host.check_sigma_space_model(model, flows=True)
        _check_latent(model, latent)
        process = inv.FLOW if host.is_flow_model(model) else inv.VE
        if process == inv.FLOW:
            if noise_regularization:
                raise InputError("noise_regularization: pix2pix-zero's regularisation of the predicted noise is "
                                 "defined for eps/v-prediction models; turn it off for this flow (FLUX-class) model")
            if mode == inv.DDIM and convention == inv.PIX2PIX_ZERO:
                raise InputError("convention: pix2pix_zero is defined on the DDIM timesteps of eps/v-prediction "
                                 "models; use diffusers for this flow (FLUX-class) model")
        if guidance != -1.0:
            if not host.has_guidance_input(model):
                raise InputError(f"guidance: {guidance} is set but this model takes no distilled guidance (only "
                                 "FLUX.1-dev class models do); set it to -1")
            positive = host.with_guidance(positive, guidance)
            negative = None if negative is None else host.with_guidance(negative, guidance)

        sigmas = host.schedule(model, scheduler, steps)
        c_in = host.input_scale(model)
        previous_level = (inv.previous_training_level(host.training_sigmas(model))
                          if convention == inv.PIX2PIX_ZERO else None)
        regularization = (
            inv.NoiseRegularization(lambda_ac, lambda_kl, regularization_steps, auto_correlation_rolls)
            if noise_regularization else None
        )
        record: dict = {}

        def loop(denoise, x, _sigmas, context, on_step):
            if mode == inv.DDIM and convention == inv.PIX2PIX_ZERO:
                latents = inv.invert_ddim_pix2pix_zero(denoise, x, sigmas, skip_steps, c_in, previous_level,
                                                       regularization, random.Random(seed), on_step)
                record["latents"], record["noise_maps"] = latents, None
            elif mode == inv.DDIM:
                latents = inv.invert_ddim(denoise, x, sigmas, skip_steps, c_in, regularization,
                                          random.Random(seed), on_step)
                record["latents"], record["noise_maps"] = latents, None
            else:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                latents, noise_maps = inv.invert_edit_friendly(denoise, x, sigmas, skip_steps, generator, on_step,
                                                               process)
                record["latents"], record["noise_maps"] = latents, noise_maps
            record["family"] = context.model_family
            return latents[0]

        negative = negative if negative is not None else positive
        inverted = host.run_sampler(model, host.make_sampler(loop), sigmas[skip_steps:], positive, negative,
                                    cfg, latent, seed)
        inversion = inv.Inversion(
            mode=mode, sigmas=sigmas, start_step=skip_steps,
            latents=[t.cpu() for t in record["latents"]],
            noise_maps=None if record["noise_maps"] is None else [t.cpu() for t in record["noise_maps"]],
            model_family=record["family"], cfg=cfg, process=process,
        )
        out = latent.copy()
        out.pop("noise_mask", None)
        out["samples"] = inverted
        return io.NodeOutput(out, inversion, sigmas[skip_steps:].clone())


def _align_schedule(inversion: inv.Inversion, sigmas: torch.Tensor) -> int:
    """Index into the inversion's schedule where ``sigmas`` starts; it must follow that schedule."""
    full = inversion.sigmas
    first = float(sigmas[0])
    for index in range(inversion.start_step, len(full) - 1):
        if math.isclose(float(full[index]), first, rel_tol=1e-4, abs_tol=1e-6):
            tail = full[index : index + len(sigmas)]
            if len(tail) == len(sigmas) and torch.allclose(tail, sigmas.cpu().float(), rtol=1e-4, atol=1e-6):
                return index
            break
    raise InputError(
        "sigmas: the sampler's schedule does not follow the inversion's; connect DDIMInvert's SIGMAS output "
        "(or a SplitSigmas of it) to the sampler"
    )


def _same_latent(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the round trip through the model's latent scaling (process_latent_out, then in)."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().mean()) + 1e-8))


def _check_starting_latent(inversion: inv.Inversion, x: torch.Tensor, start: int) -> None:
    """The latent the sampler starts from must be the inversion's latent at the step its sigmas start
    at; any other one is replayed as if it were, and gives a wrong image."""
    first = start - inversion.start_step
    if _same_latent(x, inversion.latents[first].to(x.device, x.dtype)):
        return
    given = x.detach().cpu().float()
    match = next((k for k, latent in enumerate(inversion.latents[:-1]) if _same_latent(given, latent.float())), None)
    given = (f"the inversion's latent at step {inversion.start_step + match}" if match is not None
             else "not a latent of this inversion (was noise added, or another image's LATENT connected?)")
    raise InputError(
        f"latent_image: it is {given}, but the sigmas start at step {start}; replay from the latent where the sigmas "
        "start: DDIMInvert's LATENT with its whole SIGMAS output (to start later, raise DDIMInvert's skip_steps "
        "instead of splitting the sigmas), and add_noise off"
    )


class InversionReplaySampler(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InversionReplaySampler",
            display_name="Inversion Replay Sampler",
            category=CATEGORY,
            description=(
                "A SAMPLER that denoises along an inversion from DDIMInvert: DDIM steps for a 'ddim' inversion, "
                "DDPM steps driven by the stored noise maps for 'edit_friendly_ddpm'. With the inversion's own "
                "conditioning it reconstructs the image; with other conditioning or model patches it edits it. "
                "Use it in SamplerCustom with add_noise off, DDIMInvert's LATENT and SIGMAS."
            ),
            inputs=[
                InversionType.Input("inversion", tooltip="The INVERSION output of DDIMInvert."),
                io.Boolean.Input("exact_final_step", default=True,
                                 tooltip="edit_friendly_ddpm only: add the stored residual on the last step so a "
                                         "replay under the inversion's conditioning returns the input exactly. Off: "
                                         "the last noise map is zero as in the official edit-friendly code."),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER", tooltip="Sampler for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, inversion, exact_final_step) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if not isinstance(inversion, inv.Inversion):
            raise InputError("inversion: expected the INVERSION output of DDIMInvert")

        def loop(denoise, x, sigmas, context, on_step):
            if context.model_family != inversion.model_family:
                raise InputError(
                    f"inversion: made with a {inversion.model_family} model but the sampler's model is "
                    f"{context.model_family}; invert with the same model family you sample with"
                )
            expected = tuple(inversion.latents[0].shape)
            if tuple(x.shape) != expected:
                raise InputError(
                    f"latent_image: shape {tuple(x.shape)} does not match the inversion's {expected}; feed the "
                    "LATENT output of the same DDIMInvert"
                )
            start = _align_schedule(inversion, sigmas)
            _check_starting_latent(inversion, x, start)
            # read the schedule and move this run's noise maps to the device once, not in every step
            levels = sigmas.tolist()
            maps = None
            if inversion.noise_maps is not None:
                first = start - inversion.start_step
                maps = [m.to(device=x.device, dtype=x.dtype)
                        for m in inversion.noise_maps[first:first + len(levels) - 1]]
            for k in range(len(levels) - 1):
                sigma_t, sigma_s = levels[k], levels[k + 1]
                x0_hat = denoise(x, sigmas[k] * x.new_ones(x.shape[0]))
                noise_map = None if maps is None else maps[k]
                x = inv.replay_step(x, x0_hat, sigma_t, sigma_s, noise_map, exact_final_step, inversion.process)
                x = context.after_step(k, x, sigmas[k + 1])
                on_step(k, x, x0_hat)
            return x

        return io.NodeOutput(host.make_sampler(loop))
