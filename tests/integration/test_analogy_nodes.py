"""Difference Inversion (DeltaInterpolationTrainer, TokenInjector) through ComfyUI's own executor on
the test checkpoints: training, saving, ComfyUI's own ``embedding:`` loading, safety of the files,
the shared model, and B' end to end on both families."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

import pack_testing
from pack_testing import GraphError, checkpoint_path

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"
SDXL = "test_sdxl.safetensors"
ALIGNMENT = "test_clip_l_projection.safetensors"

# Folders registered before any test loads a CLIP: a CLIP captures the embeddings folders when it is
# loaded (and the session's graph runner caches loaded checkpoints), so this happens at import.
_SCRATCH = Path(tempfile.mkdtemp(prefix="ee_analogy_"))
atexit.register(shutil.rmtree, _SCRATCH, True)  # ~250 MB text encoder, embeddings
EMBEDDINGS = _SCRATCH / "embeddings"
DIFFERENCES = _SCRATCH / "differences"
TEXT_ENCODERS = _SCRATCH / "text_encoders"
EMBEDDINGS.mkdir()
DIFFERENCES.mkdir()
TEXT_ENCODERS.mkdir()
pack_testing.import_host()
from exemplar_edit.nodes import host as _host  # noqa: E402

_host.add_model_folder("embeddings", str(EMBEDDINGS))
_host.add_model_folder("differences", str(DIFFERENCES))
_host.add_model_folder("text_encoders", str(TEXT_ENCODERS))


# --- small CLIP models (random weights, deterministic) ---------------------------------------


def write_alignment_text_encoder(path: Path) -> Path:
    import make_test_clip  # tools/ is on sys.path (pack_testing): the builder of the e2e test CLIP
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in make_test_clip.build_text_tower().items()}, str(path))
    return path


# the tiny CLIP vision model is shared with the Analogy Score test (pack_testing)
from pack_testing import TINY_VISION_CONFIG, TinyCLIPVisionLoader, make_tiny_clip_vision  # noqa: E402,F401


@pytest.fixture(scope="module")
def analogy_graph(graph):
    import nodes

    if not (TEXT_ENCODERS / ALIGNMENT).exists():
        write_alignment_text_encoder(TEXT_ENCODERS / ALIGNMENT)
    TinyCLIPVisionLoader.folder = _SCRATCH / "clip_vision"
    nodes.NODE_CLASS_MAPPINGS["TinyCLIPVisionLoader"] = TinyCLIPVisionLoader
    return graph


WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "image_analogy.json"
COLOURS = {"2": 0x3060A0, "3": 0xE0C040, "4": 0x40A060}  # A, A', B


def analogy_workflow(ckpt: str, *, name: str, seed: int = 0, steps: int = 2, learning_rate: float = 0.05,
                     num_tokens: int = 2, if_exists: str = "overwrite", after_size: int = 64,
                     token_space: str = "conditioning") -> dict:
    """The shipped image_analogy workflow, retargeted like the e2e test (64 px, few steps), with the
    LoadImage nodes replaced by solid images and the CLIP vision file by the tiny test model."""
    import demo  # tools/

    wf = demo.retarget(json.loads(WORKFLOW.read_text()), ckpt, max_steps=steps)
    for node_id, colour in COLOURS.items():
        size = after_size if node_id == "3" else 64
        wf[node_id] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                               "color": colour}}
    wf["3"]["class_type"] = "EmptyImage"
    wf["8"] = {"class_type": "TinyCLIPVisionLoader", "inputs": {}}
    wf["9"]["inputs"].update({"alignment_text_encoder": ALIGNMENT, "name": name, "seed": seed, "if_exists": if_exists, "token_space": token_space,
                              "learning_rate": learning_rate, "num_tokens": num_tokens})
    del wf["18"]
    wf["30"] = {"class_type": "Capture", "inputs": {"key": "b_prime", "value": ["17", 0]}}
    wf["31"] = {"class_type": "Capture", "inputs": {"key": "difference", "value": ["9", 0]}}
    wf["32"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["1", 0]}}
    wf["33"] = {"class_type": "Capture", "inputs": {"key": "clip", "value": ["1", 1]}}
    wf["34"] = {"class_type": "Capture", "inputs": {"key": "vae", "value": ["1", 2]}}
    wf["35"] = {"class_type": "Capture", "inputs": {"key": "validation", "value": ["9", 2]}}
    wf["36"] = {"class_type": "Capture", "inputs": {"key": "validation_loss", "value": ["9", 3]}}
    return wf


def trainer_only(wf: dict) -> dict:
    """The workflow's trainer and what feeds it, capturing the DIFFERENCE (no inversion or sampling)."""
    keep = {"1", "2", "3", "5", "6", "8", "9", "35", "36"}
    out = {k: v for k, v in wf.items() if k in keep}
    out["31"] = {"class_type": "Capture", "inputs": {"key": "difference", "value": ["9", 0]}}
    return out


def plain_sampler_prompt(ckpt: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cabin", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "denoise": 1.0}},
        "5": {"class_type": "Capture", "inputs": {"key": "latent", "value": ["4", 0]}},
        "6": {"class_type": "Capture", "inputs": {"key": "cond", "value": ["2", 0]}},
    }


