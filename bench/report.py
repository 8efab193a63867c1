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
RESULTS = BENCH / "results"
README = BENCH / "README.md"

# target: (case, model the target is stated for, limit on time ratio, limit on peak GB or None)
TARGETS = [
    ("DDIMInvert ≤ 1.05× plain sampling of the same steps", "ddim_invert", 1.05, None),
    ("Appearance transfer end to end (both inversions) ≤ 2.5× one plain sampling", "appearance_transfer", 2.5, None),
    ("CutLossGuidance ≤ 3× plain sampling, peak memory ≤ 12 GB", "translation", 3.0, 12.0),
    ("DeltaInterpolationTrainer: steps/s and peak memory better than a plain PyTorch loop of the same loss",
     "analogy_trainer", None, None),
]

# Measured causes of gaps (CPU-profile findings until a GPU run exists). Keyed by case.
CAUSES = {
    "ddim_invert": (
        "DDIMInvert makes the same UNet calls as plain sampling (one per step at cfg 1); what remains is "
        "per-step bookkeeping (the inversion record keeps every latent). CPU figures are within the noise "
        "of a shared 2-core machine."),
    "appearance_transfer": (
        "Floor: 2 inversions × (steps − skip) batched cond+uncond evaluations (cfg 3.5) plus a replay whose "
        "UNet batch carries the output, reference and structure branches (up to 3× the rows of a cfg-1 "
        "step). Measured on CPU (cProfile, bench/profile_appearance.py, SD1.5 64 px): the UNet is 98.6 % of the "
        "run; matching + rearrangement + AdaIN 0.06 %, everything else 1.3 % (see PROFILE.md). Matching grows "
        "with tokens², so it must be re-profiled at 512² on a GPU."),
    "translation": (
        "Each guided step runs a forward and a backward pass of the UNet for the PatchNCE + cross-attention "
        "losses, then the CFG prediction: about 3 UNet-forward equivalents per step plus the backward."),
    "analogy_trainer": "Not benchmarked yet: the plain PyTorch training loop of the same loss is not written.",
}


def load_runs() -> list[tuple[str, dict]]:
    """(file stem, latest run) per results file, newest file first."""
    out = []
    for path in sorted(RESULTS.glob("*.json"), reverse=True):
        try:
            runs = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError):
            continue
        if runs:
            out.append((path.stem, runs[-1]))
    return out


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def run_table(stem: str, run: dict) -> list[str]:
    m = run["machine"]
    cuda = m["device"] == "cuda"
    where = f"{m['gpu']} ({m.get('gpu_memory_gb')} GB), CUDA {m.get('cuda')}" if cuda else \
        f"CPU {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads)"
    p = run["profile"]
    lines = [f"### {stem} — {'GPU, full-size models' if cuda else 'CPU only, small test models'}", "",
             f"Measured {run['time']} on {where}; torch {m['torch']}, ComfyUI {m['comfyui']}, pack {m['pack_commit']}, "
             f"Python {m['python']}. Steps {p['steps']} (appearance {p['appearance_steps']}, skip "
             f"{p['appearance_skip']}), median of {p['repeats']} repeats; whole run {run.get('seconds_total', '?')} s."
             + (f" Load average at start {m['load_average']} (shared machine: timings are noisy)."
                if not cuda and m.get("load_average") else ""),
             f"Memory: {run['memory_method']}.", ""]
    mem_head = "peak GiB" if cuda else "peak RSS growth MiB"
    lines.append(f"| model | case | steps | s / image | ms / step | {mem_head} | time × plain | memory × plain |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, data in run["models"].items():
        for r in data["rows"]:
            label = f"{model} {data['size']}px"
            if r.get("error"):
                lines.append(f"| {label} | {r['case']} | {r['steps']} | FAILED | | | | |")
                continue
            mem = _gib(r["peak_bytes_median"]) if cuda else _mib(r["peak_bytes_median"])
            ratio_t = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "1 (baseline)"
            ratio_m = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
            name = r["case"] + (f" (vs {r['baseline']})" if r.get("baseline") else "")
            lines.append(f"| {label} | {name} | {r['steps']} | {r['seconds_median']:.3f} | {r.get('ms_per_step', 0):.1f} "
                         f"| {mem} | {ratio_t} | {ratio_m} |")
    if run.get("skipped_cases"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in run["skipped_cases"].items()) + "."]
    return lines + [""]


