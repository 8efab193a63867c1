#!/usr/bin/env python3
"""Regenerate bench/README.md from every bench/results/*.json (the latest run per device file).

    .venv/bin/python bench/report.py [--check]

``--check`` exits 1 if README.md is not what the results produce (nothing is written).
The prose (method, targets, causes of the gaps) lives here, next to the code that fills the tables;
edit CAUSES when a gap is measured and understood.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from cases import CPU_FULL_PROFILE as CPU_FULL, CPU_PROFILE as CPU, CUDA_PROFILE as CUDA  # noqa: E402
RESULTS = BENCH / "results"
README = BENCH / "README.md"

# target: (case, model the target is stated for, limit on time ratio, limit on peak GB or None); a time
# limit in FloorLimit is a multiple of the method's floor (the row's floor_ratio), not of plain sampling


VERSUS_MEMORY_LIMIT = 1.1  # peak memory of a method over its comparator's (a row with "versus")


class FloorLimit(float):
    """A time limit stated as a multiple of the method's floor."""


MODELS = ("sd15", "sdxl", "flux")  # the target table's columns; the issue-6 verdict is SD1.5's

TARGETS = [
    ("DDIMInvert ≤ 1.05× plain sampling of the same steps", "ddim_invert", 1.05, None),
    ("Appearance transfer end to end (both inversions) ≤ 2.5× one plain sampling", "appearance_transfer", 2.5, None),
    ("CutLossGuidance ≤ 1.1× its floor (issue 14; issue 6 asked ≤ 3× plain sampling, below the floor of 4.5×), "
     "peak memory ≤ 12 GB", "translation", FloorLimit(1.1), 12.0),
    ("CutLossGuidance (lambda_cut 0) ≤ 1.05× the official pix2pix-zero loop's time and ≤ 1.1× its peak memory "
     "(issue 23; same UNet and inputs, bench/translation.py)", "translation_xa", 1.05, None),
    ("DeltaInterpolationTrainer: steps/s and peak memory better than a plain PyTorch loop of the same loss",
     "analogy_trainer", None, None),
]

# Measured causes of gaps (CPU-profile findings until a GPU run exists). Keyed by case.
CAUSES = {
    "ddim_invert": (
        "DDIMInvert makes the same UNet calls as plain sampling (one per step at cfg 1); what remains is "
        "per-step bookkeeping (the inversion record keeps every latent) and the one-off copy of that record to "
        "the CPU. On the CPU at 64 px the ratio moved between 0.82× and 1.16× across runs with the same per-step "
        "work (a 130 ms step, ±20 ms): the small models cannot resolve a 5 % target; the GPU run decides."),
    "appearance_transfer": (
        "Floor: 2 inversions × (steps − skip) batched cond+uncond evaluations (cfg 3.5) plus a replay whose "
        "UNet batch carries the output, reference and structure branches (up to 3× the rows of a cfg-1 "
        "step). Measured on CPU (cProfile, bench/profile_appearance.py, SD1.5 64 px): the UNet is 98.6 % of the "
        "run; matching + rearrangement + AdaIN 0.06 %, everything else 1.3 % (see PROFILE.md). Matching grows "
        "with tokens², so it must be re-profiled at 512² on a GPU; on CUDA the cosine similarities run in fp16, "
        "1024 rows at a time, and nothing in a step reads a value back to the host except the one sigma per "
        "UNet call that tells the patch which step it is in."),
    "translation": (
        "Floor: per guided step 1 reference row-forward (the caption is the negative too, so one set of maps "
        "serves both CFG rows) + a forward and a backward pass per CFG row for the guidance loss (3 × 2) + the "
        "CFG step (2) = 9 row-forwards against plain sampling's 2: 4.5×. Measured on this CPU (small SD1.5 "
        "test model, 64 px, 6 steps; the machine was shared with other jobs, so single figures move by ±20 %), "
        "2026-12-01, two runs back to back on the pinned 0.3.75 with the same bench code: before issue 14 "
        "(pack 2a4e6f3, whole reference pass stored first, in fp16) 8.67× plain, after (lockstep) 6.21× = "
        "1.38× the floor; on v0.33.0 (reload gradient path) 7.73× = 1.72× the floor. What remains above the "
        "floor: the guided and reference passes materialise the attention probabilities softmax(QKᵀ) of every "
        "attn2 (the loss compares them) where plain sampling uses fused attention; per-call overhead dominates "
        "the tiny models; on hosts before Dynamic VRAM (0.3.75) every UNet forward of the run copies the "
        "weights, also in the reference and CFG passes, because `comfy.ops` casts any layer that has a weight "
        "function with a copy and the identity wrappers the gradient needs belong to the loaded patcher "
        "(limiting them to the gradient passes would mean loading another patcher twice per step); on v0.16+ "
        "hosts no pass copies weights (the run samples a private reloaded copy with ordinary weights, as "
        "ComfyUI's training node), but each run loads the model once more. GPU ratio pending."),
    "analogy_trainer": (
        "Measured on a CPU at real SD1.5 size (512², 2 threads, bench/results 2026-11-23-cpu): 0.85× the plain "
        "loop's time per step and 0.67× its peak memory growth, same losses. Why it is leaner: the two "
        "consistency terms are backpropagated one at a time to a gradient boundary at the conditioning (one "
        "term's UNet activations alive at a time; the plain loop holds both until its single backward), and "
        "the weight copies ComfyUI makes for a differentiable clone are neither kept for the backward pass nor "
        "differentiated. On the small test models at 64 px the step is dominated by the full-size CLIP text "
        "encoders, and the node is about as fast as the plain loop (its batched text pass against its weight "
        "copies). SDXL at 1024² was not run on this 24 GiB CPU machine: by estimate its fp32 weights alone "
        "(UNet, both text encoders, VAE, CLIP vision, alignment encoder) take ≈ 15.6 GB before any activation; "
        "GPU pending."),
}