def injection_prompt(ckpt: str, text: str, name: str, strength: float = 1.0) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": f"{text} embedding:{name}", "clip": ["1", 1]}},
        "3": {"class_type": "TokenInjector", "inputs": {"clip": ["1", 1], "text": text, "strength": strength,
                                                        "embedding_name": name}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "5": {"class_type": "Capture", "inputs": {"key": "stock", "value": ["2", 0]}},
        "6": {"class_type": "Capture", "inputs": {"key": "injected", "value": ["3", 0]}},
        "7": {"class_type": "Capture", "inputs": {"key": "plain", "value": ["4", 0]}},
        "8": {"class_type": "Capture", "inputs": {"key": "clip", "value": ["1", 1]}},
    }


def assert_same_conditioning(a: list, b: list) -> None:
    assert len(a) == len(b) == 1
    assert torch.equal(a[0][0], b[0][0])
    assert set(a[0][1]) == set(b[0][1])
    for key, value in a[0][1].items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[0][1][key]), key


def images_of(wf: dict) -> tuple[torch.Tensor, torch.Tensor]:
    def solid(colour: int) -> torch.Tensor:
        rgb = torch.tensor([(colour >> 16) & 255, (colour >> 8) & 255, colour & 255], dtype=torch.float32) / 255
        return rgb.expand(1, 64, 64, 3).clone()
    return solid(COLOURS["2"]), solid(COLOURS["3"])


@pytest.fixture(scope="module")
def sd15_runs(analogy_graph):
    """Plain sampling, the workflow twice with one seed (two names) and once with another seed,
    plain sampling again."""
    checkpoint_path(SD15)
    runs = {"plain_before": analogy_graph.run(plain_sampler_prompt(SD15))}
    t0 = time.perf_counter()
    runs["a"] = analogy_graph.run(analogy_workflow(SD15, name="run_a", seed=3))
    runs["seconds_per_run"] = time.perf_counter() - t0
    runs["b"] = analogy_graph.run(trainer_only(analogy_workflow(SD15, name="run_b", seed=3)))
    runs["c"] = analogy_graph.run(trainer_only(analogy_workflow(SD15, name="run_c", seed=4, steps=1)))
    runs["e"] = analogy_graph.run(trainer_only(analogy_workflow(SD15, name="run_e", seed=3,
                                                                token_space="input_embedding")))
    runs["plain_after"] = analogy_graph.run(plain_sampler_prompt(SD15))
    return runs


def test_workflow_makes_b_prime_and_saves_the_difference_sd15(sd15_runs):
    from safetensors.torch import load_file

    out = sd15_runs["a"]
    image = out["b_prime"]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert out["difference"].space == "conditioning"
    assert not (EMBEDDINGS / "run_a.safetensors").exists()  # never an 'embedding:' file in the conditioning space
    saved = load_file(str(DIFFERENCES / "run_a.safetensors"))
    assert set(saved) == {"clip_l"} and saved["clip_l"].shape == (2, 768)
    assert torch.equal(saved["clip_l"], out["difference"].rows["l"])
    assert saved["clip_l"].abs().max() > 0  # trained away from the zero initialisation
    assert out["difference"].name == "run_a" and len(out["difference"].losses) == 2
    # validation_every 50 > 2 steps: the final tokens are the one candidate, judged and reported
    assert [s for s, _ in out["difference"].selection.history] == [2]
    assert out["validation_loss"] == out["difference"].selection.history[0][1] > 0
    assert "step 2: " in out["validation"] and "zero difference" in out["validation"]
    # the difference moves B': the same graph with strength 0 gives another image
    assert not list(DIFFERENCES.glob(".tmp_*"))
    print(f"SD1.5 workflow (2 training steps): {sd15_runs['seconds_per_run']:.1f} s")


def test_shipped_workflow_makes_b_prime_as_b_plus_the_difference():
    """Edit-friendly inversion of B at the sampling cfg, with the prompt the injector gets, at full
    strength by default; the trainer reuses a saved difference."""
    wf = json.loads(WORKFLOW.read_text())
    invert, sample, inject = wf["14"]["inputs"], wf["16"]["inputs"], wf["12"]["inputs"]
    assert invert["mode"] == "edit_friendly_ddpm" and invert["skip_steps"] == 0
    assert invert["cfg"] == sample["cfg"] > 1 and invert["negative"] == sample["negative"]
    assert wf["10"]["inputs"]["text"] == inject["text"] and invert["positive"] == ["10", 0]
    assert sample["sampler"] == ["15", 0] and wf["15"]["class_type"] == "InversionReplaySampler"
    assert wf["9"]["inputs"]["if_exists"] == "reuse" and wf["9"]["inputs"]["token_space"] == "conditioning"


