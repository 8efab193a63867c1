#!/usr/bin/env python3
"""DeltaInterpolationTrainer against a plain PyTorch training loop of the same loss on the same model.

    .venv/bin/python bench/analogy.py --side trainer|plain --ckpt FILE --size PX --steps N --short-steps n
                                      [--device cpu|cuda] [--repeats R] [--threads T]

Each side runs in its own process (``compare`` below starts them, interleaved, from bench/run.py),
so each peak-memory figure belongs to one side alone. Both sides train on the same images
(deterministic random pixels), prompts, captions, seed, K = 4 tokens and loss weights, and print one
JSON line.

- ``trainer``: the node, in a graph run through ComfyUI's own executor (CheckpointLoaderSimple,
  CLIPVisionLoader, DeltaInterpolationTrainer), as a user runs it. Seconds per training step are
  ``(T(N) - T(n)) / (N - n)`` from whole-node runs of N and n steps, so model loading and the
  one-off work (VAE encode, CLIP image and caption embeddings) cancel out.
- ``plain``: the loss written out directly on the same checkpoint's modules, loaded with ComfyUI's
  loader outside inference mode so their weights are ordinary tensors: the text encoder module is
  called on the token list with the tokens inserted, the UNet module once per loss term
  (``L_after`` and ``L_before``, each with its own forward), then one backward, AdamW and VISII's
  gradient-value clipping. No ModelPatcher, no sampler machinery, no clones. Seconds per step are
  timed over steps n+1..N of one run (device synchronised at those two points only).

Peak memory: CUDA ``max_memory_allocated`` over the whole run (weights included); CPU the growth of
the peak resident set during the run (harness.measure). ``losses`` of the first steps are reported
by both sides: equal losses show the two compute the same objective.

FLUX-class models (``--text-encoder``, ``--vae``: a diffusion model loaded with UNETLoader, its
CLIP-L with CLIPLoader, its VAE with VAELoader) run the trainer side only, with the shipped
image_analogy_flux workflow's token space (conditioning rows and the pooled vector, the
flow-matching loss): there is no plain-loop counterpart of the FLUX loss yet, so the FLUX row is
the node's seconds per step and peak memory, without a ratio.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402
import harness  # noqa: E402

TEST_CLIP = "test_clip_vit_l.safetensors"
CLIP_DIR = harness.REPO / ".cache" / "clip"
PROMPT_BEFORE = "a photo of a house in summer"
PROMPT_AFTER = "a photo of a house in winter"
CAPTION_BEFORE = "a photo of a house in summer"
CAPTION_AFTER = "a photo of a house in winter, covered in snow"
NUM_TOKENS, ALPHA, LEARNING_RATE, LAMBDA_MSE, LAMBDA_CLIP, SEED = 4, 0.8, 1e-3, 4.0, 0.1, 0
REPORTED_LOSSES = 3


def bench_image(size: int, seed: int):
    """A deterministic random IMAGE ``[1, size, size, 3]`` in [0, 1] (a stand-in for a photo)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(1, size // 16), max(1, size // 16), generator=g)
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    image = (image + 0.1 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)
    return image.permute(0, 2, 3, 1).contiguous()


# --- the node -----------------------------------------------------------------------------------


class _BenchImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 64}), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "bench"

    def make(self, size, seed):
        return (bench_image(size, seed),)