def load_runs() -> list[tuple[str, list[dict]]]:
    """(file stem, its runs newest first) per results file, newest file first."""
    out = []
    for path in sorted(RESULTS.glob("*.json"), reverse=True):
        try:
            runs = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError):
            continue
        if runs:
            out.append((path.stem, list(reversed(runs))))
    return out


def latest_rows(runs: list[dict]) -> list[tuple[dict, dict[str, list[dict]]]]:
    """The newest row of every (model, case) across ``runs`` (newest first), grouped by the run it
    comes from; a method row brings its own run's baseline row along (its ratios are against it)."""
    seen: set = set()
    out = []
    for run in runs:
        picked: dict[str, list[dict]] = {}
        for model, data in run["models"].items():
            rows = data["rows"]
            keep = [r for r in rows if r.get("kind") == "method" and (model, r["case"]) not in seen]
            names = {r["case"] for r in keep} | {r.get("baseline") for r in keep}
            keep = [r for r in rows if r["case"] in names]
            seen.update((model, r["case"]) for r in keep if r.get("kind") == "method")
            if keep:
                picked[model] = keep
        if picked:
            out.append((run, picked))
    return out


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def model_label(model: str, data: dict) -> str:
    """The model's name; FLUX's with its file, which differs by host and size (the test model a host
    loads: 3072 wide on 0.3.75, 256 wide on 0.33+; FLUX.1's size on a GPU)."""
    if model != "flux" or not data.get("checkpoint"):
        return model
    return f"flux ({Path(data['checkpoint']).stem})"