def test_zero_difference_gives_back_b_and_a_difference_moves_it(analogy_graph, sd15_runs):
    """The shipped graph with the trainer's difference at strength 0 (the conditioning of B's prompt
    exactly, as a zero difference gives: test_conditioning_space_zero_difference_...) returns B's
    latent to float precision; at strength 1 B' moves. The trainer reuses run_a, trained by the fixture from the same inputs."""
    latents = {}
    for strength in (0.0, 1.0):
        wf = analogy_workflow(SD15, name="run_a", seed=3, if_exists="reuse")
        wf["12"]["inputs"]["strength"] = strength
        wf["37"] = {"class_type": "Capture", "inputs": {"key": "b_prime_latent", "value": ["16", 0]}}
        wf["38"] = {"class_type": "Capture", "inputs": {"key": "b_latent", "value": ["13", 0]}}
        out = analogy_graph.run(wf)
        assert out["difference"].losses == []  # reused, not trained again
        latents[strength] = out["b_prime_latent"]["samples"], out["b_latent"]["samples"]
    b_prime, b = latents[0.0]
    assert b_prime.shape == b.shape
    # float32 rounding through 2 steps at cfg 7.5 and the latent scaling; the inversion tests' bound
    assert float((b_prime - b).norm() / b.norm()) < 1e-4, float((b_prime - b).norm() / b.norm())
    moved, _ = latents[1.0]
    assert float((moved - b).norm() / b.norm()) > 1e-2, float((moved - b).norm() / b.norm())


def test_input_embedding_space_saves_a_standard_embedding(sd15_runs):
    from safetensors.torch import load_file

    out = sd15_runs["e"]["difference"]
    assert out.space == "input_embedding" and not (DIFFERENCES / "run_e.safetensors").exists()
    saved = load_file(str(EMBEDDINGS / "run_e.safetensors"))
    assert set(saved) == {"clip_l"} and torch.equal(saved["clip_l"], out.rows["l"]) and saved["clip_l"].abs().max() > 0


def test_fixed_seed_gives_identical_tokens_and_another_seed_does_not(sd15_runs):
    """Run b repeats run a's trainer inputs (another file name); run c has another seed."""
    a, b, c = (sd15_runs[k]["difference"].rows["l"] for k in "abc")
    assert torch.equal(a, b)
    assert sd15_runs["a"]["difference"].losses == sd15_runs["b"]["difference"].losses
    assert c.abs().max() > 0 and not torch.allclose(a, c)


def test_training_lowers_the_consistency_loss(sd15_runs):
    """The loss of the trained tokens on the run's own (timestep, noise) draws is below that of the
    zero initialisation."""
    from exemplar_edit.core import difference as dif
    from exemplar_edit.nodes import analogy

    out = sd15_runs["a"]
    model, clip, vae = out["model"], out["clip"], out["vae"]
    image_before, image_after = images_of(analogy_workflow(SD15, name="x"))
    wf = analogy_workflow(SD15, name="x", seed=3)["9"]["inputs"]
    with torch.inference_mode():
        z_before = _host.model_space_latent(model, _host.vae_encode(vae, image_before))
        z_after = _host.model_space_latent(model, _host.vae_encode(vae, image_after))
        sigmas = _host.training_sigmas(model)
        generator = torch.Generator().manual_seed(3)
        timesteps = dif.shuffled_timesteps(2, len(sigmas), generator)
        draws = [(sigmas[t], torch.randn(z_after.shape, generator=generator)) for t in timesteps]
        space = analogy.ConditioningSpace(clip, _host.text_encoder_slots(clip)[0], wf["prompt_before"],
                                          wf["prompt_after"], 2)
        space.prepare(torch.device("cpu"))
        trained = out["difference"].rows
        zero = {k: torch.zeros_like(v) for k, v in trained.items()}
        totals = {}

        def evaluate(run):
            for label, rows in (("zero", zero), ("trained", trained)):
                totals[label] = sum(float(sum(analogy.consistency_step(
                    run, space.prompts(rows), z_before, z_after, sigma, noise)))
                    for sigma, noise in draws)

        _host.run_with_model(model, (2,) + tuple(z_after.shape[1:]), evaluate)
    assert totals["trained"] < totals["zero"], totals


def test_keep_chooses_among_the_candidates_judged_on_the_validation_set(analogy_graph):
    """validation_every 1: every step's tokens are a candidate. best_on_validation keeps the one of
    the lowest validation loss, last the final one; the validation losses do not depend on 'keep'."""
    checkpoint_path(SD15)
    runs = {}
    for keep in ("best_on_validation", "last"):
        wf = trainer_only(analogy_workflow(SD15, name=f"keep_{keep}", seed=7, steps=3, learning_rate=0.5))
        wf["9"]["inputs"].update({"keep": keep, "validation_every": 1, "validation_timesteps": 3})
        runs[keep] = analogy_graph.run(wf)
    best, last = runs["best_on_validation"]["difference"], runs["last"]["difference"]
    assert best.selection.history == last.selection.history and len(best.selection.history) == 3
    losses = dict(best.selection.history)
    assert best.selection.kept_step == min(losses, key=losses.get)
    assert last.selection.kept_step == 3 and runs["last"]["validation_loss"] == losses[3]
    assert runs["best_on_validation"]["validation_loss"] == min(losses.values())
    if best.selection.kept_step != 3:
        assert not torch.equal(best.rows["l"], last.rows["l"])


def test_shared_model_and_clip_are_unchanged_by_training(sd15_runs):
    before, after = sd15_runs["plain_before"], sd15_runs["plain_after"]
    assert torch.equal(before["latent"]["samples"], after["latent"]["samples"])
    assert_same_conditioning(before["cond"], after["cond"])


