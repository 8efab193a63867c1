#!/usr/bin/env python3
"""``make demo``: run every shipped workflow on the headless host and save the images.

Starts ComfyUI with the pack (``tools/serve.py``), then runs each ``workflows/api/*.json``
(``tools/run_workflow.py``) on the test checkpoints from ``make setup``, retargeted to be fast
on a CPU: tiny images, few steps, a generated input picture for every LoadImage node. Images go
to ``out/<workflow>/<checkpoint>/``; a table of results is printed at the end.

FLUX-class workflows (they load their model with UNETLoader) run on the FLUX-layout test model
the host loads (the narrow one on ComfyUI 0.33+, the 3072-wide one on 0.3.75), with the test CLIP-L
and the test FLUX VAE; SD workflows run on the SD test checkpoints.

``CKPT=/path/model.safetensors make demo`` also runs every SD workflow on that real checkpoint,
without the size and step reductions (slow on a CPU, but the images mean something).

Nothing is installed or built here: that is ``make setup``'s job.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Mapping

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import run_workflow  # noqa: E402
import serve  # noqa: E402

REPO = TOOLS.parent
WORKFLOWS = REPO / "workflows" / "api"
TEST_CHECKPOINTS = ("test_sd15.safetensors", "test_sdxl.safetensors")
SMALL_SIZE = 64
SMALL_STEPS = 4
SMALL_FLUX_STEPS = 2  # the 3072-wide FLUX test model (ComfyUI 0.3.75) takes seconds per forward on a CPU
SMALL_VALIDATION_TIMESTEPS = 2

# Int inputs that index into a schedule (scaled with it) rather than count steps (capped).
STEP_OFFSETS = {"skip_steps", "start_step", "start_at_step", "end_at_step", "end_step", "last_step", "stop_step"}


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step_count(name: str) -> bool:
    return name not in STEP_OFFSETS and (name == "steps" or name.endswith("_steps"))


def _is_step_offset(name: str) -> bool:
    return name in STEP_OFFSETS or name.endswith("_step")


TEST_CLIP = "test_clip_vit_l.safetensors"

# FLUX-class workflows load a diffusion model, its text encoders and its VAE separately (UNETLoader,
# DualCLIPLoader type flux, VAELoader); on the test models (tools/make_test_checkpoints.py, linked by
# tools/serve.py) those are a random FLUX-layout model, the test CLIP-L alone and a 16-channel TAESD.
FLUX_MODEL_LOADERS = ("UNETLoader",)
FLUX_TEST_NARROW = "test_flux.safetensors"  # hidden 256: detected by ComfyUI 0.33+ only
FLUX_TEST_WIDE = "test_flux_wide.safetensors"  # hidden 3072: detected by every host (0.3.75 fixes 24 heads)
FLUX_TEST_CLIP = "test_clip_l.safetensors"
FLUX_TEST_VAE = "test_flux_vae.safetensors"


def is_flux_workflow(workflow: Mapping) -> bool:
    """Whether an API workflow runs a FLUX-class model (it loads its diffusion model with UNETLoader)."""
    return any(node.get("class_type") in FLUX_MODEL_LOADERS for node in workflow.values())


def _retarget_flux_loaders(wf: dict, unet: str) -> None:
    """Points a FLUX workflow's loaders at the test files: UNETLoader at ``unet``, DualCLIPLoader (clip_l +
    t5xxl) becomes CLIPLoader of the test CLIP-L (type stable_diffusion: its rows condition the test
    models), VAELoader loads the test FLUX VAE."""
    for node in wf.values():
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        if kind in FLUX_MODEL_LOADERS:
            inputs["unet_name"] = unet
            inputs["weight_dtype"] = "default"
        elif kind == "DualCLIPLoader":
            node["class_type"] = "CLIPLoader"
            node["inputs"] = {"clip_name": FLUX_TEST_CLIP, "type": "stable_diffusion"}
        elif kind == "VAELoader" and not _is_link(inputs.get("vae_name")):
            inputs["vae_name"] = FLUX_TEST_VAE


def retarget(workflow: Mapping, ckpt: str, *, small: bool = True, size: int = SMALL_SIZE,
             max_steps: int = SMALL_STEPS) -> dict:
    """A copy of an API workflow pointed at checkpoint ``ckpt`` (a name in models/checkpoints), or for a
    FLUX workflow (:func:`is_flux_workflow`) at the diffusion model ``ckpt`` (models/diffusion_models).

    With ``small`` (the test checkpoints) it is also made cheap:
    - a FLUX workflow's text encoders and VAE become the test ones (:func:`_retarget_flux_loaders`);
    - every int ``width`` / ``height`` (ImageScale, EmptyLatentImage, ...) becomes ``size``;
      ``megapixels`` (ImageScaleToTotalPixels) the smallest allowed;
    - every int step count (``steps`` or ``*_steps``) is capped at ``max_steps`` (FLUX workflows: at
      ``SMALL_FLUX_STEPS``), the trainer's ``validation_timesteps`` at ``SMALL_VALIDATION_TIMESTEPS``;
    - CLIP vision / alignment text encoder file names become the test CLIP's;
    - ``overwrite`` inputs are switched on and ``if_exists`` set to overwrite, so repeated test runs
      (with other test checkpoints too) may replace their own outputs;
    - schedule positions (``skip_steps``, ``start_step``, ``*_step``, ...) are scaled by the same
      factor as the node's own ``steps`` (else the workflow's largest ``steps``) and kept below it.
    """
    wf = copy.deepcopy(dict(workflow))
    if is_flux_workflow(wf):
        if small:
            _retarget_flux_loaders(wf, ckpt)
        else:
            for node in wf.values():
                if node.get("class_type") in FLUX_MODEL_LOADERS:
                    node["inputs"]["unet_name"] = ckpt
    for node in wf.values():
        inputs = node.get("inputs", {})
        if "ckpt_name" in inputs and not _is_link(inputs["ckpt_name"]):
            inputs["ckpt_name"] = ckpt
        if small and inputs.get("overwrite") is False:  # repeated test runs reuse the embedding name
            inputs["overwrite"] = True
        if small and inputs.get("if_exists") in ("error", "reuse"):  # ... with other test checkpoints too
            inputs["if_exists"] = "overwrite"
        if small:  # the test CLIP ViT-L/14 (tools/make_test_clip.py), linked by tools/serve.py
            for name in ("clip_name", "alignment_text_encoder"):
                if name in inputs and not _is_link(inputs[name]) and node.get("class_type") != "CLIPLoader":
                    inputs[name] = TEST_CLIP
    if not small:
        return wf
    if is_flux_workflow(wf):
        max_steps = min(max_steps, SMALL_FLUX_STEPS)

    all_steps = [v for node in wf.values() for k, v in node.get("inputs", {}).items() if k == "steps" and _is_int(v)]
    workflow_steps = max(all_steps) if all_steps else None
    for node in wf.values():
        inputs = node.get("inputs", {})
        own_steps = inputs.get("steps") if _is_int(inputs.get("steps")) else workflow_steps
        for name, value in list(inputs.items()):
            if not _is_int(value):
                if name == "megapixels" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    inputs[name] = 0.01
                continue
            if name in ("width", "height"):
                inputs[name] = size
            elif name == "validation_timesteps":
                inputs[name] = min(value, SMALL_VALIDATION_TIMESTEPS)
            elif _is_step_count(name):
                inputs[name] = min(value, max_steps)
            elif _is_step_offset(name) and own_steps:
                new_total = min(own_steps, max_steps)
                if 0 <= value < own_steps:
                    scaled = round(value * new_total / own_steps)
                    if value > 0:
                        scaled = max(scaled, 1)
                    inputs[name] = min(scaled, new_total - 1)
    return wf


def load_image_nodes(workflow: Mapping) -> list[str]:
    return [nid for nid, node in workflow.items() if node.get("class_type") == "LoadImage"]


# --- synthetic input pictures ---------------------------------------------------------------

def write_png(path: Path, width: int, height: int, rows: list[bytes]) -> Path:
    """Minimal RGB PNG writer (standard library only)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row for row in rows)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


