"""Analogy Score (CLIP) through ComfyUI's own validator and executor, on the tiny random CLIP vision
model: the directional similarity and the similarity of B' to B in the cases where their value is
known, pair-by-pair batches, refusals that name the input, and its place in the shipped workflow."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pack_testing
from pack_testing import GraphError

pytestmark = pytest.mark.integration

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "image_analogy.json"
IMAGES: dict[str, torch.Tensor] = {}
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)


class TestImage:
    """Test-only node: the IMAGE stored in IMAGES[key]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": "a"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # the tensor behind a key changes between tests

    def load(self, key):
        return (IMAGES[key],)


@pytest.fixture(scope="module")
def score_graph(graph):
    import nodes

    nodes.NODE_CLASS_MAPPINGS["TinyCLIPVisionLoader"] = pack_testing.TinyCLIPVisionLoader
    nodes.NODE_CLASS_MAPPINGS["TestImage"] = TestImage
    return graph


def solid(rgb, batch: int = 1, size: int = 64) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).expand(batch, size, size, 3).clone()


def with_square(image: torch.Tensor, rgb, y: int = 16, x: int = 16, side: int = 24) -> torch.Tensor:
    out = image.clone()
    out[:, y:y + side, x:x + side, :] = torch.tensor(rgb)
    return out


def score(graph, a, a_edited, b, b_edited) -> dict:
    """Runs AnalogyScore on the four images; returns its three outputs."""
    IMAGES.clear()
    IMAGES.update(a=a, a_edited=a_edited, b=b, b_edited=b_edited)
    prompt = {
        "1": {"class_type": "TinyCLIPVisionLoader", "inputs": {}},
        **{str(i + 2): {"class_type": "TestImage", "inputs": {"key": key}}
           for i, key in enumerate(("a", "a_edited", "b", "b_edited"))},
        "6": {"class_type": "AnalogyScore", "inputs": {
            "clip_vision": ["1", 0], "image_a": ["2", 0], "image_a_edited": ["3", 0], "image_b": ["4", 0],
            "image_b_edited": ["5", 0]}},
        "7": {"class_type": "Capture", "inputs": {"key": "directional", "value": ["6", 0]}},
        "8": {"class_type": "Capture", "inputs": {"key": "similarity", "value": ["6", 1]}},
        "9": {"class_type": "Capture", "inputs": {"key": "text", "value": ["6", 2]}},
    }
    return graph.run(prompt)


def embedding(image: torch.Tensor) -> torch.Tensor:
    from exemplar_edit.nodes import host

    vision = pack_testing.TinyCLIPVisionLoader().load()[0]
    with torch.no_grad():
        return host.image_embeds(vision, image)


A = solid((0.2, 0.4, 0.7))
A_EDITED = with_square(A, RED)


def test_b_changed_exactly_as_a_scores_one_and_the_reverse_minus_one(score_graph):
    same = score(score_graph, A, A_EDITED, A, A_EDITED)
    reverse = score(score_graph, A, A_EDITED, A_EDITED, A)
    assert math.isclose(same["directional"], 1.0, abs_tol=1e-5)
    assert math.isclose(reverse["directional"], -1.0, abs_tol=1e-5)
    # similarity_to_b is the cosine of B' and B's CLIP embeddings, below 1 for a changed image
    expected = float(torch.nn.functional.cosine_similarity(embedding(A), embedding(A_EDITED))[0])
    assert math.isclose(same["similarity"], expected, abs_tol=1e-5) and same["similarity"] < 0.999
    assert f"{same['directional']:.4f}" in same["text"] and f"{same['similarity']:.4f}" in same["text"]


def test_unchanged_b_scores_zero_direction_and_similarity_one(score_graph):
    b = solid((0.3, 0.6, 0.3))
    out = score(score_graph, A, A_EDITED, b, b.clone())
    assert out["directional"] == 0.0  # no direction: defined as 0, said in the text
    assert math.isclose(out["similarity"], 1.0, abs_tol=1e-6)
    assert "no change" in out["text"], out["text"]


@pytest.mark.parametrize("background", [(0.3, 0.6, 0.3), (0.8, 0.8, 0.2), (0.1, 0.1, 0.1)])
def test_the_same_edit_on_another_image_beats_another_edit_and_the_reverse(score_graph, background):
    """A' is A with a red square; B' with the same red square scores above B' with a blue square
    elsewhere, above zero, and above B' -> B (the reverse edit, which scores its negative)."""
    b = solid(background)
    same = score(score_graph, A, A_EDITED, b, with_square(b, RED))["directional"]
    other = score(score_graph, A, A_EDITED, b, with_square(b, BLUE, y=30, x=30))["directional"]
    reverse = score(score_graph, A, A_EDITED, with_square(b, RED), b)["directional"]
    assert same > 0.1 and same > other + 0.05
    assert math.isclose(reverse, -same, abs_tol=1e-5)