@pytest.mark.parametrize("text", ["a photo of a cabin in the woods", " ".join(["snowy cabin"] * 40)])
def test_injector_equals_stock_embedding_prompt(analogy_graph, sd15_runs, text):
    """TokenInjector (by name, and from the trainer's DIFFERENCE) equals CLIPTextEncode with
    'text embedding:NAME', ComfyUI's own embedding loader, also across a 75-token chunk boundary."""
    from exemplar_edit.nodes import analogy

    out = analogy_graph.run(injection_prompt(SD15, text, "run_e"))
    assert_same_conditioning(out["stock"], out["injected"])
    assert not torch.equal(out["stock"][0][0][:, -77:], out["plain"][0][0][:, -77:])  # the embedding was used
    with torch.inference_mode():
        from_difference = analogy.TokenInjector.execute(out["clip"], text, 1.0, difference=sd15_runs["e"]["difference"])
    assert_same_conditioning(out["stock"], from_difference.result[0])
    reversed_ = analogy_graph.run(injection_prompt(SD15, text, "run_e", strength=-1.0))["injected"]
    assert not torch.equal(reversed_[0][0], out["injected"][0][0])


def test_name_validation_and_overwrite_protection(analogy_graph, sd15_runs):
    from exemplar_edit.nodes import analogy

    for bad in ["", "  ", "../up", "a/b", "a\\b", "..", ".hidden", "two words", "x:y", "CON", "com1", "Nul.txt",
                "x" * 244]:
        with pytest.raises(_host.InputError, match="name"):
            analogy.check_embedding_name(bad)
    assert analogy.check_embedding_name("to_winter.safetensors") == "to_winter"
    assert analogy.check_embedding_name("x" * 243) == "x" * 243  # 243 + len(".safetensors") = 255 bytes
    assert analogy.check_embedding_name("console") == "console"
    with pytest.raises(GraphError, match="path separator"):
        analogy_graph.run(analogy_workflow(SD15, name="../escape"))
    existing = DIFFERENCES / "run_a.safetensors"
    content = existing.read_bytes()
    with pytest.raises(GraphError, match="already exists"):
        analogy_graph.run(analogy_workflow(SD15, name="run_a", seed=99, if_exists="error"))
    assert existing.read_bytes() == content


def test_a_name_too_long_for_the_file_system_is_refused_at_validation(analogy_graph):
    checkpoint_path(SD15)
    ok, error, _, node_errors = analogy_graph.validate(trainer_only(analogy_workflow(SD15, name="n" * 300)))
    assert not ok or node_errors
    assert "bytes" in json.dumps([error, node_errors]) and "name" in json.dumps(node_errors)


def test_reuse_loads_the_saved_difference_after_a_restart_and_refuses_other_inputs(analogy_graph):
    """if_exists reuse: a fresh executor (a restarted server, nothing cached) loads the file
    without training when every recorded input matches, and names the inputs that differ."""
    checkpoint_path(SD15)
    wf = trainer_only(analogy_workflow(SD15, name="reused", seed=11, if_exists="reuse"))
    first = analogy_graph.run(wf)
    path = DIFFERENCES / "reused.safetensors"
    content = path.read_bytes()
    assert len(first["difference"].losses) == 2  # trained: there was no file
    restarted = pack_testing.GraphRunner()
    again = restarted.run(wf)
    assert again["difference"].losses == []  # not trained again
    assert torch.equal(again["difference"].rows["l"], first["difference"].rows["l"])
    assert again["validation"] == first["validation"] and again["validation_loss"] == first["validation_loss"]
    assert path.read_bytes() == content

    changed = json.loads(json.dumps(wf))
    changed["9"]["inputs"].update({"seed": 12, "caption_after": "a photo of a red cabin"})
    with pytest.raises(GraphError, match="caption_after.*seed"):
        restarted.run(changed)
    recoloured = json.loads(json.dumps(wf))
    recoloured["3"]["inputs"]["color"] = 0x102030
    with pytest.raises(GraphError, match="image_after"):
        restarted.run(recoloured)
    with pytest.raises(GraphError, match="already exists"):
        restarted.run(trainer_only(analogy_workflow(SD15, name="reused", seed=11, if_exists="error")))
    assert path.read_bytes() == content

    # another checkpoint: its model, CLIP and VAE are not the ones the file was trained with
    checkpoint_path(SDXL)
    with pytest.raises(GraphError, match="clip.*model"):
        restarted.run(trainer_only(analogy_workflow(SDXL, name="reused", seed=11, if_exists="reuse")))
    # a file this trainer did not write is never taken for a trained difference
    _host.save_tensors_atomically(str(DIFFERENCES / "foreign.safetensors"), {"clip_l": torch.ones(2, 768)})
    with pytest.raises(GraphError, match="records no trainer inputs"):
        restarted.run(trainer_only(analogy_workflow(SD15, name="foreign", seed=11, if_exists="reuse")))


def test_mismatched_pair_sizes_are_refused(analogy_graph):
    checkpoint_path(SD15)
    wf = analogy_workflow(SD15, name="sizes", after_size=128)
    wf["9"]["inputs"]["image_after"] = ["3", 0]  # unscaled
    with pytest.raises(GraphError, match="image_after"):
        analogy_graph.run(wf)
    assert not (DIFFERENCES / "sizes.safetensors").exists()


