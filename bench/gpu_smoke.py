#!/usr/bin/env python3
"""GPU smoke test: every shipped workflow at full architecture size on CUDA, outputs finite.

    .venv/bin/python bench/gpu_smoke.py              # CUDA only: refuses without a CUDA device
    .venv/bin/python bench/gpu_smoke.py --dry-run    # small test models, 64 px, 4 steps, any device

Each ``workflows/api/*.json`` runs in-process through ComfyUI's validator and executor on
random-weight SD1.5 (512 px) and SDXL (1024 px) checkpoints of the real architecture
(bench/models.py), the FLUX workflows (``*_flux``, tools/demo.py's is_flux_workflow) on the random
FLUX.1-size model instead (512 px, its CLIP-L as the only text encoder, the 16-channel test TAESD as
its VAE), at the workflow's own step counts (``--max-steps`` caps them). Every LoadImage
gets a synthetic picture (tools/demo.py), every VAEDecode's latent and every SaveImage/PreviewImage's
images are captured and must be finite. Random weights make the images meaningless; what is checked
is that the graphs run at real sizes without errors, NaN or inf, and how long they take.

The full run appends its record (machine, per workflow and model: status, seconds, peak memory)
to ``bench/results/<date>-<device>-smoke.json``; ``--dry-run`` records nothing unless ``--record``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

WORKFLOWS = harness.REPO / "workflows" / "api"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="small test models, 64 px, at most 4 steps, on CPU "
                   "(or CUDA if present): checks the script itself on any machine")
    p.add_argument("--workflows", default="*.json", help="glob in workflows/api (default *.json)")
    p.add_argument("--models", default="sd15,sdxl,flux")
    p.add_argument("--max-steps", type=int, help="cap every step count (default: the workflow's own; "
                   "4 with --dry-run)")
    p.add_argument("--record", action="store_true", help="append the record also for --dry-run")
    return p.parse_args(argv)


def prepare(workflow: dict, ckpt: str, size: int, small: bool, max_steps: int | None, images_dir: Path,
            text_encoder: str | None = None, vae: str | None = None) -> dict:
    """The workflow pointed at ``ckpt`` at ``size`` px, with synthetic inputs and Capture nodes; a
    FLUX workflow's text encoders become ``text_encoder`` (CLIPLoader) and its VAE ``vae``."""
    import demo  # tools/demo.py: retarget() and synthetic pictures, as the e2e test uses them

    wf = demo.retarget(workflow, ckpt, small=small or max_steps is not None, size=size,
                       max_steps=max_steps if max_steps is not None else 10**9)
    if not small:  # retarget(small=True) also sets width/height; make them the model's size
        for node in wf.values():
            for name in ("width", "height"):
                if isinstance(node.get("inputs", {}).get(name), int):
                    node["inputs"][name] = size
    for node in wf.values():  # the random-weight CLIP ViT-L/14 (full size) stands in for the user's CLIP files
        inputs = node.get("inputs", {})
        for name in ("clip_name", "alignment_text_encoder"):
            if isinstance(inputs.get(name), str) and node.get("class_type") != "CLIPLoader":
                inputs[name] = demo.TEST_CLIP
        if inputs.get("if_exists") in ("error", "reuse"):
            inputs["if_exists"] = "overwrite"  # a scratch embeddings folder, new every run
    if text_encoder:
        for node in wf.values():
            if node.get("class_type") in ("DualCLIPLoader", "CLIPLoader"):
                node["class_type"] = "CLIPLoader"
                node["inputs"] = {"clip_name": text_encoder, "type": "stable_diffusion"}
            elif node.get("class_type") == "VAELoader":
                node["inputs"]["vae_name"] = vae
    for node_id, path in demo.synthetic_inputs(wf, images_dir, min(size, 512)).items():
        wf[node_id]["inputs"]["image"] = path.name
    captures = {}
    for node_id, node in list(wf.items()):
        kind = node.get("class_type")
        if kind == "VAEDecode":
            captures[f"latent_{node_id}"] = node["inputs"]["samples"]
        elif kind in ("SaveImage", "PreviewImage"):
            captures[f"images_{node_id}"] = node["inputs"]["images"]
    for i, (key, link) in enumerate(captures.items()):
        wf[f"smoke{i}"] = {"class_type": "Capture", "inputs": {"key": key, "value": copy.deepcopy(link)}}
    return wf


