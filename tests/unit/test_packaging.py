"""What the registry and ComfyUI Manager read from pyproject.toml (issue 20)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
FLOOR = Version("0.3.75")  # the pinned host of `make test-hosts`
FLOOR_OPERATORS = {">=", ">"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def upper_bounds(spec: str) -> list[str]:
    """The clauses of a version range that can exclude a newer release (anything but a floor)."""
    return [str(s) for s in SpecifierSet(spec) if s.operator not in FLOOR_OPERATORS]


def test_requires_comfyui_is_a_floor_only():
    spec = _pyproject()["tool"]["comfy"]["requires-comfyui"]
    assert not upper_bounds(spec), (
        f"requires-comfyui = {spec!r} caps the ComfyUI version: the registry and ComfyUI Manager disable the pack "
        "for every newer release. Give a floor only; the README's 'Tested with' table says what was tested.")
    specifiers = SpecifierSet(spec)
    assert FLOOR in specifiers and Version("0.3.74") not in specifiers, spec
    for newer in ("0.33.0", "0.38.2", "1.0.0", "2.5.1"):
        assert Version(newer) in specifiers, f"{spec!r} excludes ComfyUI {newer}"


@pytest.mark.parametrize("spec, bounds", [
    (">=0.3.75", []),
    (">0.3.0", []),
    (">=0.3.75,<=0.33.0", ["<=0.33.0"]),
    (">=0.3.75,<1", ["<1"]),
    ("~=0.3.75", ["~=0.3.75"]),
    ("==0.3.75", ["==0.3.75"]),
    (">=0.3.75,!=0.34.0", ["!=0.34.0"]),
])
def test_upper_bound_detection(spec, bounds):
    assert upper_bounds(spec) == bounds


def test_version_is_the_same_in_both_places():
    init = (REPO / "__init__.py").read_text(encoding="utf-8")
    assert f'__version__ = "{_pyproject()["project"]["version"]}"' in init