def test_interrupt_leaves_no_file(analogy_graph):
    """The interrupt button pressed after the first training step (of 3) stops the trainer."""
    import comfy.model_management
    import comfy.utils

    checkpoint_path(SD15)
    saved = comfy.utils.PROGRESS_BAR_HOOK
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append((value, total))
        if total == 3 and value >= 1:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(GraphError):
            analogy_graph.run(trainer_only(analogy_workflow(SD15, name="interrupted", seed=5, steps=3)))
        assert any(e == "execution_interrupted" for e, _ in analogy_graph.server.messages)
        assert (1, 3) in calls and (2, 3) not in calls
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
        comfy.model_management.interrupt_current_processing(False)
    assert not (DIFFERENCES / "interrupted.safetensors").exists()
    assert not list(DIFFERENCES.glob(".tmp_*"))


def test_workflow_end_to_end_sdxl_saves_both_encoders(analogy_graph):
    from safetensors.torch import load_file

    checkpoint_path(SDXL)
    out = analogy_graph.run(analogy_workflow(SDXL, name="run_xl", seed=1, steps=1))
    assert out["b_prime"].shape == (1, 64, 64, 3) and torch.isfinite(out["b_prime"]).all()
    saved = load_file(str(DIFFERENCES / "run_xl.safetensors"))
    assert set(saved) == {"clip_l", "clip_g"}
    assert saved["clip_l"].shape == (2, 768) and saved["clip_g"].shape == (2, 1280)
    assert saved["clip_l"].abs().max() > 0 and saved["clip_g"].abs().max() > 0
    injected = analogy_graph.run(conditioning_injection_prompt(SDXL, "a photo of a cabin", "run_xl", 1.0))
    changed = injected["injected"][0][0] - injected["plain"][0][0]
    assert changed.shape == (1, 77, 2048) and changed[:, :-2].abs().max() == 0 and changed[:, -2:].abs().max() > 0
    assert torch.equal(injected["injected"][0][1]["pooled_output"], injected["plain"][0][1]["pooled_output"])


def conditioning_injection_prompt(ckpt: str, text: str, name: str, strength: float) -> dict:
    """``injection_prompt`` without the stock ``embedding:`` encode (a conditioning-space file is no embedding)."""
    prompt = injection_prompt(ckpt, text, name, strength)
    del prompt["2"], prompt["5"]
    return prompt


LONG_PROMPT = " ".join(["a snowy cabin"] * 28)  # 84 words: two 77-token chunks, room left in the second


@pytest.mark.parametrize("ckpt", [SD15, SDXL])
@pytest.mark.parametrize("text", ["a photo of a cabin in the woods", LONG_PROMPT])
def test_conditioning_space_zero_difference_is_the_prompt_and_minus_one_negates(analogy_graph, ckpt, text):
    """Token Injector with a conditioning-space difference: a zero difference (and strength 0) gives
    exactly CLIPTextEncode of the prompt, pooled output included; strength -1 is the exact negative
    of +1's change, which sits in the last K rows only; long (two-chunk) prompts work."""
    from exemplar_edit.nodes import analogy

    checkpoint_path(ckpt)
    graph = analogy_graph.run(conditioning_injection_prompt(ckpt, text, "unused", 0.0)
                              | {"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}}})
    clip, plain = graph["clip"], graph["plain"]
    layout = _host.conditioning_layout(clip)
    assert plain[0][0].shape[-1] == sum(s.width for s in layout)
    g = torch.Generator().manual_seed(0)
    trained = {s.key: torch.randn(3, s.width, generator=g) for s in layout}
    zero = {k: torch.zeros_like(v) for k, v in trained.items()}

    def inject(rows, strength):
        difference = analogy.DifferenceEmbedding(rows=rows, space="conditioning")
        with torch.inference_mode():
            return analogy.TokenInjector.execute(clip, text, strength, difference=difference).result[0]

    assert_same_conditioning(inject(zero, 1.0), plain)
    assert_same_conditioning(inject(trained, 0.0), plain)
    plus, minus = inject(trained, 1.0), inject(trained, -1.0)
    change_plus, change_minus = plus[0][0] - plain[0][0], minus[0][0] - plain[0][0]
    assert torch.allclose(change_minus, -change_plus, atol=1e-5)
    assert change_plus[:, :-3].abs().max() == 0 and change_plus[:, -3:].abs().min() > 0
    assert plus[0][0].shape == plain[0][0].shape and plain[0][0].shape[1] == (154 if text == LONG_PROMPT else 77)
    if "pooled_output" in plain[0][1]:
        assert torch.equal(plus[0][1]["pooled_output"], plain[0][1]["pooled_output"])
    # a prompt whose last chunk has no padding rows left for the 3 rows is refused, naming 'text'
    full = " ".join(["cabin"] * 74)
    with pytest.raises(_host.InputError, match="text: .*padding rows"):
        with torch.inference_mode():
            analogy.TokenInjector.execute(clip, full, 1.0,
                                          difference=analogy.DifferenceEmbedding(rows=trained, space="conditioning"))
    with pytest.raises(_host.InputError, match="embedding_name: no difference 'not_trained' in models/differences"):
        analogy.load_saved_difference(clip, "not_trained")


def test_saved_files_get_the_mode_a_normal_write_gives(tmp_path):
    """Not mkstemp's 0600: another service sharing the models folder can read the embeddings."""
    import os

    path = tmp_path / "mode_check.safetensors"
    _host.save_tensors_atomically(str(path), {"clip_l": torch.zeros(1, 4)})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["mode_check.safetensors"]  # no temporary file left


# --- FLUX-class models (rectified flow): the test FLUX-layout models conditioned by the test CLIP-L ---

from exemplar_edit.nodes import analogy  # noqa: E402

FLUX_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "image_analogy_flux.json"
FLUX_COLOURS = {"4": 0x3060A0, "5": 0xE0C040, "6": 0x40A060}  # A, A', B


def flux_analogy_workflow(unet: str, *, name: str, seed: int = 0, steps: int = 2, if_exists: str = "overwrite",
                          num_tokens: int = 2, validation_timesteps: int = 2, strength: float = 1.0) -> dict:
    """The shipped image_analogy_flux workflow retargeted to a FLUX test model as ``make demo`` does
    (test CLIP-L, test FLUX VAE, 64 px, few steps), solid images, the tiny CLIP vision model."""
    import demo  # tools/

    wf = demo.retarget(json.loads(FLUX_WORKFLOW.read_text()), unet, max_steps=steps)
    for node_id, colour in FLUX_COLOURS.items():
        wf[node_id] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                               "color": colour}}
    wf["10"] = {"class_type": "TinyCLIPVisionLoader", "inputs": {}}
    wf["11"]["inputs"].update({"alignment_text_encoder": ALIGNMENT, "name": name, "seed": seed, "if_exists": if_exists,
                               "learning_rate": 0.05, "num_tokens": num_tokens,
                               "validation_timesteps": validation_timesteps})
    wf["15"]["inputs"]["strength"] = strength
    del wf["23"]
    wf["30"] = {"class_type": "Capture", "inputs": {"key": "difference", "value": ["11", 0]}}
    wf["31"] = {"class_type": "Capture", "inputs": {"key": "b_prime_latent", "value": ["21", 0]}}
    wf["32"] = {"class_type": "Capture", "inputs": {"key": "b_latent", "value": ["18", 0]}}
    wf["33"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["1", 0]}}
    wf["34"] = {"class_type": "Capture", "inputs": {"key": "clip", "value": ["2", 0]}}
    wf["35"] = {"class_type": "Capture", "inputs": {"key": "validation", "value": ["11", 2]}}
    return wf