def run_table(stem: str, run: dict, picked: dict[str, list[dict]]) -> list[str]:
    m = run["machine"]
    cuda = m["device"] == "cuda"
    full = run["profile"].get("full_size")
    where = f"{m['gpu']} ({m.get('gpu_memory_gb')} GB), CUDA {m.get('cuda')}" if cuda else \
        f"CPU {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads)"
    p = run["profile"]
    kind = "GPU" if cuda else "CPU only"
    lines = [f"### {stem}, run {run['time']} — {kind}, {'full-size' if full else 'small test'} models", "",
             f"Measured {run['time']} on {where}; torch {m['torch']}, ComfyUI {m['comfyui']}, pack {m['pack_commit']}, "
             f"Python {m['python']}. Steps {p['steps']} (appearance {p['appearance_steps']}, skip "
             f"{p['appearance_skip']}), median of {p['repeats']} repeats"
             + (f"; training {p['training_short_steps']} and {p['training_steps']} steps, "
                f"{p['training_repeats']} repeat(s)" if "training_steps" in p else "")
             + f"; whole run {run.get('seconds_total', '?')} s."
             + (f" Load average at start {m['load_average']}"
                + (f", at end {m['load_average_end']}" if m.get("load_average_end") else "")
                + " (shared machine: timings are noisy)." if not cuda and m.get("load_average") else ""),
             f"Memory: {run['memory_method']}.", ""]
    mem_head = "peak GiB" if cuda else "peak RSS growth MiB"
    lines.append(f"| model | case | steps | s / image | ms / step | {mem_head} | time × plain | memory × plain "
                 "| floor × plain | time × floor |")  # "plain": the row's baseline
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, rows in picked.items():
        data = run["models"][model]
        for r in rows:
            label = model_label(model, data) + f" {data['size']}px"
            if r.get("error"):
                lines.append(f"| {label} | {r['case']} | {r['steps']} | FAILED | | | | | | |")
                continue
            mem = _gib(r["peak_bytes_median"]) if cuda else _mib(r["peak_bytes_median"])
            ratio_t = f"{r['time_ratio']:.2f}" if "time_ratio" in r else (
                "1 (baseline)" if r.get("kind") == "baseline" else "no baseline")
            ratio_m = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else ""
            name = r["case"] + (f" (vs {r['baseline']})" if r.get("baseline") else "")
            if r.get("steps_per_second"):  # a training comparison: per-step figures
                steps, speed = f"{r['steps']} training", f"{r['steps_per_second']:.3f} steps/s"
            else:
                steps, speed = str(r["steps"]), f"{r['seconds_median']:.3f}"
            floor = f"{r['floor_ratio']:.2f}" if r.get("floor_ratio") else ""
            over = f"{r['time_over_floor']:.2f}" if r.get("time_over_floor") else ""
            lines.append(f"| {label} | {name} | {steps} | {speed} | {r.get('ms_per_step', 0):.1f} "
                         f"| {mem} | {ratio_t} | {ratio_m} | {floor} | {over} |")
    counted = sorted({r["floor_counted"] for rows in picked.values() for r in rows if r.get("floor_counted")})
    if counted:
        lines += ["", "Floor (UNet row-forward equivalents per step, a backward pass counted as two forwards): "
                  + "; ".join(counted) + "."]
    if run.get("skipped_cases"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in run["skipped_cases"].items()) + "."]
    return lines + [""]


def _newest_row(runs, case: str, model: str, device: str, full: bool, comfyui: str | None = None):
    """The newest error-free row of ``case`` on ``model`` among runs on ``device`` at that size (and
    on that ComfyUI version, if given)."""
    for _, file_runs in runs:
        for run in file_runs:
            if run["machine"]["device"] != device or bool(run["profile"].get("full_size")) != full:
                continue
            if comfyui is not None and run["machine"].get("comfyui") != comfyui:
                continue
            rows = run["models"].get(model, {}).get("rows", [])
            r = next((x for x in rows if x["case"] == case and not x.get("error") and "time_ratio" in x), None)
            if r is not None:
                return r, run
    return None, None


def _cell(r, limit_t, limit_gb, cuda: bool) -> tuple[str, bool]:
    if r.get("steps_per_second"):  # training: faster and leaner than the plain loop, per step
        ok = r["time_ratio"] < 1.0 and (r.get("memory_ratio") or 9) < 1.0
        mem = f"{r['peak_bytes_median'] / 1e9:.1f} GB" if cuda else f"{r['peak_bytes_median'] / 2**20:,.0f} MiB growth"
        same = "same first losses" if r.get("losses_match") else "first losses differ from the plain loop's"
        memory = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else "-"
        return (f"{r['steps_per_second']:.3f} steps/s, {mem}; × plain loop: time {r['time_ratio']:.2f}, "
                f"memory {memory} ({same})"), ok and bool(r.get("losses_match"))
    cell = f"{r['time_ratio']:.2f}×"
    if isinstance(limit_t, FloorLimit):
        if not r.get("time_over_floor"):
            return cell + " (floor not recorded)", False
        cell += f" = {r['time_over_floor']:.2f}× its floor of {r['floor_ratio']:.2f}×"
        ok = r["time_over_floor"] <= limit_t
    else:
        ok = limit_t is None or r["time_ratio"] <= limit_t
    if r.get("versus"):  # against a comparator of the same run: its peak memory too
        cell = f"time {cell}, peak memory {r.get('memory_ratio', 0):.2f}× {r['versus']}"
        ok = ok and r.get("memory_ratio", 9) <= VERSUS_MEMORY_LIMIT
    if limit_gb is not None:
        gb = r["peak_bytes_median"] / 1e9
        cell += f", {gb:.1f} GB" if cuda else ""
        ok = ok and (gb <= limit_gb if cuda else ok)
    return cell, ok