def trainer_graph(ckpt: str, size: int, steps: int, run: int, text_encoder: str | None = None,
                  vae: str | None = None) -> dict:
    """``run`` only names the embedding file: it makes every run a new graph for the executor's cache.
    With ``text_encoder`` (and ``vae``), ``ckpt`` is a FLUX-class diffusion model (stock UNETLoader,
    CLIPLoader, VAELoader) trained in the shipped image_analogy_flux workflow's token space."""
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    model, clip, vae_ref, token_space = ["1", 0], ["1", 1], ["1", 2], "input_embedding"
    if text_encoder:
        graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": ckpt, "weight_dtype": "default"}},
                 "1c": {"class_type": "CLIPLoader", "inputs": {"clip_name": text_encoder, "type": "stable_diffusion"}},
                 "1v": {"class_type": "VAELoader", "inputs": {"vae_name": vae}}}
        clip, vae_ref = ["1c", 0], ["1v", 0]
        token_space = cases.workflow_inputs("image_analogy_flux", "DeltaInterpolationTrainer").get(
            "token_space", "conditioning")
    return {
        **graph,
        "2": {"class_type": "BenchImage", "inputs": {"size": size, "seed": 1}},
        "3": {"class_type": "BenchImage", "inputs": {"size": size, "seed": 2}},
        "4": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": TEST_CLIP}},
        "5": {"class_type": "DeltaInterpolationTrainer", "inputs": {
            "model": model, "clip": clip, "vae": vae_ref, "image_before": ["2", 0], "image_after": ["3", 0],
            "clip_vision": ["4", 0], "alignment_text_encoder": TEST_CLIP, "caption_before": CAPTION_BEFORE,
            "caption_after": CAPTION_AFTER, "prompt_before": PROMPT_BEFORE, "prompt_after": PROMPT_AFTER,
            "name": f"bench_difference_{steps}_{run}", "if_exists": "overwrite", "token_space": token_space,
            "num_tokens": NUM_TOKENS, "alpha": ALPHA,
            "steps": steps, "learning_rate": LEARNING_RATE, "lambda_mse": LAMBDA_MSE, "lambda_clip": LAMBDA_CLIP,
            "seed": SEED,
            # one validation draw, at the end only: the comparison with the plain loop is of training steps
            "keep": "last", "validation_every": steps, "validation_timesteps": 1}},
        "6": {"class_type": "Capture", "inputs": {"key": "out", "value": ["5", 0]}},
    }


def run_trainer(args, device: str) -> dict:
    import folder_paths
    import nodes

    runner = harness.make_runner([Path(args.ckpt_folder)])
    nodes.NODE_CLASS_MAPPINGS["BenchImage"] = _BenchImage
    scratch = Path(tempfile.mkdtemp(prefix="ee_bench_analogy_"))
    atexit.register(shutil.rmtree, scratch, True)
    for kind in ("embeddings", "differences"):  # the trained files (input-embedding / conditioning space)
        folder_paths.add_model_folder_path(kind, str(scratch), is_default=True)
    for kind in ("clip_vision", "text_encoders"):
        folder_paths.add_model_folder_path(kind, str(CLIP_DIR), is_default=True)

    runs = iter(range(1_000_000))

    def once(steps: int):
        return runner.run(trainer_graph(args.ckpt, args.size, steps, next(runs), args.text_encoder,
                                        args.vae))["out"]

    warm = harness.Timer("warm-up")
    once(args.short_steps)  # loads the checkpoint and the CLIP models (cached by the executor afterwards)
    warm_seconds = warm.done()
    short, long_, losses = [], [], []
    for _ in range(args.repeats):
        for steps, into in ((args.short_steps, short), (args.steps, long_)):
            result = {}
            sample = harness.measure(lambda: result.setdefault("d", once(steps)), device)
            into.append(sample)
            if steps == args.steps:
                losses = result["d"].losses[:REPORTED_LOSSES]
    t_short = harness.median([s.seconds for s in short])
    t_long = harness.median([s.seconds for s in long_])
    per_step = (t_long - t_short) / (args.steps - args.short_steps)
    return {"side": "trainer", "warmup_seconds": round(warm_seconds, 3),
            "seconds_short_run": [round(s.seconds, 4) for s in short],
            "seconds_long_run": [round(s.seconds, 4) for s in long_],
            "seconds_per_step": round(per_step, 5), "steps_per_second": round(1 / per_step, 4) if per_step > 0 else None,
            "setup_seconds": round(t_short - args.short_steps * per_step, 4),
            "peak_bytes": int(harness.median([s.peak_bytes for s in long_])),
            "start_bytes": int(harness.median([s.start_bytes for s in long_])), "losses": losses}