def flux_trainer_only(wf: dict) -> dict:
    keep = {"1", "2", "3", "4", "5", "7", "8", "10", "11", "30", "33", "34", "35"}
    return {k: v for k, v in wf.items() if k in keep}


@pytest.fixture(scope="module")
def flux_unet(host):
    return pack_testing.flux_model_for_host()


def flux_steps(unet: str) -> int:
    """Training (and inversion) steps on a FLUX test model: the 3072-wide one (0.3.75) takes seconds
    per forward on this CPU, so it trains 1 step, the narrow one 2."""
    return 1 if unet == pack_testing.FLUX_WIDE else 2


@pytest.fixture(scope="module")
def flux_run(analogy_graph, flux_unet):
    """The trainer on the host's FLUX test model (the 3072-wide one on 0.3.75: 1 step, 1 validation
    timestep), then the same inputs again with if_exists reuse."""
    steps = flux_steps(flux_unet)
    wf = flux_trainer_only(flux_analogy_workflow(flux_unet, name="flux_run", seed=3, steps=steps,
                                                 validation_timesteps=steps))
    t0 = time.perf_counter()
    first = analogy_graph.run(wf)
    seconds = time.perf_counter() - t0
    wf["11"]["inputs"]["if_exists"] = "reuse"
    again = analogy_graph.run(wf)
    print(f"FLUX trainer ({flux_unet}, {steps} steps): {seconds:.1f} s")
    return first, again


def test_flux_trainer_learns_rows_and_a_pooled_part_and_reuses_them(flux_unet, flux_run):
    from safetensors.torch import load_file

    first, again = flux_run
    difference = first["difference"]
    assert difference.space == "conditioning" and len(difference.losses) == flux_steps(flux_unet)
    saved = load_file(str(DIFFERENCES / "flux_run.safetensors"))
    # the test models read CLIP-L rows (77) and CLIP-L's pooled vector (vector_in)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {"clip_l": (2, 768), "pooled_output": (1, 768)}
    assert saved["clip_l"].abs().max() > 0 and saved["pooled_output"].abs().max() > 0
    assert torch.equal(saved["pooled_output"], difference.rows["pooled"])
    record = json.loads(_host.read_safetensors(str(DIFFERENCES / "flux_run.safetensors"), "name", "")[1]["exemplar_edit"])
    assert record["trained_for"] == {"model_family": "Flux", "prediction": "CONST",
                                     "parts": {"clip_l": 768, "pooled_output": 768}}
    assert "zero difference" in first["validation"]
    # reused: loaded, not trained again, the same tokens
    assert again["difference"].losses == [] and again["difference"].trained_for == record["trained_for"]
    for key in ("l", "pooled"):
        assert torch.equal(again["difference"].rows[key], difference.rows[key])


