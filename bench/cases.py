"""The benchmark cases: one small graph builder per method, registered in ``CASES``.

A case builds the API-format graph a user runs for that method, from latents to latents (text
encodings and loaded models are cached by ComfyUI between repeats, as in a real session; VAE
encode/decode are left out: they cost the same with or without the method). Method settings are
read from the shipped workflow (``workflows/api/<name>.json``) when it exists, so the bench times
the defaults users get; step positions are scaled with the step count on small (CPU) profiles, as
tools/demo.py's retarget does.

Every case is compared with a plain sampling (stock ``SamplerCustom`` + ``euler``, same model,
resolution and step count) run in the same process, interleaved with it. To add a method, write a
``build_<method>(ctx, run)`` function and append a ``Case`` to ``CASES``.

FLUX-class models (``ctx.family == "flux"``) get the same graphs built from their own shipped
workflows (``<name>_flux.json``): the stock UNETLoader and CLIPLoader (the test CLIP-L as the text
encoder), the positive through FluxGuidance, 16-channel latents, the ``simple`` schedule, and no
negative where the workflow has none (cfg 1 on a guidance-distilled model).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import harness

WORKFLOWS = harness.REPO / "workflows" / "api"
POSITIVE = "a photo of a red cat"
NEGATIVE = ""


@dataclass
class Profile:
    """Step counts of one run: the issue's on CUDA, scaled down for the small CPU models."""
    steps: int                 # plain sampling / DDIMInvert / translation
    appearance_steps: int      # the official 100
    appearance_skip: int       # the official 32
    repeats: int
    training_steps: int        # DeltaInterpolationTrainer: steps of the long run ...
    training_short_steps: int  # ... and of the short one (per-step time from the difference)
    training_repeats: int


CUDA_PROFILE = Profile(steps=50, appearance_steps=100, appearance_skip=32, repeats=3,
                       training_steps=25, training_short_steps=5, training_repeats=3)
CPU_PROFILE = Profile(steps=6, appearance_steps=8, appearance_skip=3, repeats=3,
                      training_steps=4, training_short_steps=1, training_repeats=1)
# real architecture sizes on a CPU (--full --device cpu): only the training comparison is practical
CPU_FULL_PROFILE = Profile(steps=6, appearance_steps=8, appearance_skip=3, repeats=1,
                           training_steps=3, training_short_steps=1, training_repeats=1)


@dataclass
class Context:
    model: str      # "sd15" / "sdxl" / "flux"
    ckpt: str       # checkpoint file name (in a registered checkpoints folder); FLUX: the diffusion model file
    size: int       # px
    profile: Profile
    threads: int | None = None  # torch CPU threads of subprocesses (None: their default)
    text_encoder: str | None = None  # FLUX: the text encoder file (CLIPLoader, type stable_diffusion)
    vae: str | None = None           # FLUX: the VAE file (VAELoader; only the trainer encodes images)

    @staticmethod
    def family_of(model: str) -> str:
        return "flux" if model == "flux" else "sd"

    @property
    def family(self) -> str:
        return self.family_of(self.model)

    def workflow(self, name: str) -> str:
        """The shipped workflow of ``name`` for this model's family."""
        return f"{name}_flux" if self.family == "flux" else name


@dataclass
class Case:
    name: str
    title: str
    build: Callable[[Context, int], dict] | None  # (ctx, run) -> API prompt with a Capture "out"
    steps: Callable[[Context], int]             # sampler steps the result is normalised by
    baseline: Callable[[Context], tuple[int, float]] | None  # (steps, cfg) of its plain sampling
    requires: tuple[str, ...] = ()              # node classes that must be registered
    notes: str = ""
    small_default: bool = True                  # run on the small CPU profile unless named in --cases
    small_models: tuple[str, ...] = ("sd15", "sdxl")  # models it runs on in the small profile by default
    # a case measured outside the graph loop: (ctx, checkpoint folder, device, log) -> result rows
    compare: Callable | None = None
    # the method's floor as a multiple of its plain sampling, in UNet row-forward equivalents per step:
    # ctx -> (ratio, how it is counted); the report shows the measured time ratio over it
    floor: Callable[[Context], tuple[float, str]] | None = None
    families: tuple[str, ...] = ("sd",)         # model families it is built for ("sd", "flux")
    # a case of the same run it is timed against instead of plain sampling (baseline None): its time and peak
    # memory as ratios to that case's, and the relative difference of their warm-up outputs
    versus: str | None = None