def synthetic_image(path: Path, index: int = 0, size: int = SMALL_SIZE) -> Path:
    """A deterministic test picture: a diagonal gradient, a disc, a square and stripes, whose colours
    and positions depend on ``index`` (so the inputs of a multi-image workflow differ)."""
    w = h = size
    hue = (index * 0.37) % 1.0

    def colour(t: float) -> tuple[int, int, int]:
        return tuple(int(127.5 + 127.5 * math.cos(2 * math.pi * (t + k / 3))) for k in range(3))

    disc_c, square_c, stripe_c = colour(hue), colour(hue + 0.5), colour(hue + 0.25)
    cx, cy, r = w * (0.3 + 0.1 * (index % 3)), h * 0.4, w * 0.22
    sx0, sy0, s = int(w * 0.55), int(h * (0.5 - 0.05 * (index % 2))), int(w * 0.3)
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            g = (x + y) / (w + h - 2)
            px = (int(40 + 160 * g), int(60 + 120 * (1 - g)), int(90 + 100 * (y / max(1, h - 1))))
            if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                px = disc_c
            elif sx0 <= x < sx0 + s and sy0 <= y < sy0 + s:
                px = square_c
            elif y > h * 0.82 and (x // max(1, w // 16)) % 2 == 0:
                px = stripe_c
            row += bytes(px)
        rows.append(bytes(row))
    return write_png(path, w, h, rows)


def synthetic_inputs(workflow: Mapping, folder: Path, size: int = SMALL_SIZE) -> dict[str, Path]:
    """``{node_id: png}`` for every LoadImage node, each a different synthetic picture."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, nid in enumerate(load_image_nodes(workflow)):
        images[nid] = synthetic_image(folder / f"exemplar_edit_test_{i}_{size}.png", i, size)
    return images


# --- the demo -------------------------------------------------------------------------------

def workflow_files(pattern: str = "*.json") -> list[Path]:
    return sorted(WORKFLOWS.glob(pattern))


def flux_test_model(python: str | None = None) -> str:
    """The FLUX-layout test model the server's host loads: the narrow one where its detection takes
    hidden sizes below 3072 (ComfyUI 0.33+), else the wide one. Asked of the host itself, in a
    subprocess of the server's Python (``comfy_host.loads_narrow_flux``)."""
    import subprocess

    narrow = serve.FLUX_CACHE / "diffusion_models" / FLUX_TEST_NARROW
    script = (f"import sys; sys.path.insert(0, {str(TOOLS)!r}); import comfy_host; "
              f"print('narrow' if comfy_host.loads_narrow_flux({str(narrow)!r}) else 'wide')")
    result = subprocess.run([python or serve.python_exe(), "-c", script], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    answer = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    if answer not in (["narrow"], ["wide"]):
        raise RuntimeError(f"could not ask the host which FLUX test model it loads: {result.stderr[-2000:]}")
    return FLUX_TEST_NARROW if answer == ["narrow"] else FLUX_TEST_WIDE


def plan(files: list[Path], sd_checkpoints: list[str], flux_model: str | None, real: list[str] = ()
         ) -> list[tuple[str, bool, list[Path]]]:
    """``[(model, small, workflows)]``, model-major (each model loads once): SD workflows on the SD test
    checkpoints (and on each real checkpoint, unreduced), FLUX workflows (:func:`is_flux_workflow`) on
    the FLUX test model the host loads."""
    flux = [path for path in files if is_flux_workflow(run_workflow.load_workflow(path))]
    sd = [path for path in files if path not in flux]
    runs = [(ckpt, True, sd) for ckpt in sd_checkpoints] + [(ckpt, False, sd) for ckpt in real]
    if flux and flux_model:
        runs.append((flux_model, True, flux))
    return [(model, small, paths) for model, small, paths in runs if paths]


def run_one(url: str, path: Path, ckpt: str, out_root: Path, scratch: Path, *, small: bool,
            timeout: float) -> dict:
    start = time.monotonic()
    row = {"workflow": path.stem, "checkpoint": ckpt, "status": "ok", "seconds": 0.0, "files": [], "error": ""}
    try:
        wf = retarget(run_workflow.load_workflow(path), ckpt, small=small)
        images = synthetic_inputs(wf, scratch, SMALL_SIZE if small else 512)
        out_dir = out_root / path.stem / Path(ckpt).stem
        row["files"] = run_workflow.submit_workflow(url, wf, images, None, out_dir, timeout)
        if not row["files"]:
            row["status"], row["error"] = "FAILED", "the workflow produced no images"
    except run_workflow.WorkflowError as exc:
        row["status"], row["error"] = "FAILED", str(exc)
    row["seconds"] = time.monotonic() - start
    return row


def print_table(rows: list[dict], out=sys.stdout) -> None:
    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(p)

    table = [("workflow", "checkpoint", "status", "seconds", "output files")]
    for r in rows:
        table.append((r["workflow"], r["checkpoint"], r["status"], f"{r['seconds']:.1f}",
                      ", ".join(rel(p) for p in r["files"]) or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:4])) + "  " + row[4], file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 12, file=out)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"\n{r['workflow']} on {r['checkpoint']}: {r['error']}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every workflows/api/*.json on the test checkpoints "
                                "(and on $CKPT, unreduced) and save the images.")
    p.add_argument("--out", default=str(REPO / "out"), help="output folder (default: out/)")
    p.add_argument("--workflow", default="*.json", help="glob in workflows/api (default: *.json)")
    p.add_argument("--url", help="use this running ComfyUI instead of starting one (it must have the "
                   "test checkpoints and the pack)")
    p.add_argument("--timeout", type=float, help="seconds per workflow (default: 900 on the test checkpoints, "
                   "7200 on $CKPT, which runs at full size and step count)")
    args = p.parse_args(argv)

    files = workflow_files(args.workflow)
    if not files:
        print(f"error: no workflow matches {WORKFLOWS / args.workflow}", file=sys.stderr)
        return 1
    tests = [n for n in TEST_CHECKPOINTS if (serve.CHECKPOINT_CACHE / n).is_file()]
    missing = [n for n in TEST_CHECKPOINTS if n not in tests]
    if missing:
        print(f"error: test checkpoint(s) {', '.join(missing)} missing in {serve.CHECKPOINT_CACHE}: "
              f"run `make setup`", file=sys.stderr)
        return 1
    real = [Path(c).name for c in os.environ.get("CKPT", "").split(os.pathsep) if c.strip()]
    flux_model = None
    if any(is_flux_workflow(run_workflow.load_workflow(path)) for path in files):
        flux_model = flux_test_model()
        if not (serve.FLUX_CACHE / "diffusion_models" / flux_model).is_file():
            print(f"error: FLUX test model {flux_model} missing in {serve.FLUX_CACHE}: run `make setup`",
                  file=sys.stderr)
            return 1
    runs = plan(files, tests, flux_model, real)
    out_root = Path(args.out)
    rows: list[dict] = []
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="exemplar-edit-demo-") as scratch:
            ctx = serve.running_server() if not args.url else _existing(args.url)
            with ctx as url:
                print(f"[demo] ComfyUI at {url} ({time.monotonic() - t0:.1f} s to start); "
                      f"{sum(len(paths) for _, _, paths in runs)} run(s) of {len(files)} workflow(s)", flush=True)
                for ckpt, small, paths in runs:  # model-major: each model is loaded once
                    for path in paths:
                        timeout = args.timeout or (900.0 if small else 7200.0)
                        row = run_one(url, path, ckpt, out_root, Path(scratch), small=small, timeout=timeout)
                        rows.append(row)
                        print(f"[demo] {row['workflow']} on {ckpt}: {row['status']} in {row['seconds']:.1f} s",
                              flush=True)
    except (serve.ServerError, run_workflow.WorkflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    print(f"\n[demo] total {time.monotonic() - t0:.1f} s")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


class _existing:
    def __init__(self, url: str):
        self.url = run_workflow.normalize_url(url)

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