def test_adding_the_pixel_difference_beats_subtracting_it(score_graph):
    """B' = B + (A' - A) in pixels against B' = B - (A' - A)."""
    delta = A_EDITED - A
    for background in ((0.3, 0.6, 0.3), (0.5, 0.5, 0.5)):
        b = solid(background)
        plus = score(score_graph, A, A_EDITED, b, (b + delta).clamp(0, 1))["directional"]
        minus = score(score_graph, A, A_EDITED, b, (b - delta).clamp(0, 1))["directional"]
        assert plus > 0 > minus, (background, plus, minus)


def test_batches_are_scored_pair_by_pair(score_graph):
    """Two B pairs give the means of the two single scores and list both; one B serves every B'."""
    backgrounds = [solid((0.3, 0.6, 0.3)), solid((0.8, 0.8, 0.2))]
    edited = [with_square(backgrounds[0], RED), with_square(backgrounds[1], BLUE, y=30, x=30)]
    singles = [score(score_graph, A, A_EDITED, b, e) for b, e in zip(backgrounds, edited)]
    batch = score(score_graph, A, A_EDITED, torch.cat(backgrounds), torch.cat(edited))
    for key in ("directional", "similarity"):
        assert math.isclose(batch[key], (singles[0][key] + singles[1][key]) / 2, abs_tol=1e-5)
    assert "mean of 2 pairs" in batch["text"]
    assert f"{singles[0]['directional']:.4f}" in batch["text"] and f"{singles[1]['directional']:.4f}" in batch["text"]

    one_b = score(score_graph, A, A_EDITED, backgrounds[0], torch.cat([edited[0], backgrounds[0]]))
    assert math.isclose(one_b["directional"], singles[0]["directional"] / 2, abs_tol=1e-5)  # pair 2 unchanged: 0
    assert "pair 2 has B's CLIP embedding (no change)" in one_b["text"], one_b["text"]


@pytest.mark.parametrize("images, field", [
    (lambda: (A, A_EDITED, solid((0.3, 0.6, 0.3), batch=2), solid((0.8, 0.8, 0.2), batch=3)), "image_b_edited: 3 images"),
    (lambda: (solid((0.2, 0.4, 0.7), batch=2), A_EDITED, A, A_EDITED), "image_a_edited: 1 images"),
    (lambda: (A, A.clone(), A, A_EDITED), "image_a_edited: A' has the same CLIP embedding as A"),
])
def test_bad_inputs_are_refused_naming_the_input(score_graph, images, field):
    with pytest.raises(GraphError) as info:
        score(score_graph, *images())
    assert field in str(info.value), str(info.value)


def test_shipped_workflow_scores_the_final_b_prime_with_the_trainers_inputs():
    """In workflows/api/image_analogy.json the score reads the trainer's CLIP vision, A and A', the B
    that is inverted and the decoded B' that is saved, and its text reaches a Preview as Text node."""
    wf = json.loads(WORKFLOW.read_text())
    by_type = {}
    for node_id, node in wf.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    (score_id,) = by_type["AnalogyScore"]
    (trainer_id,) = by_type["DeltaInterpolationTrainer"]
    (save_id,) = by_type["SaveImage"]
    inputs, trainer = wf[score_id]["inputs"], wf[trainer_id]["inputs"]
    assert inputs["clip_vision"] == trainer["clip_vision"]
    assert inputs["image_a"] == trainer["image_before"] and inputs["image_a_edited"] == trainer["image_after"]
    assert inputs["image_b_edited"] == wf[save_id]["inputs"]["images"]
    assert wf[inputs["image_b_edited"][0]]["class_type"] == "VAEDecode"
    encodes_of_b = [n for n in by_type["VAEEncode"] if wf[n]["inputs"]["pixels"] == inputs["image_b"]]
    assert encodes_of_b, "image_b is not the B the workflow encodes"
    previews = [n for n in by_type.get("PreviewAny", []) if wf[n]["inputs"]["source"] == [score_id, 2]]
    assert previews, "no Preview as Text shows the score's text"
