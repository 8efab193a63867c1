#!/usr/bin/env python3
"""Image analogy (Difference Inversion: DeltaInterpolationTrainer + TokenInjector) on the toy world,
against baselines.

    COMFYUI_PATH=.host/comfyui-0.33.0/ComfyUI .host/comfyui-0.33.0/venv/bin/python \
        tools/toy_world/measure_analogy.py [--analogies 8] [--attribute colour,pattern] [--steps 200]
        [--json out.json] [--grid docs/x.png]

Each analogy A : A' :: B : B' changes one attribute from A to A' ("a red plain circle ..." ->
"a blue plain circle ..."); B is another scene with A's value of that attribute, so the wanted B' is
B with A''s value and B's other four attributes. As the shipped ``image_analogy_flux`` workflow:
the difference is trained on A, A' (conditioning space, captions and prompts of A and A'), B is
inverted with edit-friendly inversion under B's caption and replayed with B's caption + the
difference. Rows:

* ``B reconstructed``: B's inversion replayed with B's caption (a zero difference);
* ``A' caption``: B's inversion replayed with A''s caption (the edited exemplar's words);
* ``analogy``: B's caption + the trained difference (Token Injector).

The detector reads B': ``changed`` is the share with the edited attribute at A''s value, ``kept`` the
share of B's other four attributes kept, ``both`` the share with both. The toy's text encoder and the
CLIP vision model are random (the test CLIP-L and a tiny random vision tower), so the CLIP loss means
nothing here and ``lambda_clip`` is 0: the difference learns through the token-consistency loss alone.
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from toy_world import detect, harness, scenes  # noqa: E402

STEPS, CFG = 20, 3.0
ATTRIBUTES, VALUES = scenes.ATTRIBUTES, scenes.VALUES
METHODS = ("B reconstructed", "A' caption", "analogy")
SCORES = ("changed", "kept", "both", "changed, shape kept", "object error", "background error")
ALIGNMENT = "toy_alignment_clip_l.safetensors"
TRAINER = {"token_space": "conditioning", "num_tokens": 4, "alpha": 0.8, "learning_rate": 0.1,
           "lambda_mse": 4.0, "lambda_clip": 0.0, "keep": "best_on_validation", "validation_every": 50,
           "validation_timesteps": 8, "if_exists": "overwrite"}


def analogies(count: int, attribute: str, seed: int = 17, b_differs: str | None = None):
    """``count`` (A, A', B, seeds): A' changes ``attribute``; B shares A's value of it and differs
    from A in at least one other attribute (with ``b_differs``, in that one: the issue's red circle :
    blue circle :: red square, ``b_differs="shape"``)."""
    rng = np.random.default_rng(seed)
    every = scenes.all_scenes()
    out = []
    while len(out) < count:
        a = every[rng.integers(len(every))]
        others = [v for v in VALUES[attribute] if v != getattr(a, attribute)]
        a_after = a.replace(**{attribute: others[rng.integers(len(others))]})
        b = every[rng.integers(len(every))].replace(**{attribute: getattr(a, attribute)})
        if b == a or (b_differs is not None and getattr(b, b_differs) == getattr(a, b_differs)):
            continue
        out.append((a, a_after, b, [int(s) for s in rng.integers(1000, size=3)]))
    return out


def prompt(a, a_after, b, seeds, method: str, name: str, training_steps: int) -> dict:
    p = harness.loaders()
    p.update({
        "ia": {"class_type": "ToyScene", "inputs": {"caption": a.caption, "seed": seeds[0]}},
        "ia2": {"class_type": "ToyScene", "inputs": {"caption": a_after.caption, "seed": seeds[1]}},
        "ib": {"class_type": "ToyScene", "inputs": {"caption": b.caption, "seed": seeds[2]}},
        "vb": {"class_type": "VAEEncode", "inputs": {"pixels": ["ib", 0], "vae": ["l3", 0]}},
        "pb": {"class_type": "CLIPTextEncode", "inputs": {"text": b.caption, "clip": ["l2", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["l2", 1]}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            "model": ["l1", 0], "positive": ["pb", 0], "negative": ["n", 0], "latent": ["vb", 0],
            "mode": "edit_friendly_ddpm", "steps": STEPS, "cfg": CFG, "scheduler": "simple", "skip_steps": 0,
            "seed": 0, "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0,
            "regularization_steps": 5, "auto_correlation_rolls": 5}},
        "rs": {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["inv", 1], "exact_final_step": True}},
    })
    if method == "B reconstructed":
        positive = ["pb", 0]
    elif method == "A' caption":
        p["pa2"] = {"class_type": "CLIPTextEncode", "inputs": {"text": a_after.caption, "clip": ["l2", 1]}}
        positive = ["pa2", 0]
    else:
        p["vision"] = {"class_type": "TinyCLIPVisionLoader", "inputs": {}}
        p["train"] = {"class_type": "DeltaInterpolationTrainer", "inputs": {
            "model": ["l1", 0], "clip": ["l2", 1], "vae": ["l3", 0], "image_before": ["ia", 0],
            "image_after": ["ia2", 0], "clip_vision": ["vision", 0], "alignment_text_encoder": ALIGNMENT,
            "caption_before": a.caption, "caption_after": a_after.caption, "prompt_before": a.caption,
            "prompt_after": a_after.caption, "name": name, "steps": training_steps, "seed": 0, **TRAINER}}
        p["inject"] = {"class_type": "TokenInjector", "inputs": {
            "clip": ["l2", 1], "text": b.caption, "strength": 1.0, "difference": ["train", 0], "embedding_name": ""}}
        positive = ["inject", 0]
    p["sc"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["l1", 0], "add_noise": False, "noise_seed": 0, "cfg": CFG, "positive": positive,
        "negative": ["n", 0], "sampler": ["rs", 0], "sigmas": ["inv", 2], "latent_image": ["inv", 0]}}
    p["d"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sc", 0], "vae": ["l3", 0]}}
    p["c"] = {"class_type": "Capture", "inputs": {"key": "image", "value": ["d", 0]}}
    return p


def score(image: np.ndarray, a, a_after, b, b_seed: int) -> dict[str, float]:
    """B' scored as the edit of B to the wanted B' (B with A''s value of the changed attribute)."""
    (attribute,) = [x for x in ATTRIBUTES if getattr(a, x) != getattr(a_after, x)]
    reading = detect.detect(image)
    scores = detect.edit_scores(image, b, b.replace(**{attribute: getattr(a_after, attribute)}), b_seed, reading)
    scores["changed, shape kept"] = float(scores["changed"] and reading.shape == b.shape)
    return scores


def setup(graph) -> None:
    """Registers the toy nodes, the tiny CLIP vision loader and a scratch folder for the alignment text
    encoder (the test CLIP-L's text tower with its projection) and the trained differences."""
    import make_test_clip
    import nodes
    import pack_testing
    from safetensors.torch import save_file

    harness.register(nodes)
    scratch = Path(tempfile.mkdtemp(prefix="ee_toy_analogy_"))
    atexit.register(shutil.rmtree, scratch, True)  # ~240 MB: the alignment text encoder
    for kind in ("text_encoders", "differences", "clip_vision"):
        (scratch / kind).mkdir()
    save_file({k: v.contiguous() for k, v in make_test_clip.build_text_tower().items()},
              str(scratch / "text_encoders" / ALIGNMENT))
    import folder_paths

    folder_paths.add_model_folder_path("text_encoders", str(scratch / "text_encoders"))
    folder_paths.add_model_folder_path("differences", str(scratch / "differences"))
    pack_testing.TinyCLIPVisionLoader.folder = scratch / "clip_vision"
    nodes.NODE_CLASS_MAPPINGS["TinyCLIPVisionLoader"] = pack_testing.TinyCLIPVisionLoader


def measure(graph, analogy_list, training_steps: int, methods=METHODS):
    scores = {m: [] for m in methods}
    images = {m: [] for m in methods}
    for index, (a, a_after, b, seeds) in enumerate(analogy_list):
        for method in methods:
            run = graph.run(prompt(a, a_after, b, seeds, method, f"toy_analogy_{index}", training_steps))
            image = run["image"][0].float().cpu().numpy()
            scores[method].append(score(image, a, a_after, b, seeds[2]))
            images[method].append(image)
    return harness.mean_table(scores, SCORES), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--analogies", type=int, default=8, help="analogies per attribute")
    parser.add_argument("--attribute", default="colour,pattern")
    parser.add_argument("--steps", type=int, default=400, help="the trainer's steps")
    parser.add_argument("--b-differs", help="an attribute in which B must differ from A (e.g. shape)")
    parser.add_argument("--trainer", type=json.loads, default={}, help="trainer inputs to change (JSON)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="merge the tables and settings into this JSON file")
    parser.add_argument("--section", default="", help='where in --json, a "/"-separated key path (default: the top)')
    parser.add_argument("--grid", type=Path, help="the first 2 analogies of each attribute")
    args = parser.parse_args()

    import pack_testing
    import torch

    torch.set_num_threads(args.threads)
    graph = pack_testing.make_graph_runner()
    setup(graph)
    TRAINER.update(args.trainer)
    record = {}
    grid_rows = []
    for attribute in args.attribute.split(","):
        analogy_list = analogies(args.analogies, attribute, b_differs=args.b_differs)
        start = time.time()
        table, images = measure(graph, analogy_list, args.steps)
        print(f"{attribute}: {len(analogy_list)} analogies, trainer {args.steps} steps, {time.time() - start:.0f} s")
        for method, row in table.items():
            print(f"  {method:16s} " + " ".join(f"{k} {v:.2f}" for k, v in row.items()))
        label = f"{attribute} analogies" + (f", B's {args.b_differs} not A's" if args.b_differs else "")
        record[label] = {"analogies": len(analogy_list), **table}
        for index in range(min(2, len(analogy_list))):
            a, a_after, b, seeds = analogy_list[index]
            cells = [scenes.draw(a, seeds[0]), scenes.draw(a_after, seeds[1]), scenes.draw(b, seeds[2])]
            cells += [(images[m][index] * 255).clip(0, 255).astype(np.uint8) for m in METHODS]
            grid_rows.append(np.concatenate(cells, axis=1))
    if args.json:
        record["settings"] = {"steps": STEPS, "cfg": CFG, "trainer_steps": args.steps, **TRAINER,
                              "ran on": harness.run_facts()}
        harness.merge_json(args.json, args.section, record)
    if args.grid:
        harness.write_image(args.grid, grid_rows)


if __name__ == "__main__":
    main()