def target_lines(runs) -> list[str]:
    has_gpu = any(r["machine"]["device"] == "cuda" and r["profile"].get("full_size") for _, rs in runs for r in rs)
    lines = ["| target | GPU SD1.5 512² | GPU SDXL 1024² | GPU FLUX.1 512² | status | CPU, real-size SD1.5 512² "
             "| CPU, small test models (64 px) |",
             "|---|---|---|---|---|---|---|"]
    for text, case, limit_t, limit_gb in TARGETS:
        cells, verdicts = [], []
        for model in MODELS:
            r, _ = _newest_row(runs, case, model, "cuda", True)
            if r is None:
                cells.append("pending")
                continue
            cell, ok = _cell(r, limit_t, limit_gb, True)
            cells.append(cell)
            if model == "sd15":
                verdicts.append(ok)
        if not has_gpu or not verdicts:
            status = "pending: no GPU run yet"
        else:
            status = "met" if all(verdicts) else "gap: " + CAUSES.get(case, "cause not yet measured")
        cpu_full = []
        for model in ("sd15", "sdxl"):
            r, _ = _newest_row(runs, case, model, "cpu", True)
            if r is not None:
                cpu_full.append(f"{model}: {_cell(r, limit_t, limit_gb, False)[0]}")
        cpu_small = []
        for model in MODELS:
            # FLUX: one figure per host, whose test models differ (3072 wide on 0.3.75, 256 on 0.33+)
            hosts = sorted({run["machine"].get("comfyui") for _, rs in runs for run in rs}, key=str) \
                if model == "flux" else [None]
            for host in hosts:
                r, run = _newest_row(runs, case, model, "cpu", False, host)
                if r is None:
                    continue
                label = model_label(model, run["models"][model])
                if model == "flux":
                    label += f", ComfyUI {host}"
                cpu_small.append(f"{label}: {_cell(r, limit_t, limit_gb, False)[0]}")
        lines.append(f"| {text} | {' | '.join(cells)} | {status} | {'; '.join(cpu_full) or 'not measured'} "
                     f"| {'; '.join(cpu_small) or 'not measured'} |")
    return lines


def gpu_check_lines() -> list[str]:
    """The Dynamic VRAM gradient check (bench/gpu_dynamic_vram.py): its recorded runs, or pending."""
    out = ["## GPU check: gradients under Dynamic VRAM (issue 12)", "",
           "`bench/gpu_dynamic_vram.py` starts ComfyUI (v0.16+, e.g. the v0.33.0 tree) through `main.py` with "
           "default flags (Dynamic VRAM on NVIDIA) and with `--disable-dynamic-vram`, on a random-weight checkpoint of "
           "the real SD1.5 architecture at 512 px, without and with a random LoRA, and compares the first losses and "
           "gradients of both gradient paths (DeltaInterpolationTrainer's token consistency loss in the tokens, "
           "CutLossGuidance's attention loss in the latent) between the two modes. Prepare here with "
           "`bash bench/gpu_carry.sh` (`.gpu/`: the host tree and Python 3.12 wheels, about 52 MiB), then one command "
           "on the GPU machine, with `.gpu` carried: `bash bench/gpu_carry.sh --install && PYTHONPATH=.gpu/site "
           "COMFYUI_PATH=.gpu/ComfyUI python3 bench/gpu_dynamic_vram.py` (its record lands in `$OUT`; copy it to "
           "`bench/results/<date>-gpu_dynamic_vram.json`). `--dry-run` on the CPU passed on both hosts of the matrix "
           "(2026-12-01; there both modes are the same, and the two hosts' strategies, reload and copy-per-forward, "
           "gave identical first losses).", ""]
    records = sorted(RESULTS.glob("*gpu_dynamic_vram*.json"))
    if not records:
        return out + ["**Pending: no GPU has been lent to this project yet, so this check has not run.** "
                      "`--dry-run` (the small model on the CPU, where both modes are the same) checks the script.", ""]
    for path in records:
        record = json.loads(path.read_text())
        out.append(f"- {path.name}: {'passed' if record.get('passed') else 'FAILED'} on {record.get('gpu')}, "
                   f"torch {record.get('torch')}, {record.get('seconds')} s; report: "
                   f"`{json.dumps(record.get('report'), default=str)[:400]}`")
    return out + [""]


