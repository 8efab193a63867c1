#!/usr/bin/env python3
"""Where a guided translation step's time goes: one run of the bench case ``translation_xa``
(CutLossGuidance, ``lambda_cut`` 0) and one of its comparator ``translation_official`` (the official
pix2pix-zero loop, bench/translation.py) under ``torch.profiler``, after a warm-up run of each.

    .venv/bin/python bench/profile_translation.py [--steps 6] [--threads 1] [--top 15]

Prints, per side: the wall time, the peak RSS growth of the profiled run's twin (measured unprofiled,
as the bench does), operator time grouped (UNet arithmetic, attention, copies, the rest) and the top
operators by self CPU time, with call counts (so a copy per weight per forward shows as a count).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

GROUPS = [  # (label, operator names): self CPU time summed over operators of the group
    ("convolutions and linear layers (forward and backward)",
     ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm", "aten::mm", "aten::linear",
      "aten::_convolution", "aten::thnn_conv2d", "aten::slow_conv2d_forward", "aten::slow_conv2d_backward",
      "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::matmul")),
    ("attention (bmm, baddbmm, softmax, sdpa)",
     ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data", "aten::softmax",
      "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
      "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
    ("copies (copy_, clone, to, contiguous, cat)",
     ("aten::copy_", "aten::clone", "aten::_to_copy", "aten::contiguous", "aten::cat", "aten::empty_like")),
]


def profile_case(runner, build, label: str, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    runner.run(build(0))  # warm-up: loads, encodes, inverts (cached afterwards)
    sample = harness.measure(lambda: runner.run(build(1)), "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        runner.run(build(2))
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in averages) / 1e6
    grouped = {}
    for name, ops in GROUPS:
        grouped[name] = (sum(e.self_cpu_time_total for e in averages if e.key in ops) / 1e6,
                         sum(e.count for e in averages if e.key in ops))
    print(f"\n== {label}: {sample.seconds:.2f} s unprofiled, peak RSS growth {sample.peak_bytes / 2**20:.0f} MiB; "
          f"profiled run {wall:.2f} s wall, {total_self:.2f} s operator self time")
    accounted = 0.0
    for name, (seconds, count) in grouped.items():
        accounted += seconds
        print(f"  {name:58} {seconds:8.3f} s {100 * seconds / total_self:5.1f} %  {count:7d} calls")
    print(f"  {'other operators':58} {total_self - accounted:8.3f} s {100 * (total_self - accounted) / total_self:5.1f} %")
    print(f"  {'outside operators (Python, executor, sampler)':58} {wall - total_self:8.3f} s")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))
    del torch
    return {"seconds": sample.seconds, "peak_bytes": sample.peak_bytes, "wall_profiled": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--only", choices=("pack", "official"), help="profile one side only")
    args = p.parse_args(argv)
    import torch

    harness.import_host("cpu")
    torch.set_num_threads(args.threads)
    import cases
    import models

    ck = models.checkpoints("cpu", ["sd15"], False, print)["sd15"]
    runner = harness.make_runner([ck["folder"]])
    profile = cases.Profile(steps=args.steps, appearance_steps=8, appearance_skip=3, repeats=1,
                            training_steps=1, training_short_steps=1, training_repeats=1)
    ctx = cases.Context("sd15", ck["ckpt"], ck["size"], profile)
    print(f"sd15 {ck['size']} px, {args.steps} steps, {args.threads} thread(s), ComfyUI {harness.comfyui_version()}, "
          f"pack {harness.git_commit()}")
    results = {}
    if args.only != "pack":
        results["official"] = profile_case(runner, lambda run: cases.build_translation(ctx, run, official=True),
                                           "official pix2pix-zero loop", args.top)
    if args.only != "official":
        results["pack"] = profile_case(runner, lambda run: cases.build_translation(ctx, run, lambda_cut=0.0),
                                       "CutLossGuidance (lambda_cut 0)", args.top)
    if len(results) == 2:
        print(f"\npack / official: time {results['pack']['seconds'] / results['official']['seconds']:.2f}, "
              f"peak RSS growth {results['pack']['peak_bytes'] / max(results['official']['peak_bytes'], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
