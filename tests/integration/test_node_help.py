"""The frontend's node help and translations (issue 20): ``web/docs`` and ``locales/``.

``locales/en`` is generated from the node schemas by ``tools/node_locales.py``; every other language
keeps the same keys with its own text; every node has ``web/docs/<NodeId>.md`` and
``web/docs/<NodeId>/<lang>.md`` describing each of its inputs. Run on each host of the matrix: the
schemas come from the host in use.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import node_locales  # noqa: E402

pytestmark = pytest.mark.integration
REGENERATE = "run `.venv/bin/python tools/node_locales.py` (README, Development)"


@pytest.fixture(scope="module")
def infos(host):
    return node_locales.pack_node_infos()


def test_the_pack_serves_web_directory():
    import exemplar_edit

    web = (REPO / exemplar_edit.WEB_DIRECTORY).resolve()
    assert web == REPO / "web" and (web / "docs").is_dir()


def test_english_locales_are_generated_from_the_node_schemas(infos):
    from exemplar_edit.nodes import NODES

    assert len(infos) == len(NODES)
    for name, data in node_locales.generated(infos).items():
        path = REPO / "locales" / "en" / name
        assert path.is_file(), f"{path} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == node_locales.render(data), \
            f"{path.relative_to(REPO)} is out of date with the node schemas: {REGENERATE}"
    node_defs = json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))
    for info in infos:  # what the frontend shows: display name, description, a tooltip on every input
        entry = node_defs[info["name"]]
        assert entry["display_name"] == info["display_name"] and entry["description"] == info["description"]
        for section in ("required", "optional"):
            for name in (info["input"].get(section) or {}):
                assert entry["inputs"][name].get("tooltip"), f"{info['name']}.{name} has no tooltip"


def test_every_language_translates_exactly_the_english_keys(infos):
    langs = node_locales.languages()
    assert "zh" in langs
    problems = []
    for lang in langs:
        for name, data in node_locales.generated(infos).items():
            path = REPO / "locales" / lang / name
            assert path.is_file(), f"{path.relative_to(REPO)} missing"
            problems += node_locales.translation_problems(data, json.loads(path.read_text(encoding="utf-8")),
                                                          str(path.relative_to(REPO)))
    assert not problems, "\n".join(problems)


def test_every_node_has_help_pages_naming_each_input(infos):
    inputs_of = {i["name"]: [n for s in ("required", "optional") for n in (i["input"].get(s) or {})] for i in infos}
    problems = node_locales.docs_problems(list(inputs_of), node_locales.languages(), inputs_of)
    assert not problems, "\n".join(problems)


def test_zh_titles_are_translated(infos):
    zh = json.loads((REPO / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    same = [i["name"] for i in infos if zh[i["name"]]["display_name"] == i["display_name"]]
    assert not same, f"untranslated display names in locales/zh: {same}"


# --- the checks above can fail --------------------------------------------------------------

def test_a_new_input_without_translation_is_named():
    en = {"DDIMInvert": {"display_name": "DDIM Invert", "inputs": {"steps": {"name": "steps", "tooltip": "Steps."},
                                                                    "flux_guidance": {"name": "flux_guidance"}}}}
    zh = {"DDIMInvert": {"display_name": "DDIM 反演", "inputs": {"steps": {"name": "步数", "tooltip": "步数。"},
                                                                "old_input": {"name": "旧"}}}}
    problems = node_locales.translation_problems(en, zh, "zh")
    assert "zh: no translation for DDIMInvert.inputs.flux_guidance.name (English: 'flux_guidance')" in problems
    assert any("DDIMInvert.inputs.old_input.name is not in the English file" in p for p in problems)
    assert node_locales.translation_problems(en, {**zh, "DDIMInvert": {**zh["DDIMInvert"], "display_name": " "}},
                                             "zh")[-1] == "zh: DDIMInvert.display_name is empty"


def test_a_node_without_help_pages_is_named():
    problems = node_locales.docs_problems(["FluxInvertExample"], ["zh"])
    assert problems == ["web/docs/FluxInvertExample.md: missing (the node help page of FluxInvertExample)",
                        "web/docs/FluxInvertExample/zh.md: missing (the node help page of FluxInvertExample)"]
    problems = node_locales.docs_problems(["DDIMInvert"], [], {"DDIMInvert": ["no_such_input"]})
    assert problems == ["web/docs/DDIMInvert.md: does not describe the input `no_such_input`"]
