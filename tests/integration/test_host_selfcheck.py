"""The host self-check (nodes/host/selfcheck.py): clean on every host of the matrix, and a moved
convention is named in the ComfyUI log at load instead of failing mid-sampling."""
from __future__ import annotations

import logging

import pytest

import pack_testing

pytestmark = pytest.mark.integration

pack_testing.import_host()
from exemplar_edit.nodes.host import selfcheck  # noqa: E402


def test_this_host_keeps_every_convention_the_pack_relies_on():
    assert selfcheck.problems() == []


def test_a_transformer_option_key_the_host_stopped_setting_is_named():
    source = 'transformer_options["block"] = ("input", id)\ntransformer_options["block_index"] = i\n'
    assert selfcheck.missing_keys(source, ["block", "block_index", "activations_shape"]) == ["activations_shape"]


def test_callback_fields_are_read_from_the_samplers_adapter():
    source = 'k_callback = lambda x: callback(x["i"], x["denoised"], x["x"], total_steps)'
    assert selfcheck.callback_fields_read(source) == {"i", "denoised", "x"}


def test_a_moved_convention_is_logged_by_name(monkeypatch, caplog):
    def moved():
        raise AttributeError("module 'comfy.samplers' has no attribute 'calc_cond_batch'")

    monkeypatch.setattr(selfcheck, "CHECKS", {"sampling functions": moved, "wrapper types": lambda: None})
    with caplog.at_level(logging.WARNING, logger="exemplar_edit"):
        found = selfcheck.report()
    assert found == ["sampling functions: AttributeError: module 'comfy.samplers' has no attribute 'calc_cond_batch'"]
    assert "host check: sampling functions" in caplog.text