def workflow_inputs(workflow: str, class_type: str, index: int = 0) -> dict:
    """Literal (non-link) inputs of the ``index``-th ``class_type`` node of a shipped workflow."""
    path = WORKFLOWS / f"{workflow}.json"
    if not path.exists():
        return {}
    graph = json.loads(path.read_text())
    matches = [n for _, n in sorted(graph.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)
               if n.get("class_type") == class_type]
    if len(matches) <= index:
        return {}
    return {k: v for k, v in matches[index]["inputs"].items() if not isinstance(v, list)}


def _scale_positions(inputs: dict, old_steps: int, new_steps: int) -> dict:
    """Schedule positions (``*_step``) scaled from ``old_steps`` to ``new_steps`` (kept < new)."""
    out = dict(inputs)
    if old_steps == new_steps:
        return out
    for name, value in inputs.items():
        if name.endswith("_step") and isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < old_steps:
                scaled = max(1, round(value * new_steps / old_steps)) if value > 0 else 0
                out[name] = min(scaled, new_steps - 1)
            else:  # "past the end" (e.g. adain_end_step 101 of 100) stays past the end
                out[name] = new_steps + (value - old_steps)
    return out


def clip_ref(ctx: Context) -> list:
    return ["1c", 0] if ctx.family == "flux" else ["1", 1]


def flux_guidance(ctx: Context) -> float:
    return float(workflow_inputs(ctx.workflow("appearance_transfer"), "FluxGuidance").get("guidance", 3.5))


def _base(ctx: Context) -> dict:
    """The model ("1", output 0), its text encoder (``clip_ref``), the positive "2" and the negative "3";
    on FLUX the positive carries the workflows' distilled guidance (FluxGuidance)."""
    if ctx.family != "flux":
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ctx.ckpt}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        }
    clip = clip_ref(ctx)
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": ctx.ckpt, "weight_dtype": "default"}},
        clip[0]: {"class_type": "CLIPLoader", "inputs": {"clip_name": ctx.text_encoder, "type": "stable_diffusion"}},
        "2t": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": clip}},
        "2": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2t", 0], "guidance": flux_guidance(ctx)}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}},
    }


def _latent_channels(ctx: Context) -> int:
    return 16 if ctx.family == "flux" else 4


def _latent(ctx: Context, seed: int, run: int) -> dict:
    return {"class_type": "BenchLatent", "inputs": {"width": ctx.size, "height": ctx.size, "seed": seed, "run": run,
                                                    "channels": _latent_channels(ctx)}}


# --- (1) plain sampling: the yardstick -------------------------------------------------------


def build_plain(ctx: Context, run: int, steps: int, cfg: float) -> dict:
    flux = ctx.family == "flux"
    prompt = _base(ctx)
    prompt.update({
        "4": {"class_type": "EmptySD3LatentImage" if flux else "EmptyLatentImage",
              "inputs": {"width": ctx.size, "height": ctx.size, "batch_size": 1}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "6": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple" if flux else "normal",
                                                          "steps": steps, "denoise": 1.0}},
        "7": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": run, "cfg": cfg, "positive": ["2", 0],
            "negative": ["3", 0], "sampler": ["5", 0], "sigmas": ["6", 0], "latent_image": ["4", 0]}},
        "8": {"class_type": "Capture", "inputs": {"key": "out", "value": ["7", 0]}},
    })
    return prompt


