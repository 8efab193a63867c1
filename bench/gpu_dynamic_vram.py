#!/usr/bin/env python3
"""GPU check (issue 12): the pack's gradients do not depend on how ComfyUI holds the weights.

    python3 bench/gpu_dynamic_vram.py              # CUDA; ComfyUI from $COMFYUI_PATH (a v0.16+ tree)
    python3 bench/gpu_dynamic_vram.py --dry-run    # the small test model on the CPU: checks the script

It starts ComfyUI through ``main.py`` twice, with default flags (on NVIDIA GPUs Dynamic VRAM is on:
weights cast into reused GPU buffers, LoRA patches applied separately) and with
``--disable-dynamic-vram``, loads a random-weight checkpoint of the real SD1.5 architecture
(bench/models.py) and a random LoRA on its attention projections, and runs the test-only node
``ExemplarGradientProbe`` (bench/gpu_probe) without and with the LoRA. Both of the pack's gradient
paths are measured at 512 px: the trainer's first loss and its gradient in the Difference tokens
(DeltaInterpolationTrainer), and a cross-attention guidance loss and its gradient in the latent
(CutLossGuidance). The check passes when, per LoRA setting, the losses and gradients of the two
modes agree (relative error below --tolerance), the LoRA changes them, and the dynamic run really
held the model under Dynamic VRAM. The record goes to $OUT (or --out) as gpu_dynamic_vram.json.

On a device machine with no package index, the Python packages ComfyUI needs beyond the machine's
image are carried as wheels: ``bash bench/gpu_carry.sh`` prepares ``.gpu/`` (the host tree and
wheels) here; then run ``bash bench/gpu_carry.sh --install && python3 bench/gpu_dynamic_vram.py``
there with ``.gpu`` carried.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "bench"))

MODES = {"dynamic": [], "static": ["--disable-dynamic-vram"]}
LORA_RANK = 4
PROBE = REPO / "bench" / "gpu_probe"


def lora_name(key: str) -> str | None:
    """The standard LoRA name of a checkpoint weight on an attention projection, else None
    (``model.diffusion_model.X.weight`` -> ``lora_unet_X``, CLIP-L ``...text_model.X.weight`` ->
    ``lora_te_text_model_X``)."""
    if not key.endswith(".weight") or not re.search(r"\.(attn1|attn2|self_attn)\.(to_q|to_k|to_v|to_out\.0|q_proj|k_proj|v_proj|out_proj)\.weight$", key):
        return None
    if key.startswith("model.diffusion_model."):
        return "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
    prefix = "cond_stage_model.transformer."
    if key.startswith(prefix):
        return "lora_te_" + key[len(prefix):-len(".weight")].replace(".", "_")
    return None


def write_lora(checkpoint: Path, path: Path) -> int:
    """A random LoRA (rank 4, alpha 4) on every attention projection of ``checkpoint``."""
    import safetensors
    import safetensors.torch
    import torch

    generator = torch.Generator().manual_seed(11)
    lora = {}
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        for key in sorted(f.keys()):
            name = lora_name(key)
            if name is None:
                continue
            rows, cols = f.get_slice(key).get_shape()[:2]
            lora[f"{name}.lora_up.weight"] = torch.randn(rows, LORA_RANK, generator=generator) * 0.15
            lora[f"{name}.lora_down.weight"] = torch.randn(LORA_RANK, cols, generator=generator) * 0.15
            lora[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(lora, str(path))
    return len(lora) // 3


def prompt(checkpoint: str, lora: str | None, tag: str, size: int) -> dict:
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    model, clip = ["1", 0], ["1", 1]
    if lora:
        graph["2"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                             "strength_model": 1.0, "strength_clip": 1.0}}
        model, clip = ["2", 0], ["2", 1]
    graph["3"] = {"class_type": "ExemplarGradientProbe", "inputs": {"model": model, "clip": clip, "tag": tag,
                                                                    "size": size}}
    return graph


def relative_error(a, b) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the small test model at 64 px on the CPU (both modes "
                   "are the same there): checks the script itself")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / ".run" / "gpu_dynamic_vram"))
    p.add_argument("--tolerance", type=float, default=2e-2, help="largest relative error between the modes")
    args = p.parse_args(argv)

    import serve  # tools/serve.py
    import run_workflow as client  # tools/run_workflow.py
    import safetensors

    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="exemplar-gpu-check-"))
    try:
        if args.dry_run:
            checkpoint, size = REPO / ".cache" / "checkpoints" / "test_sd15.safetensors", 8
        else:
            import harness
            import models

            harness.import_host("cpu")  # builds the checkpoint in this process only; the servers pick their device
            checkpoint, size = models.ensure_full_checkpoint("sd15"), 64
        loras = write_lora(checkpoint, base / "models" / "loras" / "probe_lora.safetensors")
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        os.symlink(PROBE, base / "custom_nodes" / "exemplar_gradient_probe")
        host_flags = serve._host_flags(serve.host_dir())
        if "--disable-dynamic-vram" not in host_flags and not args.dry_run:
            raise SystemExit(f"{serve.host_dir()} has no --disable-dynamic-vram: point COMFYUI_PATH at ComfyUI v0.16 or "
                             "newer (bash bench/gpu_carry.sh prepares the v0.33.0 tree)")
        results: dict = {}
        for mode, flags in MODES.items():
            flags = [f for f in flags if f in host_flags]  # --dry-run on an older host: both modes alike
            with serve.running_server(ckpts=[checkpoint], base=base, extra_args=flags, gpu=not args.dry_run,
                                      use_env=False, timeout=600) as url:
                for lora in (None, "probe_lora.safetensors"):
                    tag = f"{mode}_{'lora' if lora else 'plain'}"
                    prompt_id = client.queue_prompt(url, prompt(checkpoint.name, lora, tag, size))
                    client.wait_for_prompt(url, prompt_id, timeout=900)
                    path = base / "output" / f"gradient_probe_{tag}.safetensors"
                    with safetensors.safe_open(str(path), framework="pt") as f:
                        results[tag] = {"meta": json.loads(f.metadata()["probe"]),
                                        "grads": {k: f.get_tensor(k) for k in f.keys()}}
                    print(f"[gpu-check] {tag}: {results[tag]['meta']}", flush=True)
        verdicts, report = [], {}
        for lora in ("plain", "lora"):
            dynamic, static = results[f"dynamic_{lora}"], results[f"static_{lora}"]
            row = {"dynamic": dynamic["meta"], "static": static["meta"]}
            for part in ("trainer", "guidance"):
                row[f"{part}_grad_relative_error"] = relative_error(dynamic["grads"][part], static["grads"][part])
                loss_d, loss_s = dynamic["meta"][f"{part}_loss"], static["meta"][f"{part}_loss"]
                row[f"{part}_loss_relative_error"] = abs(loss_d - loss_s) / max(abs(loss_s), 1e-30)
                verdicts.append(row[f"{part}_grad_relative_error"] < args.tolerance
                                and row[f"{part}_loss_relative_error"] < args.tolerance)
            report[lora] = row
        for part in ("trainer", "guidance"):  # the LoRA must matter, or the comparison says nothing
            report[f"{part}_lora_effect"] = relative_error(results["static_lora"]["grads"][part],
                                                           results["static_plain"]["grads"][part])
            verdicts.append(report[f"{part}_lora_effect"] > 10 * args.tolerance)
        if not args.dry_run:  # the default flags must really have run under Dynamic VRAM, the others not
            verdicts.append(all(results[f"dynamic_{l}"]["meta"]["model_is_dynamic"] for l in ("plain", "lora")))
            verdicts.append(not any(results[f"static_{l}"]["meta"]["model_is_dynamic"] for l in ("plain", "lora")))
        passed = all(verdicts)
        import torch

        record = {"passed": passed, "dry_run": args.dry_run, "tolerance": args.tolerance, "lora_pairs": loras,
                  "checkpoint": checkpoint.name, "latent_size": size, "seconds": round(time.time() - started, 1),
                  "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "report": report}
        (out / "gpu_dynamic_vram.json").write_text(json.dumps(record, indent=2, default=str))
        print(json.dumps(record, indent=2, default=str))
        print(f"gpu-check: {'1 passed, 0 failed' if passed else '0 passed, 1 failed'}")
        return 0 if passed else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