def check_finite(captured: dict) -> list[str]:
    import torch

    problems = []
    if not captured:
        problems.append("the workflow has no VAEDecode / SaveImage / PreviewImage output to check")
    for key, value in captured.items():
        tensor = value["samples"] if isinstance(value, dict) else value
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{key}: not a tensor ({type(tensor).__name__})")
        elif not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            problems.append(f"{key}: {bad} of {tensor.numel()} values are NaN/inf")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: bench/gpu_smoke.py runs the shipped workflows at full SD1.5/SDXL size and needs a CUDA "
              f"device; torch {torch.__version__} sees none on this machine. Use --dry-run to check the script "
              "on the small test models (CPU).", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    harness.import_host(device)
    import demo
    import folder_paths
    import models

    if device == "cpu":
        torch.set_num_threads(1)
    full = not args.dry_run
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    ckpts = models.checkpoints(device, wanted, full, print)
    runner = harness.make_runner(sorted({c["folder"] for c in ckpts.values()}))
    max_steps = args.max_steps if args.max_steps is not None else (None if full else 4)
    files = sorted(WORKFLOWS.glob(args.workflows))
    if not files:
        print(f"error: no workflow matches {WORKFLOWS / args.workflows}", file=sys.stderr)
        return 2

    rows, failed = [], False
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ee-gpu-smoke-") as scratch:
        scratch = Path(scratch)
        (scratch / "input").mkdir()
        (scratch / "output").mkdir()
        folder_paths.set_input_directory(str(scratch / "input"))
        folder_paths.set_output_directory(str(scratch / "output"))
        (scratch / "embeddings").mkdir()
        folder_paths.add_model_folder_path("embeddings", str(scratch / "embeddings"), is_default=True)
        test_clip = harness.REPO / ".cache" / "clip"
        for kind in ("clip_vision", "text_encoders"):
            folder_paths.add_model_folder_path(kind, str(test_clip), is_default=True)
        for model, ck in ckpts.items():
            for path in files:
                workflow = json.loads(path.read_text())
                if demo.is_flux_workflow(workflow) != (model == "flux"):  # each family's workflows on its model
                    continue
                row = {"workflow": path.stem, "model": model, "checkpoint": ck["ckpt"], "size": ck["size"],
                       "max_steps": max_steps, "status": "ok"}
                try:
                    wf = prepare(workflow, ck["ckpt"], ck["size"], not full, max_steps, scratch / "input",
                                 ck.get("text_encoder"), ck.get("vae"))
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t0 = time.perf_counter()
                    captured = runner.run(wf)
                    if device == "cuda":
                        torch.cuda.synchronize()
                        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
                    row["seconds"] = round(time.perf_counter() - t0, 2)
                    row["checked"] = sorted(captured)
                    problems = check_finite(captured)
                    if problems:
                        row["status"], row["error"] = "NOT FINITE", "; ".join(problems)
                except Exception as exc:
                    row["status"], row["error"] = "FAILED", f"{type(exc).__name__}: {exc}"[:2000]
                    traceback.print_exc()
                failed |= row["status"] != "ok"
                rows.append(row)
                print(f"[gpu_smoke] {path.stem} on {model} ({ck['size']} px): {row['status']}"
                      f" in {row.get('seconds', '-')} s" + (f", peak {row['peak_gb']} GB" if "peak_gb" in row else "")
                      + (f": {row['error'][:300]}" if "error" in row else ""), flush=True)
    total = round(time.perf_counter() - t_all, 1)
    print(f"[gpu_smoke] {'FAILED' if failed else 'all finite'}: {len(rows)} runs in {total} s")
    if full or args.record:
        info = harness.machine(device)
        record = {"date": harness.today(), "time": harness.now(), "machine": info, "dry_run": not full,
                  "seconds_total": total, "ok": not failed, "rows": rows}
        harness.RESULTS.mkdir(parents=True, exist_ok=True)
        out = harness.RESULTS / f"{record['date']}-{harness.device_slug(info)}-smoke.json"
        runs = json.loads(out.read_text())["runs"] if out.exists() else []
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"runs": runs + [record]}, indent=1) + "\n")
        os.replace(tmp, out)
        print(f"[gpu_smoke] recorded in {out.relative_to(harness.REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