def plain_name(steps: int, cfg: float) -> str:
    return f"plain_{steps}steps_cfg{cfg:g}"


# --- (2) DDIMInvert --------------------------------------------------------------------------


def invert_inputs(ctx: Context) -> dict:
    inputs = {"mode": "ddim", "steps": 50, "cfg": 1.0, "scheduler": "ddim_uniform", "skip_steps": 0, "seed": 0,
              "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5,
              "auto_correlation_rolls": 5}
    inputs.update(workflow_inputs("inversion_roundtrip", "DDIMInvert"))
    inputs["steps"] = ctx.profile.steps
    return inputs


def build_ddim_invert(ctx: Context, run: int) -> dict:
    prompt = _base(ctx)
    prompt["4"] = _latent(ctx, 1, run)
    prompt["5"] = {"class_type": "DDIMInvert", "inputs": {
        **invert_inputs(ctx), "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0]}}
    prompt["6"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["5", 0]}}
    return prompt


# --- (3) appearance transfer (Eye-for-an-eye), end to end ------------------------------------


def appearance_settings(ctx: Context) -> tuple[dict, dict, dict]:
    """(DDIMInvert inputs, SemanticFeatureRearrange inputs, SamplerCustom inputs) of the shipped
    workflow, at the profile's step count (official: 100 steps, skip 32)."""
    p = ctx.profile
    invert = {"mode": "edit_friendly_ddpm", "steps": 100, "cfg": 3.5, "scheduler": "ddim_uniform", "skip_steps": 32,
              "seed": 0, "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0,
              "regularization_steps": 5, "auto_correlation_rolls": 5}
    workflow = ctx.workflow("appearance_transfer")
    invert.update(workflow_inputs(workflow, "DDIMInvert"))
    old_steps = invert["steps"]
    invert.update(steps=p.appearance_steps, skip_steps=p.appearance_skip)
    rearrange = {"layers": "two_highest_decoder_levels", "strength": 1.0, "injection_start_step": 10,
                 "injection_end_step": 70, "structure_interval": 5, "structure_end_step": 40,
                 "adain_start_step": 49, "adain_end_step": 101, "restrict_to_reference_mask": False}
    rearrange.update(workflow_inputs(workflow, "SemanticFeatureRearrange"))
    rearrange = _scale_positions(rearrange, old_steps, p.appearance_steps)
    sampler = {"add_noise": False, "noise_seed": 0, "cfg": 1.0}
    sampler.update({k: v for k, v in workflow_inputs(workflow, "SamplerCustom").items() if k in sampler})
    return invert, rearrange, sampler


def build_appearance_transfer(ctx: Context, run: int, feature_source: str = "replayed_each_step",
                              cfg: float | None = None, auto_mask: str = "off") -> dict:
    """The shipped workflow's graph without FreeU and VAE; ``auto_mask`` off unless asked (the
    figures before issue 16 were taken without masks), ``cfg`` the workflow's unless given."""
    invert, rearrange, sampler = appearance_settings(ctx)
    rearrange["feature_source"] = feature_source
    rearrange.update(auto_mask=auto_mask, object_word="cat", prompt=POSITIVE)
    if cfg is not None:
        sampler["cfg"] = cfg
    prompt = _base(ctx)
    prompt["4"] = _latent(ctx, 1, run)   # reference
    prompt["5"] = _latent(ctx, 2, run)   # target
    common = {**invert, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0]}
    prompt["6"] = {"class_type": "DDIMInvert", "inputs": {**common, "latent": ["4", 0], "seed": 0}}
    prompt["7"] = {"class_type": "DDIMInvert", "inputs": {**common, "latent": ["5", 0], "seed": 1}}
    if ctx.family == "flux":  # cfg 1 on a guidance-distilled model: the workflow's inversions take no negative
        for node in ("6", "7"):
            del prompt[node]["inputs"]["negative"]
    prompt["8"] = {"class_type": "SemanticFeatureRearrange", "inputs": {
        **rearrange, "model": ["1", 0], "reference": ["6", 1], "target": ["7", 1]}}
    if feature_source == "collected_from_inversion" or auto_mask != "off":
        prompt["8"]["inputs"]["positive"] = ["2", 0]
    if auto_mask != "off":
        prompt["8"]["inputs"]["clip"] = clip_ref(ctx)
    prompt["9"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["7", 1], "exact_final_step": False}}
    prompt["10"] = {"class_type": "SamplerCustom", "inputs": {
        **sampler, "model": ["8", 0], "positive": ["2", 0], "negative": ["3", 0], "sampler": ["9", 0],
        "sigmas": ["7", 2], "latent_image": ["7", 0]}}
    prompt["11"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["10", 0]}}
    return prompt


