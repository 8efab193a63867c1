"""Pytest fixtures; the helpers they use live in ``pack_testing.py`` (importable from tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pack_testing  # noqa: E402  (registers the pack as ``exemplar_edit``)


@pytest.fixture(scope="session")
def host():
    """The ComfyUI host (its ``nodes`` module), imported once in CPU mode."""
    pack_testing.import_host()
    import nodes  # ComfyUI's nodes.py

    return nodes


@pytest.fixture(scope="session")
def graph(host) -> pack_testing.GraphRunner:
    """Runs API-format prompts through ComfyUI's validator and executor, in-process."""
    return pack_testing.make_graph_runner()