def test_flux_zero_difference_is_the_prompt_exactly_and_minus_one_negates(analogy_graph, flux_run):
    model, clip = flux_run[0]["model"], flux_run[0]["clip"]
    assert _host.is_flow_model(model) and _host.pooled_vector_width(model) == 768
    text = "a photo of a cabin in the woods"
    with torch.inference_mode():
        plain = _host.encode_tokens(clip, clip.tokenize(text))
    trained = flux_run[0]["difference"].rows
    zero = {k: torch.zeros_like(v) for k, v in trained.items()}

    def inject(rows, strength):
        difference = analogy.DifferenceEmbedding(rows=rows, space="conditioning")
        with torch.inference_mode():
            return analogy.TokenInjector.execute(clip, text, strength, difference=difference).result[0]

    assert_same_conditioning(inject(zero, 1.0), plain)
    assert_same_conditioning(inject(trained, 0.0), plain)
    plus, minus = inject(trained, 1.0), inject(trained, -1.0)
    for key in (None, "pooled_output"):
        def part(c):
            return c[0][0] if key is None else c[0][1][key]
        change = part(plus) - part(plain)
        assert change.abs().max() > 0 and torch.allclose(part(minus) - part(plain), -change, atol=1e-5)
    assert (plus[0][0] - plain[0][0])[:, :-2].abs().max() == 0  # only the last 2 (padding) rows move


def test_flux_strength_zero_gives_back_b_through_the_exact_replay(analogy_graph, flux_unet, flux_run):
    """The shipped FLUX graph at strength 0: B inverted with exact replay (edit_friendly_ddpm on the flow
    model) and replayed with Token Injector's conditioning, which is then B's prompt exactly, gives B's
    latent back; at strength 1 (a second injector and replay of the same inversion) B' moves. The
    trainer reuses flux_run."""
    steps = flux_steps(flux_unet)
    wf = flux_analogy_workflow(flux_unet, name="flux_run", seed=3, if_exists="reuse", strength=0.0, steps=steps,
                               validation_timesteps=steps)
    wf["40"] = dict(wf["15"], inputs=dict(wf["15"]["inputs"], strength=1.0))
    wf["41"] = dict(wf["16"], inputs=dict(wf["16"]["inputs"], conditioning=["40", 0]))
    wf["42"] = dict(wf["21"], inputs=dict(wf["21"]["inputs"], positive=["41", 0]))
    wf["43"] = {"class_type": "Capture", "inputs": {"key": "moved_latent", "value": ["42", 0]}}
    out = analogy_graph.run(wf)
    assert out["difference"].losses == []
    b_prime, b, moved = (out[k]["samples"] for k in ("b_prime_latent", "b_latent", "moved_latent"))
    assert b_prime.shape == b.shape and b.shape[1] == 16
    assert float((b_prime - b).norm() / b.norm()) < 1e-4, float((b_prime - b).norm() / b.norm())
    assert float((moved - b).norm() / b.norm()) > 1e-3, float((moved - b).norm() / b.norm())


class FluxLayoutClip:
    """A CLIP with FLUX.1's text layout for tests: ComfyUI's own ``FluxTokenizer`` (CLIP-L tokens and
    T5-XXL tokens, at least 256 rows padded after ``</s>``) and, in place of the 4.7B T5-XXL and CLIP-L
    (no test model of T5-XXL's fixed config exists), an encoder whose 4096-wide rows are a fixed
    function of the T5 token ids and whose 768-wide unprojected pooled vector one of the CLIP-L ids:
    what FluxClipModel.encode_token_weights returns, in shape and in what each part depends on."""

    def __init__(self):
        from types import SimpleNamespace

        import comfy.text_encoders.flux

        self.tokenizer = comfy.text_encoders.flux.FluxTokenizer()
        self.cond_stage_model = SimpleNamespace(clip_l=SimpleNamespace(return_projected_pooled=False))
        self.layer_idx = None

    def tokenize(self, text: str, **kwargs) -> dict:
        return self.tokenizer.tokenize_with_weights(text)

    @staticmethod
    def _ids(chunks) -> torch.Tensor:
        return torch.tensor([[float(t) for t, *_ in chunk] for chunk in chunks])

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        rows = self._ids(tokens["t5xxl"]).reshape(1, -1, 1)
        cond = torch.sin(rows * torch.linspace(0.001, 0.1, 4096) + torch.arange(rows.shape[1]).reshape(1, -1, 1))
        pooled = torch.cos(self._ids(tokens["l"])[:1].sum(-1, keepdim=True) * torch.linspace(0.01, 1.0, 768))
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens) -> list:
        cond, pooled = self.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]


@pytest.fixture(scope="module")
def flux1_clip(host):
    return FluxLayoutClip()


def sd15_clip(graph):
    checkpoint_path(SD15)
    return graph.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
                      "2": {"class_type": "Capture", "inputs": {"key": "clip", "value": ["1", 1]}}})["clip"]


def flux1_difference(num_tokens: int = 3, seed: int = 0) -> "analogy.DifferenceEmbedding":
    g = torch.Generator().manual_seed(seed)
    rows = {"t5xxl": torch.randn(num_tokens, 4096, generator=g), "pooled": torch.randn(1, 768, generator=g)}
    return analogy.DifferenceEmbedding(rows=rows, space="conditioning", name="flux1_change", trained_for={
        "model_family": "Flux", "prediction": "CONST", "parts": {"t5xxl": 4096, "pooled_output": 768}})