def appearance_baseline(ctx: Context) -> tuple[int, float]:
    invert, _, _ = appearance_settings(ctx)
    return ctx.profile.appearance_steps, float(invert["cfg"])


# --- (4) image translation (pix2pix-zeroCon): CutLossGuidance sampling from a cached inversion --


def translation_settings(ctx: Context) -> tuple[dict, dict]:
    workflow = ctx.workflow("image_translation")
    direction = {"source": "cat", "target": "dog", "caption": POSITIVE, "multiplier": 1.0,
                 "source_sentences": "", "target_sentences": ""}
    direction.update(workflow_inputs(workflow, "EditDirection"))
    guidance = {"cfg": 5.0, "lambda_xa": 1.0, "lambda_cut": 3.0, "step_size": 0.1, "guidance_start_step": 0,
                "guidance_end_step": 1000, "num_patches": 256, "tau": 0.07, "offload_to_cpu": False}
    guidance.update(workflow_inputs(workflow, "CutLossGuidance"))
    return direction, guidance


def translation_inversion(ctx: Context) -> dict:
    """DDIMInvert inputs of the translation graph: plain DDIM at cfg 1 (on FLUX the Euler inversion of
    the shipped FLUX workflow, with its guidance), at the profile's step count."""
    if ctx.family != "flux":
        return {**invert_inputs(ctx), "mode": "ddim", "cfg": 1.0, "skip_steps": 0}
    inputs = dict(invert_inputs(ctx))
    inputs.update(workflow_inputs(ctx.workflow("image_translation"), "DDIMInvert"))
    inputs["steps"] = ctx.profile.steps
    return inputs


