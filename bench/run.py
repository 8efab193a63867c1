#!/usr/bin/env python3
"""``make bench``: time every method against plain sampling of the same model, size and steps.

    .venv/bin/python bench/run.py [--device auto|cpu|cuda] [--models sd15,sdxl,flux] [--cases NAME,...]
                                  [--repeats N] [--small] [--no-save]

On CUDA it builds random-weight SD1.5 (512 px), SDXL (1024 px) and FLUX.1 (512 px, the shipped
FLUX workflows' size) models at the real architecture sizes (bench/models.py; cached in
.cache/bench_checkpoints) and runs 50 steps (appearance transfer: 100 steps, skip 32). On a CPU it
uses the small test models from ``make setup`` at 64 px and 6 steps (FLUX: the FLUX-layout test
model the host loads), and finishes in a few minutes; ``--full`` builds the real-size checkpoints
on a CPU too (only the training comparison is practical there).

Each graph runs in-process through ComfyUI's own validator and executor (tests/pack_testing.py's
GraphRunner), once to warm up (load the model, fill caches), then ``--repeats`` times interleaved
with its plain-sampling baseline (so load from other processes hits both alike); medians are
reported. Results are appended to ``bench/results/<date>-<device>.json`` and bench/README.md's
tables are regenerated from all result files (bench/report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--models", default="sd15,sdxl,flux", help="comma list of sd15, sdxl, flux (default all)")
    p.add_argument("--cases", default="", help="comma list of case names (default all available)")
    p.add_argument("--repeats", type=int, help="measured runs per graph (default 3)")
    p.add_argument("--training-steps", type=int, help="DeltaInterpolationTrainer: steps of the long run (default "
                   "the profile's); a model whose training step is short against the run's one-off work (the "
                   "narrow FLUX test model) needs more for its per-step figure to rise above run-to-run noise")
    p.add_argument("--small", action="store_true", help="on CUDA, use the small test checkpoints and the CPU "
                   "profile (a quick check of the bench itself)")
    p.add_argument("--full", action="store_true", help="on a CPU, build and use the real-size SD1.5/SDXL "
                   "checkpoints (512/1024 px; practical only for --cases analogy_trainer)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default on CPU: 1, stable on a shared machine; "
                   "2 threads on a 2-core machine with other work running measured 5x slower)")
    p.add_argument("--no-save", action="store_true", help="print only; do not append to bench/results")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def run_model(runner, ctx, cases, repeats: int, device: str, folder) -> list[dict]:
    import cases as case_mod

    compared = [c for c in cases if c.compare is not None]
    cases = [c for c in cases if c.compare is None]
    baselines: dict[str, tuple[int, float]] = {}
    plan: list[tuple[str, object]] = []   # (name, prompt builder run -> prompt)
    for case in cases:
        if case.baseline is not None:
            steps, cfg = case.baseline(ctx)
            baselines[case_mod.plain_name(steps, cfg)] = (steps, cfg)
    for name, (steps, cfg) in baselines.items():
        plan.append((name, lambda run, s=steps, c=cfg: case_mod.build_plain(ctx, run, s, c)))
    for case in cases:
        plan.append((case.name, lambda run, c=case: c.build(ctx, run)))

    samples: dict[str, list[harness.Sample]] = {name: [] for name, _ in plan}
    errors: dict[str, str] = {}
    outputs_finite: dict[str, bool] = {}
    outputs: dict[str, object] = {}
    for name, build in plan:  # warm-up: loads the model, encodes the prompts, checks the graph runs
        t = harness.Timer(name)
        try:
            out = runner.run(build(0))["out"]["samples"]
            import torch

            outputs_finite[name] = bool(torch.isfinite(out).all())
            outputs[name] = out.detach().float().cpu()
            log(f"{ctx.model} {name}: warm-up {t.done():.1f} s")
        except Exception as exc:  # a method that fails is reported, the others still run
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"{ctx.model} {name}: FAILED in warm-up: {errors[name][:300]}")
            traceback.print_exc()
    for r in range(1, repeats + 1):
        for name, build in plan:
            if name in errors:
                continue
            prompt = build(r)
            sample = harness.measure(lambda: runner.run(prompt), device)
            samples[name].append(sample)
            log(f"{ctx.model} {name}: repeat {r}: {sample.seconds:.2f} s, peak {sample.peak_bytes / 2**20:.0f} MiB")

    def summary(name: str) -> dict:
        s = samples[name]
        return {"seconds": [round(x.seconds, 4) for x in s],
                "seconds_median": round(harness.median([x.seconds for x in s]), 4) if s else None,
                "peak_bytes_median": int(harness.median([x.peak_bytes for x in s])) if s else None,
                "start_bytes_median": int(harness.median([x.start_bytes for x in s])) if s else None,
                "outputs_finite": outputs_finite.get(name)}

    rows = []
    for name, (steps, cfg) in baselines.items():
        row = {"case": name, "title": f"plain SamplerCustom euler, {steps} steps, cfg {cfg:g}", "kind": "baseline",
               "steps": steps, "cfg": cfg, **summary(name)}
        if name in errors:
            row["error"] = errors[name]
        if row["seconds_median"]:
            row["ms_per_step"] = round(1000 * row["seconds_median"] / steps, 2)
        rows.append(row)
    for case in cases:
        steps = case.steps(ctx)
        base = case_mod.plain_name(*case.baseline(ctx)) if case.baseline is not None else None
        row = {"case": case.name, "title": case.title, "kind": "method" if base or case.versus else "baseline",
               "steps": steps, **summary(case.name)}
        if base:
            row["baseline"] = base
        if case.notes:
            row["notes"] = case.notes
        if case.name in errors:
            row["error"] = errors[case.name]
        if row["seconds_median"]:
            row["ms_per_step"] = round(1000 * row["seconds_median"] / steps, 2)
        if case.versus:
            versus_ratios(row, case.versus, samples, outputs)
            row["baseline"] = case.versus
            for key in ("time_ratio", "memory_ratio"):
                if f"versus_{key}" in row:
                    row[key] = row[f"versus_{key}"]
        b = next((x for x in rows if x["case"] == base), {})
        if row["seconds_median"] and b.get("seconds_median"):
            row["ms_per_step"] = round(1000 * row["seconds_median"] / steps, 2)
            row["time_ratio"] = round(row["seconds_median"] / b["seconds_median"], 3)
            if case.floor is not None:
                row["floor_ratio"], row["floor_counted"] = case.floor(ctx)
                row["time_over_floor"] = round(row["time_ratio"] / row["floor_ratio"], 3)
            if b["peak_bytes_median"]:
                row["memory_ratio"] = round(row["peak_bytes_median"] / b["peak_bytes_median"], 3)
            if device == "cuda" and b["peak_bytes_median"] - b["start_bytes_median"] > 0:
                row["working_memory_ratio"] = round(
                    (row["peak_bytes_median"] - row["start_bytes_median"])
                    / (b["peak_bytes_median"] - b["start_bytes_median"]), 3)
        rows.append(row)
    for case in compared:  # measured in their own processes; free this one's models first
        import comfy.model_management

        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        try:
            rows.extend(case.compare(ctx, folder, device, log))
        except Exception as exc:
            log(f"{ctx.model} {case.name}: FAILED: {exc}")
            rows.append({"case": case.name, "title": case.title, "kind": "method", "steps": case.steps(ctx),
                         "error": f"{type(exc).__name__}: {exc}"[:2000]})
    return rows


def versus_ratios(row: dict, other: str, samples: dict, outputs: dict) -> None:
    """``row``'s case against ``other`` of the same run: median time and peak memory as ratios, the
    medians of the per-repeat ratios (the two runs of a repeat are back to back), and the relative
    difference of their warm-up outputs."""
    mine, theirs = samples.get(row["case"], []), samples.get(other, [])
    row["versus"] = other
    if outputs.get(row["case"]) is not None and outputs.get(other) is not None:
        a, b = outputs[row["case"]], outputs[other]
        row["versus_output_relative_difference"] = float((a - b).norm() / b.norm().clamp_min(1e-12))
    if not mine or not theirs:
        return
    row["versus_time_ratio"] = round(harness.median([x.seconds for x in mine])
                                     / harness.median([x.seconds for x in theirs]), 3)
    row["versus_memory_ratio"] = round(harness.median([x.peak_bytes for x in mine])
                                       / max(harness.median([x.peak_bytes for x in theirs]), 1), 3)
    pairs = list(zip(mine, theirs))
    row["versus_time_ratio_per_repeat"] = [round(m.seconds / t.seconds, 3) for m, t in pairs]
    row["versus_memory_ratio_per_repeat"] = [round(m.peak_bytes / max(t.peak_bytes, 1), 3) for m, t in pairs]


def append_result(record: dict, slug: str) -> Path:
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"{record['date']}-{slug}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs.append(record)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def print_rows(model: str, ctx, rows: list[dict], device: str) -> None:
    mem = "peak MiB" if device == "cuda" else "RSS growth MiB"
    print(f"\n{model} ({ctx.ckpt}, {ctx.size} px)")
    print(f"  {'case':34} {'steps':>5} {'s/image':>9} {'ms/step':>9} {mem:>15} {'time x':>7} {'mem x':>7}")
    for r in rows:
        if r.get("error"):
            print(f"  {r['case']:34} FAILED: {r['error'][:120]}")
            continue
        if r.get("steps_per_second"):
            print(f"  {r['case']:34} {r['steps']:>5} {'training:':>9} {r['ms_per_step']:>9.1f} "
                  f"{r['peak_bytes_median'] / 2**20:>15.0f} {r.get('time_ratio', ''):>7} {r.get('memory_ratio', ''):>7}"
                  f"  ({r['steps_per_second']} steps/s)")
            continue
        print(f"  {r['case']:34} {r['steps']:>5} {r['seconds_median']:>9.3f} {r.get('ms_per_step', 0):>9.1f} "
              f"{r['peak_bytes_median'] / 2**20:>15.0f} {r.get('time_ratio', ''):>7} {r.get('memory_ratio', ''):>7}")
        if r.get("versus"):
            print(f"  {'':34} × {r['versus']}: time {r.get('versus_time_ratio')}, peak memory "
                  f"{r.get('versus_memory_ratio')} (per repeat {r.get('versus_time_ratio_per_repeat')}, "
                  f"{r.get('versus_memory_ratio_per_repeat')}); outputs differ by "
                  f"{r.get('versus_output_relative_difference')}")


def main(argv=None) -> int:
    args = parse_args(argv)
    t_all = harness.Timer("all")
    import torch

    device = harness.pick_device(args.device)
    harness.import_host(device)
    import cases as case_mod
    import models

    full = (device == "cuda" and not args.small) or args.full
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    profile = case_mod.CUDA_PROFILE if device == "cuda" and full else (
        case_mod.CPU_FULL_PROFILE if full else case_mod.CPU_PROFILE)
    if args.repeats:
        profile.repeats = args.repeats
    if args.training_steps:
        if args.training_steps <= profile.training_short_steps:
            print(f"error: --training-steps must exceed the short run's {profile.training_short_steps}",
                  file=sys.stderr)
            return 2
        profile.training_steps = args.training_steps
    runner = harness.make_runner()

    wanted_cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = wanted_cases - {c.name for c in case_mod.CASES}
    if unknown:
        print(f"error: unknown case(s) {sorted(unknown)}; known: {[c.name for c in case_mod.CASES]}", file=sys.stderr)
        return 2
    selected, skipped = [], {}
    for case in case_mod.CASES:
        if wanted_cases and case.name not in wanted_cases:
            continue
        if not wanted_cases and full and device == "cpu" and case.compare is None:
            skipped[case.name] = "real-size models on a CPU: only the training comparison is practical"
            continue
        if not wanted_cases and not full and not case.small_default:
            skipped[case.name] = "not in the default small profile (" + case.notes + ")"
            log(f"case {case.name} skipped: {skipped[case.name]}")
            continue
        ok, why = case_mod.available(case)
        if ok:
            selected.append(case)
        else:
            skipped[case.name] = why
            log(f"case {case.name} skipped: {why}")

    def model_cases(model: str) -> list:
        family = case_mod.Context.family_of(model)
        return [c for c in selected if family in c.families and (wanted_cases or full or model in c.small_models)]

    # only the models some selected case runs on are built or checked (FLUX.1 at full size is 24 GB)
    wanted_models = [m.strip() for m in args.models.split(",") if m.strip() and model_cases(m.strip())]
    ckpts = models.checkpoints(device, wanted_models, full, log)
    harness.add_model_folders(sorted({c["folder"] for c in ckpts.values()}))

    info = harness.machine(device)
    record = {"date": harness.today(), "time": harness.now(), "machine": info,
              "profile": {"full_size": full, "steps": profile.steps, "appearance_steps": profile.appearance_steps,
                          "appearance_skip": profile.appearance_skip, "repeats": profile.repeats,
                          "training_steps": profile.training_steps,
                          "training_short_steps": profile.training_short_steps,
                          "training_repeats": profile.training_repeats},
              "memory_method": ("torch.cuda.max_memory_allocated (weights included)" if device == "cuda"
                                else harness.cpu_memory_method()),
              "skipped_cases": skipped, "models": {}}
    log(f"device {device} ({info.get('gpu') or info['cpu']}), torch {info['torch']}, ComfyUI {info['comfyui']}, "
        f"{'full-size' if full else 'small test'} models, {profile.repeats} repeats")
    failed = False
    for model, ck in ckpts.items():
        ctx = case_mod.Context(model=model, ckpt=ck["ckpt"], size=ck["size"], profile=profile, threads=args.threads,
                               text_encoder=ck["text_encoder"], vae=ck["vae"])
        t = harness.Timer(model)
        rows = run_model(runner, ctx, model_cases(model), profile.repeats, device, ck["folder"])
        failed |= any(r.get("error") for r in rows)
        record["models"][model] = {"checkpoint": ck["ckpt"], "family": ck["family"], "size": ck["size"],
                                   "seconds_total": round(t.done(), 1), "rows": rows}
        if ck["text_encoder"]:
            record["models"][model]["text_encoder"] = ck["text_encoder"]
        print_rows(model, ctx, rows, device)
        if device == "cuda":
            torch.cuda.empty_cache()
    record["seconds_total"] = round(t_all.done(), 1)
    try:
        record["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if not args.no_save:
        path = append_result(record, harness.device_slug(info))
        log(f"results appended to {path.relative_to(harness.REPO)}")
        import report

        report.main([])
    log(f"done in {t_all.done():.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