def target_lines(runs: list[tuple[str, dict]]) -> list[str]:
    gpu = next((r for _, r in runs if r["machine"]["device"] == "cuda" and r["profile"].get("full_size")), None)
    cpu = next((r for _, r in runs if r["machine"]["device"] == "cpu"), None)

    def row(run, case, model):
        if not run or model not in run["models"]:
            return None
        return next((r for r in run["models"][model]["rows"] if r["case"] == case and not r.get("error")), None)

    lines = ["| target | GPU SD1.5 512² | GPU SDXL 1024² | status | CPU-only figure (small models, 64 px) |",
             "|---|---|---|---|---|"]
    for text, case, limit_t, limit_gb in TARGETS:
        cells, verdicts = [], []
        for model in ("sd15", "sdxl"):
            r = row(gpu, case, model)
            if r is None:
                cells.append("pending")
                continue
            cell = f"{r['time_ratio']:.2f}×"
            ok = limit_t is None or r["time_ratio"] <= limit_t
            if limit_gb is not None:
                gb = r["peak_bytes_median"] / 1e9
                cell += f", {gb:.1f} GB"
                ok = ok and gb <= limit_gb
            cells.append(cell)
            if model == "sd15":
                verdicts.append(ok)
        if gpu is None or not verdicts:
            status = "pending: no GPU run yet"
        else:
            status = "met" if all(verdicts) else "gap: " + CAUSES.get(case, "cause not yet measured")
        cpu_cells = []
        for model in ("sd15", "sdxl"):
            r = row(cpu, case, model)
            if r is not None and "time_ratio" in r:
                cpu_cells.append(f"{model} {r['time_ratio']:.2f}×")
        lines.append(f"| {text} | {cells[0]} | {cells[1]} | {status} | {', '.join(cpu_cells) or 'not measured'} |")
    return lines


def render() -> str:
    runs = load_runs()
    has_gpu = any(r["machine"]["device"] == "cuda" and r["profile"].get("full_size") for _, r in runs)
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
        "out (equal with or without a method), and so is FreeU in the appearance workflow (a stock node).",
        "",
        "- **CUDA**: random-weight checkpoints at the real SD1.5 (512²) and SDXL (1024²) architecture sizes are "
        "built once (`bench/models.py`, from tools/make_test_checkpoints.py's recipe; cached in "
        "`.cache/bench_checkpoints`); 50 steps, appearance transfer 100 steps skip 32. Peak memory is "
        "`torch.cuda.max_memory_allocated` (reset before each run, loaded weights included).",
        "- **CPU**: the small test checkpoints at 64 px, 12 steps (appearance 12 skip 4), a few minutes. "
        "Peak memory is the growth of the process's peak resident set during the run (freed heap returned with "
        "`malloc_trim`, the kernel's high-water mark reset with `/proc/self/clear_refs`, then "
        "`VmHWM` − RSS at start). CPU ratios say little about a GPU: the small models are dominated by "
        "per-call overhead, and the machine the CPU figures come from is shared (noisy).",
        "- Results append to `bench/results/<date>-<device>.json` (machine, torch, ComfyUI version, pack commit, "
        "every repeat); `.venv/bin/python bench/report.py` regenerates this file.",
        "- `bench/gpu_smoke.py` runs every shipped workflow (`workflows/api/*.json`) at full architecture size on "
        "CUDA and checks the outputs are finite; `--dry-run` does the same on the small models on any machine.",
        "",
        "## Targets (issue 6: GPU, SD1.5 512², 50 steps unless a method fixes its own; SDXL 1024² beside)",
        "",
    ]
    if not has_gpu:
        out += ["**No GPU run yet: every figure below is CPU-only (small test models); the GPU table is pending.**", ""]
    out += target_lines(runs)
    out += ["", "Causes (measured or, where marked, expected):", ""]
    out += [f"- `{case}`: {text}" for case, text in CAUSES.items()]
    out += ["", "## Results (latest run per file)", ""]
    if not runs:
        out += ["No results yet: run `make bench`.", ""]
    for stem, run in runs:
        out += run_table(stem, run)
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