def build_translation(ctx: Context, run: int, lambda_cut: float | None = None, official: bool = False) -> dict:
    """The inversion is cached (its inputs do not change between repeats): the figure is the
    guided sampling alone, which is what the CutLossGuidance target is about. ``official``: the same
    inputs edited by the official pix2pix-zero loop (bench/translation.py) instead of CutLossGuidance."""
    direction, guidance = translation_settings(ctx)
    flux = ctx.family == "flux"
    if lambda_cut is not None:
        guidance["lambda_cut"] = lambda_cut
    prompt = _base(ctx)
    prompt["4"] = _latent(ctx, 1, 0)
    prompt["5"] = {"class_type": "DDIMInvert", "inputs": {
        **translation_inversion(ctx), "model": ["1", 0], "positive": ["2", 0], "latent": ["4", 0]}}
    if not flux:
        prompt["5"]["inputs"]["negative"] = ["3", 0]
    prompt["6"] = {"class_type": "BenchTouch", "inputs": {"latent": ["5", 0], "run": run}}
    prompt["7"] = {"class_type": "EditDirection", "inputs": {**direction, "clip": clip_ref(ctx)}}
    if official:
        prompt["11"] = {"class_type": "BenchOfficialTranslation", "inputs": {
            "ckpt_name": ctx.ckpt, "latent": ["6", 0], "sigmas": ["5", 2], "positive": ["2", 0],
            "negative": ["2", 0], "direction": ["7", 0], "cfg": guidance["cfg"], "step_size": guidance["step_size"],
            "run": run}}
        prompt["12"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["11", 0]}}
        return prompt
    # the caption is the negative too, as in the shipped workflow and pix2pix-zero's edit_real.py; FLUX's
    # workflow samples at cfg 1 through the distilled guidance and takes no negative
    prompt["8"] = {"class_type": "CutLossGuidance", "inputs": {
        **guidance, "model": ["1", 0], "positive": ["2", 0], "direction": ["7", 0]}}
    if not flux:
        prompt["8"]["inputs"]["negative"] = ["2", 0]
    sampler = workflow_inputs(ctx.workflow("image_translation"), "KSamplerSelect").get("sampler_name", "ddim")
    prompt["9"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["10"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    prompt["11"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["9", 0], "guider": ["8", 0], "sampler": ["10", 0], "sigmas": ["5", 2], "latent_image": ["6", 0]}}
    prompt["12"] = {"class_type": "Capture", "inputs": {"key": "out", "value": ["11", 0]}}
    return prompt


def translation_baseline(ctx: Context) -> tuple[int, float]:
    return ctx.profile.steps, float(translation_settings(ctx)[1]["cfg"])


# a backward pass through the UNet costs about two forwards
FORWARD_AND_BACKWARD = 3


def translation_floor(ctx: Context) -> tuple[float, str]:
    """UNet row-forwards per guided step: the reference step (one row: the caption is the negative
    too, so one set of maps serves both CFG rows), a forward and a backward pass per CFG row for the
    guidance loss, and the CFG step itself; plain sampling makes only the CFG step."""
    rows = 2 if float(translation_settings(ctx)[1]["cfg"]) != 1.0 else 1
    floor = 1 + FORWARD_AND_BACKWARD * rows + rows
    return floor / rows, (f"1 reference + {FORWARD_AND_BACKWARD}×{rows} gradient + {rows} CFG = {floor} "
                          f"row-forwards per step against plain sampling's {rows}")


# --- (5) image analogy (Difference Inversion): training steps, node vs a plain PyTorch loop -----


def compare_analogy(ctx: Context, folder, device: str, log) -> list[dict]:
    import analogy

    p = ctx.profile
    return analogy.compare(folder, ctx.ckpt, ctx.size, p.training_steps, p.training_short_steps, device,
                           p.training_repeats, ctx.threads, log, ctx.text_encoder, ctx.vae)


# --- the registry ----------------------------------------------------------------------------

CASES: list[Case] = [
    Case("ddim_invert", "DDIMInvert (ddim, cfg 1, as the round-trip workflow)", build_ddim_invert,
         steps=lambda ctx: ctx.profile.steps, baseline=lambda ctx: (ctx.profile.steps, 1.0),
         requires=("DDIMInvert",)),
    Case("appearance_transfer", "Appearance transfer end to end (2 edit-friendly inversions + patched replay)",
         build_appearance_transfer, steps=lambda ctx: ctx.profile.appearance_steps, baseline=appearance_baseline,
         requires=("DDIMInvert", "SemanticFeatureRearrange", "InversionReplaySampler"),
         small_models=("sd15", "sdxl", "flux"), families=("sd", "flux"),
         notes="baseline: one plain sampling with the workflow's steps (100 on CUDA) and its inversion cfg (3.5; "
               "FLUX: 1, the distilled guidance 3.5 in the conditioning)"),
    Case("appearance_collected", "Appearance transfer end to end, features collected once from the inversions "
         "(feature_source collected_from_inversion)",
         # its own run numbers: equal inputs would let ComfyUI's cache reuse appearance_transfer's inversions
         lambda ctx, run: build_appearance_transfer(ctx, run + 100_000, "collected_from_inversion"),
         steps=lambda ctx: ctx.profile.appearance_steps, baseline=appearance_baseline,
         requires=("DDIMInvert", "SemanticFeatureRearrange", "InversionReplaySampler"),
         notes="same graph as appearance_transfer; reference/structure features from one conditional evaluation "
               "per injected step instead of two extra batch rows per step"),
    Case("appearance_cfg2.5", "Appearance transfer end to end at cfg 2.5 (the official README's guidance)",
         lambda ctx, run: build_appearance_transfer(ctx, run + 200_000, cfg=2.5),
         steps=lambda ctx: ctx.profile.appearance_steps, baseline=appearance_baseline,
         requires=("DDIMInvert", "SemanticFeatureRearrange", "InversionReplaySampler"),
         notes="same graph as appearance_transfer, sampled at cfg 2.5: every step's batch carries the output, "
               "reference and structure rows for cond and uncond (6 rows, as the official batch)"),
    Case("appearance_auto_mask", "Appearance transfer end to end with automatic masks (auto_mask self_segmentation)",
         lambda ctx, run: build_appearance_transfer(ctx, run + 300_000, auto_mask="self_segmentation"),
         steps=lambda ctx: ctx.profile.appearance_steps, baseline=appearance_baseline,
         requires=("DDIMInvert", "SemanticFeatureRearrange", "InversionReplaySampler"),
         small_models=("sd15", "sdxl", "flux"), families=("sd", "flux"),
         notes="same graph as appearance_transfer plus the mask pre-pass: one conditional evaluation of both "
               "inversion latents, k-means over the highest level's self-attention (FLUX: over the joint "
               "attention's image-to-image part; the shipped FLUX workflow's setting)"),
    Case("translation", "CutLossGuidance sampling (pix2pix-zeroCon), inversion cached", build_translation,
         steps=lambda ctx: ctx.profile.steps, baseline=translation_baseline,
         requires=("EditDirection", "CutLossGuidance"), small_default=False, floor=translation_floor,
         families=("sd", "flux"),
         notes="on the CPU profile only with --cases translation: its backward passes take minutes there"),
    Case("translation_official", "pix2pix-zero's official editing loop (bench/translation.py), same UNet and inputs",
         lambda ctx, run: build_translation(ctx, run, official=True), steps=lambda ctx: ctx.profile.steps,
         baseline=None, requires=("EditDirection", "BenchOfficialTranslation"), small_default=False,
         small_models=("sd15",), notes="the comparator of translation_xa (issue 23): with --cases only"),
    Case("translation_xa", "CutLossGuidance, lambda_cut 0 (pix2pix-zero), against the official loop",
         lambda ctx, run: build_translation(ctx, run, lambda_cut=0.0), steps=lambda ctx: ctx.profile.steps,
         baseline=None, requires=("EditDirection", "CutLossGuidance"), small_default=False, small_models=("sd15",),
         versus="translation_official",
         notes="runs alternate with translation_official only (no plain sampling in between, so a model kept "
               "between guided runs stays kept, as in a session); with --cases only"),
    Case("analogy_trainer", "DeltaInterpolationTrainer vs a plain PyTorch loop of the same loss", None,
         steps=lambda ctx: ctx.profile.training_steps - ctx.profile.training_short_steps, baseline=None,
         requires=("DeltaInterpolationTrainer",), small_models=("sd15",), compare=compare_analogy,
         families=("sd", "flux"),
         notes="each side in its own process (bench/analogy.py); on the small profile SDXL only with --cases "
               "(its full-size CLIP-G text encoder makes a CPU step slow)"),
]


def available(case: Case) -> tuple[bool, str]:
    import nodes

    missing = [n for n in case.requires if n not in nodes.NODE_CLASS_MAPPINGS]
    return (not missing, f"node(s) {', '.join(missing)} not registered" if missing else "")
