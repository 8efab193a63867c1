#!/usr/bin/env python3
"""Appearance transfer (SemanticFeatureRearrange) on the toy world, against two baselines.

    COMFYUI_PATH=.host/comfyui-0.33.0/ComfyUI .host/comfyui-0.33.0/venv/bin/python \
        tools/toy_world/measure_appearance.py [--pairs 16] [--layers dit_all_blocks,dit_double_blocks]
        [--matching key,query] [--masks truth|auto|none] [--json out.json] [--grid docs/x.png]

Each pair is a target scene and a reference scene that differs in colour and pattern (and, drawn at
random, possibly in shape, position and background). The wanted result keeps the target's shape,
position and background and takes the reference's colour and pattern: the detector (:mod:`detect`)
reads the five attributes of every result. Everything runs through the shipped workflow's nodes:
both images edit-friendly-inverted with the target's caption (DDIMInvert), the target's inversion
replayed (InversionReplaySampler) under the patched model, VAEDecode.

Rows:

* ``reconstruction``: the target's inversion replayed with its own caption, no patch (what the
  workflow gives without SemanticFeatureRearrange);
* ``reference caption``: the target's inversion replayed with the reference's caption (a text edit
  naming the reference's colour and pattern, the obvious alternative);
* ``<layers>/<matching>``: SemanticFeatureRearrange with those layers and ``dit_matching``.

Masks: ``truth`` gives the drawn object masks (what a user's masks would be), ``auto`` the node's
self-segmentation, ``none`` no masks. The schedule is the official 68-step one scaled to the
20 - 6 edited steps (``schedule``), as the shipped FLUX workflow sets it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from toy_world import detect, harness, scenes  # noqa: E402

STEPS, SKIP, CFG = 20, 6, 3.0
ATTRIBUTES = ("shape", "position", "background", "colour", "pattern")


def schedule(edited_steps: int = STEPS - SKIP) -> dict:
    """The official schedule (68 edited steps of 100: injection from step 10, structure until 40 every
    2nd step, AdaIN from 49) scaled to ``edited_steps``."""
    f = edited_steps / 68
    return dict(injection_start_step=max(0, round(10 * f)), injection_end_step=edited_steps + 2,
                structure_interval=2, structure_end_step=round(40 * f), adain_start_step=round(49 * f),
                adain_end_step=edited_steps + 2)


def pairs(count: int, seed: int = 5) -> list[tuple[scenes.Scene, scenes.Scene, int, int]]:
    """``count`` (target, reference, target seed, reference seed): the reference has another colour and
    pattern; its shape, position and background are drawn at random."""
    rng = np.random.default_rng(seed)
    every = scenes.all_scenes()
    out = []
    while len(out) < count:
        target = every[rng.integers(len(every))]
        colours = [c for c in scenes.COLOURS if c != target.colour]
        patterns = [p for p in scenes.PATTERNS if p != target.pattern]
        reference = target.replace(
            colour=colours[rng.integers(len(colours))], pattern=patterns[rng.integers(len(patterns))],
            shape=scenes.SHAPES[rng.integers(len(scenes.SHAPES))],
            position=scenes.POSITIONS[rng.integers(len(scenes.POSITIONS))],
            background=list(scenes.BACKGROUNDS)[rng.integers(len(scenes.BACKGROUNDS))])
        out.append((target, reference, int(rng.integers(1000)), int(rng.integers(1000))))
    return out


def prompt(target: scenes.Scene, reference: scenes.Scene, target_seed: int, reference_seed: int,
           layers: str | None = None, matching: str | None = None, masks: str = "truth",
           reference_caption: bool = False, extra: dict | None = None) -> dict:
    """The API graph of one result (``layers`` None: a baseline), captured as ``image``."""
    p = harness.loaders()
    p.update({
        "ti": {"class_type": "ToyScene", "inputs": {"caption": target.caption, "seed": target_seed}},
        "ri": {"class_type": "ToyScene", "inputs": {"caption": reference.caption, "seed": reference_seed}},
        "tv": {"class_type": "VAEEncode", "inputs": {"pixels": ["ti", 0], "vae": ["l3", 0]}},
        "rv": {"class_type": "VAEEncode", "inputs": {"pixels": ["ri", 0], "vae": ["l3", 0]}},
        "tp": {"class_type": "CLIPTextEncode", "inputs": {"text": target.caption, "clip": ["l2", 1]}},
        "rp": {"class_type": "CLIPTextEncode", "inputs": {"text": reference.caption, "clip": ["l2", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["l2", 1]}},
    })
    invert = {"model": ["l1", 0], "negative": ["n", 0], "positive": ["tp", 0], "mode": "edit_friendly_ddpm",
              "steps": STEPS, "cfg": CFG, "scheduler": "simple", "skip_steps": SKIP, "noise_regularization": False,
              "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5}
    p["tinv"] = {"class_type": "DDIMInvert", "inputs": {**invert, "latent": ["tv", 0], "seed": 0}}
    p["rinv"] = {"class_type": "DDIMInvert", "inputs": {**invert, "latent": ["rv", 0], "seed": 1}}
    model = ["l1", 0]
    if layers is not None:
        inputs = {"model": ["l1", 0], "reference": ["rinv", 1], "target": ["tinv", 1], "layers": layers,
                  "strength": 1.0, "restrict_to_reference_mask": False, "feature_source": "replayed_each_step",
                  "structure_rows": "official", **schedule(), **(extra or {})}
        if matching:
            inputs["dit_matching"] = matching
        if masks == "truth":
            p["tm"] = {"class_type": "ToyMask", "inputs": {"caption": target.caption, "seed": target_seed}}
            p["rm"] = {"class_type": "ToyMask", "inputs": {"caption": reference.caption, "seed": reference_seed}}
            inputs.update(target_mask=["tm", 0], reference_mask=["rm", 0])
        elif masks == "auto":
            inputs.update(auto_mask="self_segmentation", object_word=target.shape, prompt=target.caption,
                          positive=["tp", 0], clip=["l2", 1])
        p["sfr"] = {"class_type": "SemanticFeatureRearrange", "inputs": inputs}
        model = ["sfr", 0]
    p["rs"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["tinv", 1], "exact_final_step": False}}
    p["sc"] = {"class_type": "SamplerCustom", "inputs": {
        "model": model, "add_noise": False, "noise_seed": 0, "cfg": CFG,
        "positive": ["rp" if reference_caption else "tp", 0], "negative": ["n", 0], "sampler": ["rs", 0],
        "sigmas": ["tinv", 2], "latent_image": ["tinv", 0]}}
    p["d"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sc", 0], "vae": ["l3", 0]}}
    p["c"] = {"class_type": "Capture", "inputs": {"key": "image", "value": ["d", 0]}}
    return p


def score(image: np.ndarray, target: scenes.Scene, reference: scenes.Scene) -> dict[str, bool]:
    """Which of the five wanted attributes the detector reads in ``image`` ([H, W, 3] in 0..1)."""
    read = detect.detect(image)
    return {"shape": read.shape == target.shape, "position": read.position == target.position,
            "background": read.background == target.background, "colour": read.colour == reference.colour,
            "pattern": read.pattern == reference.pattern}


def summary(rows: list[dict[str, bool]]) -> dict[str, float]:
    """Per attribute: the share of results that read the wanted value; ``all5``: results right in all
    five; ``mean``: the mean over the five."""
    table = {a: round(float(np.mean([r[a] for r in rows])), 3) for a in ATTRIBUTES}
    table["all5"] = round(float(np.mean([all(r.values()) for r in rows])), 3)
    table["mean"] = round(float(np.mean([np.mean(list(r.values())) for r in rows])), 3)
    return table


def configurations(layer_list, matching_list, masks: str, baselines: bool = True) -> list[tuple[str, dict]]:
    configs = [("reconstruction", {}), ("reference caption", {"reference_caption": True})] if baselines else []
    for layers, matching in itertools.product(layer_list, matching_list):
        configs.append((f"{layers}/{matching}", {"layers": layers, "matching": matching, "masks": masks}))
    return configs


def measure(graph, configs, pair_list) -> tuple[dict[str, dict], dict[str, list[np.ndarray]]]:
    """Runs every configuration on every pair; the summary table and the images by configuration."""
    scores = {name: [] for name, _ in configs}
    images = {name: [] for name, _ in configs}
    for target, reference, target_seed, reference_seed in pair_list:
        for name, settings in configs:
            image = graph.run(prompt(target, reference, target_seed, reference_seed, **settings))["image"][0]
            image = image.float().cpu().numpy()
            scores[name].append(score(image, target, reference))
            images[name].append(image)
    return {name: summary(rows) for name, rows in scores.items()}, images


def draw_grid(path: Path, pair_list, configs, images) -> None:
    """Rows: pairs; columns: target, reference, then each configuration's result."""
    rows = []
    for index, (target, reference, target_seed, reference_seed) in enumerate(pair_list):
        cells = [scenes.draw(target, target_seed), scenes.draw(reference, reference_seed)]
        cells += [(images[name][index] * 255).clip(0, 255).astype(np.uint8) for name, _ in configs]
        rows.append(np.concatenate(cells, axis=1))
    harness.write_image(path, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--layers", default="dit_all_blocks")
    parser.add_argument("--matching", default="query,key")
    parser.add_argument("--masks", choices=("truth", "auto", "none"), default="truth")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    parser.add_argument("--json", type=Path, help="write the table here (merged into an existing file)")
    parser.add_argument("--grid", type=Path, help="draw the grid of the first 4 pairs here")
    args = parser.parse_args()

    import pack_testing
    import torch

    torch.set_num_threads(args.threads)
    graph = pack_testing.make_graph_runner()
    import nodes

    harness.register(nodes)
    configs = configurations(args.layers.split(","), args.matching.split(","), args.masks, not args.no_baselines)
    pair_list = pairs(args.pairs)
    start = time.time()
    table, images = measure(graph, configs, pair_list)
    seconds = time.time() - start
    print(f"{len(pair_list)} pairs, {STEPS} steps, skip {SKIP}, cfg {CFG}, masks {args.masks}, {seconds:.0f} s")
    for name, row in table.items():
        print(f"{name:34s} " + " ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if args.json:
        if not (args.json.is_file() and "settings" in json.loads(args.json.read_text())):
            harness.merge_json(args.json, "", {"settings": {
                "steps": STEPS, "skip_steps": SKIP, "cfg": CFG, "pairs": len(pair_list),
                "inversion": "edit_friendly_ddpm", "schedule": schedule()}})
        harness.merge_json(args.json, f"masks {args.masks}", table)
    if args.grid:
        count = min(4, len(pair_list))
        draw_grid(args.grid, pair_list[:count], configs, {k: v[:count] for k, v in images.items()})


if __name__ == "__main__":
    main()
