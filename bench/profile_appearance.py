#!/usr/bin/env python3
"""Where the appearance transfer's time goes: one end-to-end run (bench case ``appearance_transfer``)
under cProfile, summarised by component.

    .venv/bin/python bench/profile_appearance.py [--model sd15] [--device cpu] [--steps 8 --skip 3] [--top 25]

Components (inclusive cProfile times; a row is counted once even if it calls another):
UNet forward (the host's UNetModel.forward, branches and CFG batch included), semantic matching
(core.correspondence.semantic_nearest_neighbours*), rearrangement, AdaIN (core adain/masked_adain,
channel statistics), the inversion loops (DDIMInvert outside the UNet) and the rest (executor,
samplers, patches, Python). Prints a table and the top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

COMPONENTS = [  # (label, (file suffix, function name) patterns)
    ("UNet forward (all branches)", [("openaimodel.py", "UNetModel._forward")]),
    ("semantic nearest-neighbour matching", [("correspondence.py", "semantic_nearest_neighbours"),
                                             ("correspondence.py", "semantic_nearest_neighbours_pairs")]),
    ("feature rearrangement", [("correspondence.py", "rearrange_features")]),
    ("AdaIN / masked AdaIN", [("correspondence.py", "masked_adain"), ("correspondence.py", "adain")]),
    ("text/VAE (cached; should be ~0)", [("sd.py", "encode_from_tokens"), ("sd.py", "decode")]),
]


def _unet_forward_line() -> int:
    """Line of ``UNetModel._forward`` in the host's openaimodel.py."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as om

    return om.UNetModel._forward.__code__.co_firstlineno


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd15", choices=("sd15", "sdxl"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    import torch

    harness.import_host(args.device)
    torch.set_num_threads(args.threads)
    import cases
    import models

    full = args.device == "cuda"
    ck = models.checkpoints(args.device, [args.model], full, print)[args.model]
    runner = harness.make_runner([ck["folder"]])
    profile = cases.Profile(steps=args.steps, appearance_steps=args.steps, appearance_skip=args.skip, repeats=1)
    ctx = cases.Context(args.model, ck["ckpt"], ck["size"], profile)
    runner.run(cases.build_appearance_transfer(ctx, 0))   # warm-up: load, encode prompts
    prompt = cases.build_appearance_transfer(ctx, 1)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    runner.run(prompt)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    total = wall

    unet_line = _unet_forward_line()

    def matches(file, line, func, f, name) -> bool:
        if name == "UNetModel._forward":  # cProfile keys by (file, line, name): pick UNetModel's by line
            return file.endswith(f) and func == "_forward" and line == unet_line
        return file.endswith(f) and func == name

    def inclusive(patterns) -> tuple[float, int]:
        t, n = 0.0, 0
        for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
            if any(matches(file, line, func, f, name) for f, name in patterns):
                # count only outermost calls: drop time reached from another matching function
                outer = {c: v for c, v in callers.items()
                         if not any(matches(c[0], c[1], c[2], f, name) for f, name in patterns)}
                t += sum(v[3] for v in outer.values()) if outer else 0.0
                n += sum(v[0] for v in outer.values()) if outer else 0
        return t, n

    print(f"\nappearance transfer, {args.model} {ck['size']} px, {args.steps} steps skip {args.skip}, "
          f"{args.threads} thread(s): {wall:.2f} s wall (under cProfile)\n")
    print(f"{'component':42} {'seconds':>8} {'share':>7} {'calls':>7}")
    accounted = 0.0
    for label, patterns in COMPONENTS:
        t, n = inclusive(patterns)
        accounted += t
        print(f"{label:42} {t:>8.3f} {100 * t / total:>6.1f}% {n:>7}")
    print(f"{'everything else (executor, samplers, patches, Python)':42} {total - accounted:>8.3f} "
          f"{100 * (total - accounted) / total:>6.1f}%")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print("\ntop functions by own time:\n" + "\n".join(out.getvalue().splitlines()[6:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