def test_flux1_layout_rows_are_the_t5_tokens_and_their_padding(flux1_clip):
    layout = _host.conditioning_layout(flux1_clip)
    assert [(s.key, s.embedding_key, s.width) for s in layout] == [("t5xxl", "t5xxl", 4096)]
    tokens = flux1_clip.tokenize("a photo of a cabin")  # 7 T5 tokens, </s> (id 1), then padding (id 0) to 256
    ids = [t for t, *_ in tokens["t5xxl"][0]]
    assert len(ids) == 256 and ids.index(1) == 7 and set(ids[8:]) == {0}
    assert _host.padding_rows(flux1_clip, tokens, ["t5xxl"]) == 256 - 8
    assert _host.padding_rows(flux1_clip, flux1_clip.tokenize(""), ["t5xxl"]) == 255
    assert _host.padding_rows(flux1_clip, flux1_clip.tokenize(" ".join(["cabin"] * 300)), ["t5xxl"]) == 0
    assert not _host.is_clip_tokenizer(flux1_clip, "t5xxl") and _host.is_clip_tokenizer(flux1_clip, "l")


def test_flux1_injection_is_exact_at_zero_and_moves_only_padding_rows_and_the_pooled_vector(flux1_clip):
    text = "a photo of a cabin in the woods"
    plain = flux1_clip.encode_from_tokens_scheduled(flux1_clip.tokenize(text))
    trained = flux1_difference()
    zero = analogy.DifferenceEmbedding(rows={k: torch.zeros_like(v) for k, v in trained.rows.items()},
                                       space="conditioning", trained_for=trained.trained_for)

    def inject(difference, strength, prompt=text):
        with torch.inference_mode():
            return analogy.TokenInjector.execute(flux1_clip, prompt, strength, difference=difference).result[0]

    assert_same_conditioning(inject(zero, 1.0), plain)
    assert_same_conditioning(inject(trained, 0.0), plain)
    plus = inject(trained, 1.0)
    change = plus[0][0] - plain[0][0]
    assert plus[0][0].shape == (1, 256, 4096) and change[:, :-3].abs().max() == 0 and change[:, -3:].abs().min() > 0
    assert torch.allclose(plus[0][1]["pooled_output"] - plain[0][1]["pooled_output"], trained.rows["pooled"])
    with pytest.raises(_host.InputError, match=r"text: its T5 tokens \(256 rows\) has 0 padding rows"):
        inject(trained, 1.0, " ".join(["cabin"] * 300))


def test_a_difference_for_another_kind_of_model_is_refused_naming_both(analogy_graph, flux1_clip):
    """A FLUX.1 difference (T5 rows + pooled CLIP-L) given to an SD1.5 CLIP, by name from its file, and an
    SD1.5 difference (CLIP-L rows) given to a FLUX.1 CLIP, and a difference of another text width."""
    _host.save_tensors_atomically(
        str(DIFFERENCES / "flux1_change.safetensors"),
        {"t5xxl": torch.ones(3, 4096), "pooled_output": torch.ones(1, 768)},
        {"exemplar_edit": json.dumps({"trained_for": flux1_difference().trained_for})})
    clip = sd15_clip(analogy_graph)
    with pytest.raises(_host.InputError, match=r"difference: 'flux1_change' was trained for the Flux model family "
                                               r"\(rectified flow\), whose conditioning has rows of t5xxl \(4096 wide\) "
                                               r"and a pooled vector \(768 wide\), but this CLIP's conditioning has "
                                               r"rows of clip_l \(768 wide\)"):
        with torch.inference_mode():
            analogy.TokenInjector.execute(clip, "a photo", 1.0, embedding_name="flux1_change")
    sd15_difference = analogy.DifferenceEmbedding(
        rows={"l": torch.ones(2, 768)}, space="conditioning", name="sd15_change",
        trained_for={"model_family": "SD15", "prediction": "EPS", "parts": {"clip_l": 768}})
    with pytest.raises(_host.InputError, match=r"difference: 'sd15_change' was trained for the SD15 model family, "
                                               r"whose conditioning has rows of clip_l \(768 wide\), but this CLIP's "
                                               r"conditioning has rows of t5xxl \(4096 wide\)"):
        with torch.inference_mode():
            analogy.TokenInjector.execute(flux1_clip, "a photo", 1.0, difference=sd15_difference)
    wider = analogy.DifferenceEmbedding(rows={"l": torch.ones(2, 1024)}, space="conditioning")
    with pytest.raises(_host.InputError, match=r"difference: it has rows of clip_l \(1024 wide\), but this CLIP's "
                                               r"conditioning has rows of clip_l \(768 wide\)"):
        with torch.inference_mode():
            analogy.TokenInjector.execute(clip, "a photo", 1.0, difference=wider)


def test_input_embedding_space_is_refused_for_a_t5_text_encoder(flux1_clip, flux_run):
    image = torch.full((1, 64, 64, 3), 0.5)
    settings = dict(caption_before="a red circle", caption_after="a blue circle", prompt_before="a red circle",
                    prompt_after="a blue circle", name="t5_space", if_exists="overwrite", token_space="input_embedding",
                    num_tokens=2, alpha=0.8, steps=1, learning_rate=0.01, lambda_mse=4.0, lambda_clip=0.1, seed=0)
    with pytest.raises(_host.InputError, match=r"token_space: input_embedding .*\['t5xxl'\] \(T5-XXL on FLUX.1"):
        with torch.inference_mode():
            analogy.DeltaInterpolationTrainer.execute(flux_run[0]["model"], flux1_clip, None, image, image, None,
                                                      ALIGNMENT, **settings)
    assert not (EMBEDDINGS / "t5_space.safetensors").exists()
