"""How the pack's checks reach ComfyUI's prompt validation (nodes/host/validation.py): one error per
bad input, on that input, on every host of the matrix. The frontend marks every input an error of
``POST /prompt`` names, and ComfyUI names every input of a node's ``validate_inputs`` signature."""
from __future__ import annotations

import inspect
import json

import pytest

from pack_testing import checkpoint_path

pytestmark = pytest.mark.integration

SD15 = "test_sd15.safetensors"


@pytest.fixture(scope="module")
def pack_nodes(graph):
    import asyncio

    from exemplar_edit.nodes import ExemplarEditExtension

    return asyncio.run(ExemplarEditExtension().get_node_list())


def _invert_prompt(**inputs) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "DDIMInvert", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["3", 0], "mode": "ddim", "steps": 2, "cfg": 1.0,
            "scheduler": "ddim_uniform", "skip_steps": 0, "seed": 0, "noise_regularization": False, "lambda_ac": 20.0,
            "lambda_kl": 20.0, "regularization_steps": 5, "auto_correlation_rolls": 5, **inputs}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def _marked(graph, prompt: dict, node: str = "4") -> list[tuple[str, str]]:
    """(input name, details) of every validation error ComfyUI reports on ``node``."""
    checkpoint_path(SD15)
    _ok, _error, _outputs, node_errors = graph.validate(prompt)
    return [((e.get("extra_info") or {}).get("input_name"), e.get("details", ""))
            for e in node_errors.get(node, {}).get("errors", [])]


def test_no_node_validates_with_kwargs_and_every_rule_has_its_inputs(pack_nodes):
    """A ``**kwargs`` validate_inputs makes ComfyUI tag a failure on every input of the node and skip
    its own checks for all of them; a node with rules names the inputs they read."""
    from exemplar_edit.nodes import host

    for node in pack_nodes:
        validate = node.__dict__.get("validate_inputs")
        has_rules = node.check_inputs.__func__ is not host.PackNode.check_inputs.__func__
        assert (validate is not None) == has_rules, node.__name__
        if validate is not None:
            spec = inspect.getfullargspec(validate.__func__)
            assert spec.varkw is None and spec.args[0] == "cls", node.__name__
            inputs = {entry.id for entry in node.define_schema().inputs}
            assert set(spec.args[1:]) <= inputs, (node.__name__, set(spec.args[1:]) - inputs)


def test_every_float_minimum_is_one_a_nan_is_below(pack_nodes):
    """As ComfyUI reads it (INPUT_TYPES), so that its own range check refuses a JSON NaN."""
    for node in pack_nodes:
        info = node.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in (info.get(section) or {}).items():
                if spec[0] == "FLOAT":
                    minimum = spec[1]["min"]
                    assert float("nan") < minimum, (node.__name__, name)
                    assert minimum - 1.0 < minimum and not minimum + 1.0 < minimum and not minimum < minimum
                    assert json.loads(json.dumps(minimum)) == float(minimum)  # /object_info: the plain number


def test_a_nan_is_reported_on_exactly_its_input(graph):
    assert _marked(graph, _invert_prompt(cfg=float("nan"))) == [("cfg", "cfg")]


def test_text_for_a_number_is_reported_on_exactly_its_input_without_a_crash(graph):
    marked = _marked(graph, _invert_prompt(steps="abc"))
    assert [name for name, _ in marked] == ["steps"], marked
    assert "abc" in marked[0][1]


def test_a_rule_is_reported_on_the_inputs_it_reads_only(graph):
    marked = _marked(graph, _invert_prompt(steps=2, skip_steps=2))
    assert {name for name, _ in marked} == {"steps", "skip_steps", "mode", "noise_regularization", "scheduler"}
    assert all("skip_steps: 2 must be between 0 and steps - 1 = 1" in details for _, details in marked)