# --- the plain PyTorch loop --------------------------------------------------------------------


def _normalise_a_copy(module, args):
    """Forward pre-hook for the text encoders' LayerNorms: ComfyUI's CLIP layers add in place onto
    the tensor a LayerNorm just read (``x += attn(ln(x))``), which autograd refuses; a plain loop
    needs this one change to backpropagate through them."""
    return (args[0].clone(),) + tuple(args[1:])


def _encode(stage_model, tokens: dict):
    out = stage_model.encode_token_weights(tokens)
    return out[0], out[1]


def run_plain(args, device: str) -> dict:
    import torch

    import comfy.clip_vision
    import comfy.sd
    import comfy.utils
    from exemplar_edit.core import difference as dif
    from exemplar_edit.nodes import host

    t_start = time.perf_counter()
    dev = torch.device(device)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(Path(args.ckpt_folder) / args.ckpt), output_vae=True, output_clip=True, embedding_directory=[])
    base = model.model
    unet = base.diffusion_model.to(dev)
    stage = clip.cond_stage_model.to(dev)
    vision = comfy.clip_vision.load(str(CLIP_DIR / TEST_CLIP))
    align_sd = comfy.utils.load_torch_file(str(CLIP_DIR / TEST_CLIP), safe_load=True)
    align = comfy.sd.load_text_encoder_state_dicts(state_dicts=[align_sd], embedding_directory=[],
                                                   clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    align_stage = align.cond_stage_model.to(dev)
    projection = align_stage.clip_l.transformer.text_projection.weight.detach().float().to(dev)
    for module in (unet, stage, align_stage):
        module.requires_grad_(False)
    for module in list(stage.modules()) + list(align_stage.modules()):
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_pre_hook(_normalise_a_copy)
    align.clip_layer(-(10 ** 6))  # the final layer, as CLIP's own text features (host.load_alignment_text_encoder)
    model_dtype = base.get_dtype()
    sampling = base.model_sampling

    load_seconds = time.perf_counter() - t_start
    with harness.measure_block(device) as mem:
        t_once = time.perf_counter()
        # once: the images' latents and CLIP embeddings, the caption delta, the target direction
        image_before, image_after = bench_image(args.size, 1), bench_image(args.size, 2)
        with torch.no_grad():
            embeds_before = vision.encode_image(image_before, crop=True)["image_embeds"].float().mean(0).to(dev)
            embeds_after = vision.encode_image(image_after, crop=True)["image_embeds"].float().mean(0).to(dev)
            caption_pooled = []
            for caption in (CAPTION_BEFORE, CAPTION_AFTER):
                out = align.encode_from_tokens(align.tokenize(caption), return_pooled="unprojected", return_dict=True)
                caption_pooled.append(out["pooled_output"].float()[0].to(dev) @ projection.T)
            target = dif.delta_interpolation(embeds_before, embeds_after, caption_pooled[0], caption_pooled[1], ALPHA)
            latent_before = base.process_latent_in(vae.encode(image_before)).float().to(dev)
            latent_after = base.process_latent_in(vae.encode(image_after)).float().to(dev)
        tokens_before, tokens_after = clip.tokenize(PROMPT_BEFORE), clip.tokenize(PROMPT_AFTER)
        empty_tokens = align.tokenize("")
        stage.reset_clip_options()  # what CLIP.encode_from_tokens sets before encoding, once for the loop
        align_stage.reset_clip_options()
        align_stage.set_clip_options({"layer": -(10 ** 6)})
        slots = host.text_encoder_slots(clip)
        grad_limits = {s.key: host.token_embedding_scale(clip, s.key) for s in slots}
        sigmas = sampling.sigmas.detach().float().cpu()
        generator = torch.Generator(device="cpu").manual_seed(SEED)
        timesteps = dif.shuffled_timesteps(args.steps, len(sigmas), generator)
        rows = {s.key: dif.difference_tokens(NUM_TOKENS, s.width, device=dev) for s in slots}
        optimizer = torch.optim.AdamW(list(rows.values()), lr=LEARNING_RATE)

        def predict(latent, sigma, cond, pooled):
            x_in = sampling.calculate_input(sigma, latent).to(model_dtype)
            extra = {}
            if base.adm_channels:  # SDXL: the pooled text and the size vector, which ComfyUI's
                # encode_model_conds fills in from the latent's size
                height, width = latent.shape[-2] * 8, latent.shape[-1] * 8
                extra["y"] = base.encode_adm(pooled_output=pooled, width=width, height=height,
                                             device=dev).to(dev, model_dtype)
            return unet(x_in, sampling.timestep(sigma).float(), context=cond.to(model_dtype), **extra).float()

        losses, marks = [], {}
        if device == "cuda":
            torch.cuda.synchronize()
        t_loop = time.perf_counter()
        for step in range(args.steps):
            if step == args.short_steps:
                if device == "cuda":
                    torch.cuda.synchronize()
                marks["short"] = time.perf_counter()
            sigma = sigmas[timesteps[step]].to(dev).reshape(1)
            noise = torch.randn(latent_after.shape, generator=generator).to(dev)
            cond_after, pooled_after = _encode(stage, host.append_embedding_rows(clip, tokens_before, rows))
            cond_before, pooled_before = _encode(
                stage, host.append_embedding_rows(clip, tokens_after, {k: -v for k, v in rows.items()}))
            pred_after = predict(latent_after + sigma * noise, sigma, cond_after, pooled_after)
            pred_before = predict(latent_before + sigma * noise, sigma, cond_before, pooled_before)
            mse = (pred_after - noise).pow(2).mean() + (pred_before - noise).pow(2).mean()
            hidden, _ = _encode(align_stage, host.append_embedding_rows(align, empty_tokens, {"l": rows["l"]}))
            feature = dif.difference_token_feature(hidden[0, 1:1 + NUM_TOKENS].float(), lambda h: h @ projection.T)
            loss = LAMBDA_MSE * mse + LAMBDA_CLIP * dif.clip_direction_loss(feature, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for key, value in rows.items():
                torch.nn.utils.clip_grad_value_([value], grad_limits[key])
            optimizer.step()
            if step < REPORTED_LOSSES:
                losses.append(float(loss.detach()))
        if device == "cuda":
            torch.cuda.synchronize()
        t_end = time.perf_counter()
    per_step = (t_end - marks["short"]) / (args.steps - args.short_steps)
    return {"side": "plain", "load_seconds": round(load_seconds, 3), "setup_seconds": round(t_loop - t_once, 3),
            "seconds_per_step": round(per_step, 5), "steps_per_second": round(1 / per_step, 4),
            "first_steps_seconds": round(marks["short"] - t_loop, 4),
            "peak_bytes": mem.sample.peak_bytes, "start_bytes": mem.sample.start_bytes, "losses": losses}


# --- orchestration (bench/run.py) -----------------------------------------------------------------


def side_command(side: str, ckpt_folder: Path, ckpt: str, size: int, steps: int, short_steps: int, device: str,
                 repeats: int, threads: int | None, text_encoder: str | None = None,
                 vae: str | None = None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--ckpt-folder", str(ckpt_folder),
           "--ckpt", ckpt, "--size", str(size), "--steps", str(steps), "--short-steps", str(short_steps),
           "--device", device, "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    if text_encoder:
        cmd += ["--text-encoder", text_encoder, "--vae", vae]
    return cmd


def run_side(cmd: list[str], log) -> dict:
    t = harness.Timer("side")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    result = json.loads(lines[-1])
    result["process_seconds"] = round(t.done(), 1)
    log(f"analogy {result['side']}: {result['seconds_per_step']:.3f} s/step, peak {result['peak_bytes'] / 2**20:.0f} MiB, "
        f"losses {[round(x, 5) for x in result['losses']]} ({result['process_seconds']} s)")
    return result


def compare(ckpt_folder: Path, ckpt: str, size: int, steps: int, short_steps: int, device: str, repeats: int,
            threads: int | None, log, text_encoder: str | None = None, vae: str | None = None) -> list[dict]:
    """Rows for bench/run.py: the plain loop (baseline) and the trainer, in separate processes; on a
    FLUX-class model (``text_encoder`` given) the trainer alone (no plain loop of the FLUX loss yet)."""
    if not (CLIP_DIR / TEST_CLIP).exists():
        raise RuntimeError(f"{CLIP_DIR / TEST_CLIP} missing: run `make setup` (tools/make_test_clip.py)")
    measured = steps - short_steps
    notes = f"per training step, from whole-node runs of {steps} and {short_steps} steps"
    if text_encoder:
        trainer = run_side(side_command("trainer", ckpt_folder, ckpt, size, steps, short_steps, device, repeats,
                                        threads, text_encoder, vae), log)
        return [{"case": "analogy_trainer", "title": "DeltaInterpolationTrainer on FLUX (node, through ComfyUI's "
                 "executor; token space conditioning, flow-matching loss)", "kind": "method", "steps": measured,
                 "seconds_median": round(trainer["seconds_per_step"] * measured, 4),
                 "ms_per_step": round(1000 * trainer["seconds_per_step"], 2),
                 "steps_per_second": trainer["steps_per_second"], "peak_bytes_median": trainer["peak_bytes"],
                 "start_bytes_median": trainer["start_bytes"], "detail": trainer,
                 "notes": notes + "; no plain-loop counterpart of the FLUX loss yet, so no ratio"}]
    plain = run_side(side_command("plain", ckpt_folder, ckpt, size, steps, short_steps, device, 1, threads), log)
    trainer = run_side(side_command("trainer", ckpt_folder, ckpt, size, steps, short_steps, device, repeats, threads),
                       log)
    base = {"case": "analogy_plain_loop", "title": "plain PyTorch loop of the same loss (two UNet calls, one backward)",
            "kind": "baseline", "steps": measured, "seconds_median": round(plain["seconds_per_step"] * measured, 4),
            "ms_per_step": round(1000 * plain["seconds_per_step"], 2), "steps_per_second": plain["steps_per_second"],
            "peak_bytes_median": plain["peak_bytes"], "start_bytes_median": plain["start_bytes"], "detail": plain}
    row = {"case": "analogy_trainer", "title": "DeltaInterpolationTrainer (node, through ComfyUI's executor)",
           "kind": "method", "baseline": "analogy_plain_loop", "steps": measured,
           "seconds_median": round(trainer["seconds_per_step"] * measured, 4),
           "ms_per_step": round(1000 * trainer["seconds_per_step"], 2),
           "steps_per_second": trainer["steps_per_second"], "peak_bytes_median": trainer["peak_bytes"],
           "start_bytes_median": trainer["start_bytes"], "detail": trainer,
           "time_ratio": round(trainer["seconds_per_step"] / plain["seconds_per_step"], 3),
           "memory_ratio": round(trainer["peak_bytes"] / plain["peak_bytes"], 3) if plain["peak_bytes"] else None,
           "losses_match": all(abs(a - b) <= 1e-3 * max(1.0, abs(b))
                               for a, b in zip(trainer["losses"], plain["losses"])),
           "notes": f"{notes}; the plain loop is timed over its steps {short_steps + 1}..{steps}"}
    return [base, row]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=("trainer", "plain"), required=True)
    p.add_argument("--ckpt-folder", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--short-steps", type=int, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--text-encoder", help="FLUX-class model: its text encoder file (CLIPLoader, stable_diffusion)")
    p.add_argument("--vae", help="FLUX-class model: its VAE file (VAELoader)")
    args = p.parse_args(argv)
    if args.text_encoder and args.side == "plain":
        p.error("the plain loop is written for the SD UNets only")
    if not 1 <= args.short_steps < args.steps:
        p.error("need 1 <= --short-steps < --steps")
    import torch

    harness.import_host(args.device)
    import pack_testing  # noqa: F401  (imports the pack as exemplar_edit)

    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    result = run_trainer(args, args.device) if args.side == "trainer" else run_plain(args, args.device)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