def render() -> str:
    runs = load_runs()
    has_gpu = any(r["machine"]["device"] == "cuda" and r["profile"].get("full_size") for _, rs in runs for r in rs)
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by bench/report.py from bench/results/*.json: edit report.py, not this file -->",
        "",
        "`make bench` (`bench/run.py`) times every method against **plain sampling of the same model, resolution "
        "and step count, in the same run** (stock `SamplerCustom` + `euler`), and reports the ratios. Graphs run "
        "in-process through ComfyUI's own validator and executor; each graph runs once to warm up, then the "
        "repeats of all graphs are interleaved and the medians kept. Figures are from latents to latents: text "
        "encodings and loaded models stay cached between repeats (as in a session), VAE encode/decode are left "
        "out (equal with or without a method), and so is FreeU in the appearance workflow (FreeU (Eye-for-an-eye official): a filter on 4 decoder levels, a few FFTs of the backbone per UNet call; it does nothing on the small test models, whose widths it does not act on).",
        "",
        "- **CUDA**: random-weight checkpoints at the real SD1.5 (512²), SDXL (1024²) and FLUX.1 (512², below) "
        "architecture sizes are built once (`bench/models.py`, from tools/make_test_checkpoints.py's recipe; cached in "
        "`.cache/bench_checkpoints`); 50 steps, appearance transfer 100 steps skip 32. Peak memory is "
        "`torch.cuda.max_memory_allocated` (reset before each run, loaded weights included).",
        f"- **CPU**: the small test checkpoints at 64 px, {CPU.steps} steps (appearance {CPU.appearance_steps} skip "
        f"{CPU.appearance_skip}), a few minutes. "
        "Peak memory is the growth of the process's peak resident set during the run (freed heap returned with "
        "`malloc_trim`, the kernel's high-water mark reset with `/proc/self/clear_refs`, then "
        "`VmHWM` − RSS at start). CPU ratios say little about a GPU: the small models are dominated by "
        "per-call overhead, and the machine the CPU figures come from is shared (noisy).",
        "- **DeltaInterpolationTrainer** is compared with a plain PyTorch training loop of the same loss on the same "
        "checkpoint (`bench/analogy.py`): the loss written out directly on the checkpoint's own UNet and text-encoder "
        "modules, loaded outside ComfyUI's inference mode, one UNet forward per loss term and one backward, AdamW. "
        "Each side runs in its own process; both report their first losses, which agree (same objective). "
        "Per-step time of the node is (T(N) − T(n)) / (N − n) from whole-node runs, so loading and the one-off "
        "encodes cancel out; peak memory covers the whole run of each side (the one-off encodes included). "
        f"Steps: CUDA {CUDA.training_short_steps} and {CUDA.training_steps}; CPU small models "
        f"{CPU.training_short_steps} and {CPU.training_steps}; `--full` on a CPU builds the real-size checkpoints "
        f"and runs only this comparison ({CPU_FULL.training_short_steps} and {CPU_FULL.training_steps} steps at 512²).",
        "- **FLUX-class models** (issues 21 and 22, `--models flux`): the same cases built from the shipped "
        "`*_flux` workflows (stock UNETLoader, CLIPLoader of the test CLIP-L, FluxGuidance 3.5, cfg 1, euler and the "
        "`simple` schedule, 16-channel latents; plain sampling likewise): appearance transfer (two edit-friendly "
        "flow inversions and the patched replay, `dit_all_blocks`; with and without the automatic masks the FLUX "
        "workflow uses), translation (EditDirection + CutLossGuidance at cfg 1 through the distilled guidance, "
        "from a cached Euler inversion) and DeltaInterpolationTrainer per step (the node alone, in the FLUX "
        "workflow's conditioning token space: there is no plain loop of the FLUX loss to compare with). CPU: the "
        "FLUX-layout test model the host loads at 64 px (16 image tokens + 77 text tokens): on ComfyUI 0.3.75 "
        "the 3072-wide one (`test_flux_wide`, 1 double + 1 single block, 0.5 B parameters), on 0.33+ the 256-wide "
        "one (`test_flux`, 2 + 2 blocks): the two hosts' FLUX rows are of different models, not comparable with "
        "each other, and both are far from FLUX.1's shape (its per-step cost is in the 57 blocks at 3072 wide). "
        "CUDA: FLUX.1-dev's architecture with random weights (`bench/models.py`: hidden 3072, 24 heads, 19 double "
        "+ 38 single blocks, guidance input, 11.9 B parameters in bf16, 24 GB; built on the GPU machine's CPU, "
        "by estimate 2–4 min: ~12 G normal draws at 150–300 M/s on one core, measured here, plus writing 24 GB) at "
        "512² (the FLUX workflows' size), with the test CLIP-L as its only text encoder: the image tokens and "
        "every block are FLUX.1's, but the text arrives as 77 tokens of width 768 instead of T5-XXL's ≥ 256 of "
        "4096, so the joint sequence is 1101 tokens instead of 1280. GPU run (pending: no GPU lent), one call with "
        "`.gpu` carried (`bash bench/gpu_carry.sh` here): `bash bench/gpu_carry.sh --install && PYTHONPATH=.gpu/site "
        "COMFYUI_PATH=.gpu/ComfyUI python3 bench/run.py --device cuda --models flux --cases "
        "appearance_transfer,appearance_auto_mask,translation --repeats 2; cp bench/results/*-cuda-*.json $OUT/` "
        "(by estimate it fits a 10-minute call: the build above, then a FLUX.1 forward at 512² of about 26 TFLOP, "
        "tens of ms on an H200, so the graphs take a few minutes; the built model stays in `.cache/bench_checkpoints` "
        "while the machine stays warm). The FLUX trainer row also needs the 816 MB test CLIP vision model "
        "(`.cache/clip`, too large to carry: build it there with tools/make_test_clip.py).",
        "- **CutLossGuidance against the official pix2pix-zero loop** (issue 23; `--cases "
        "translation_official,translation_xa`): `bench/translation.py` runs the official `edit_pipeline.py` loop "
        "(a whole no-grad reference pass storing every cross-attention map, then per step a 2-row forward and "
        "backward, an SGD step on the latent, a 2-row CFG forward and a DDIM step) as plain PyTorch over the same "
        "checkpoint's UNet loaded outside inference mode, on the same inverted latent, schedule, caption and edit "
        "direction as `translation_xa` (CutLossGuidance with `lambda_cut` 0, the pix2pix-zero loss). The two "
        "alternate in one process (no plain sampling in between, so what the pack keeps between guided runs stays "
        "kept, as in a session); the row records the relative difference of their outputs (about 1e-5 on the "
        "test model) and the time and peak-memory ratios. The comparator's own model copy and the pack's kept "
        "differentiable copy (v0.16+ hosts) are loaded before the measured runs and not counted in either peak.",
        "- Results append to `bench/results/<date>-<device>.json` (machine, torch, ComfyUI version, pack commit, "
        "every repeat); `.venv/bin/python bench/report.py` regenerates this file.",
        "- `bench/gpu_smoke.py` runs every shipped workflow (`workflows/api/*.json`) at full architecture size on "
        "CUDA (the `*_flux` ones on the FLUX.1-size model, with its CLIP-L and the 16-channel test TAESD as VAE) "
        "and checks the outputs are finite; `--dry-run` does the same on the small models on any machine.",
        "",
        "## Targets (issue 6: GPU, SD1.5 512², 50 steps unless a method fixes its own; SDXL 1024² beside)",
        "",
    ]
    if not has_gpu:
        out += ["**No GPU run yet: every figure below is CPU-only; the GPU columns are pending.**", ""]
    out += target_lines(runs)
    out += ["", "Causes (measured or, where marked, expected):", ""]
    out += [f"- `{case}`: {text}" for case, text in CAUSES.items()]
    out += ["", "## Results (the newest figure of every case and model, per results file)", ""]
    if not runs:
        out += ["No results yet: run `make bench`.", ""]
    for stem, file_runs in runs:
        for run, picked in latest_rows(file_runs):
            out += run_table(stem, run, picked)
    out += gpu_check_lines()
    profile = BENCH / "PROFILE.md"
    if profile.exists():
        out += ["## Profile", "", f"See [PROFILE.md](PROFILE.md) (`bench/profile_appearance.py`).", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        same = README.exists() and README.read_text() == text
        print("bench/README.md is up to date" if same else "bench/README.md is stale: run bench/report.py")
        return 0 if same else 1
    tmp = README.with_name(f".README.md.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, README)
    print(f"[bench] wrote {README.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
