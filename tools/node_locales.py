#!/usr/bin/env python3
"""The pack's translations for ComfyUI's frontend, generated from the node schemas.

    python tools/node_locales.py           # rewrite locales/en/*.json; list what locales/zh lacks
    python tools/node_locales.py --check   # write nothing; exit 1 if anything is out of date

``locales/en/nodeDefs.json`` and ``locales/en/main.json`` are GENERATED (never edit them): from each
node's schema as ComfyUI serves it (``GET_NODE_INFO_V1``, what ``/object_info`` returns), in the
format the frontend reads from a custom node's ``locales/<lang>/`` (ComfyUI's ``/i18n`` route merges
``main.json`` with ``nodeDefs.json`` under the key ``nodeDefs``):

- ``nodeDefs.json``: ``{NodeId: {display_name, description, inputs: {name: {name, tooltip}},
  outputs: {"<index>": {name, tooltip}}}}``; an output's ``name`` only when it differs from its type
  (the frontend shows the type's own translation otherwise), keys with dots written with underscores
  (the frontend's ``normalizeI18nKey``);
- ``main.json``: ``{"nodeCategories": {segment: segment}}`` for each segment of the pack's categories.

Every other language (``locales/zh/``) keeps its own translations of exactly the same keys; after
writing the English files this lists each key a translation lacks (with the English text to
translate) or holds that English no longer has. ``tests/integration/test_node_help.py`` fails on
any of these, and on a node without its help pages ``web/docs/<NodeId>.md`` and
``web/docs/<NodeId>/<lang>.md``.

Runs in-process against the ComfyUI host (``$COMFYUI_PATH`` or the pinned ``.host/ComfyUI``) with the
project's Python (``.venv/bin/python tools/node_locales.py``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from workflow_ui import write_atomic  # noqa: E402  (the one atomic writer of tools/)

LOCALES = REPO / "locales"
DOCS = REPO / "web" / "docs"
SOURCE_LANG = "en"
FILES = ("nodeDefs.json", "main.json")
PACKAGE = "exemplar_edit"
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]*\ssrc=[\"']([^\"']+)[\"']")

__all__ = ["node_defs", "main_strings", "key_paths", "translation_problems", "docs_problems", "render",
           "pack_node_infos"]


def normalize_key(key: str) -> str:
    """The frontend's ``normalizeI18nKey``: dots would split the message path."""
    return key.replace(".", "_")


# --------------------------------------------------------------------------------------------
# From the schemas
# --------------------------------------------------------------------------------------------

def pack_node_infos() -> list[dict]:
    """``GET_NODE_INFO_V1()`` of every node the pack registers (needs the ComfyUI host importable)."""
    import comfy_host

    comfy_host.import_host()
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    nodes = importlib.import_module(f"{PACKAGE}.nodes")
    return [cls.GET_NODE_INFO_V1() for cls in nodes.NODES]


def _input_entries(info: Mapping) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        ordered = order.get(section, [])
        names = [n for n in ordered if n in specs] + [n for n in specs if n not in ordered]
        for name in names:
            spec = specs[name]
            options = (spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}) or {}
            entry = {"name": options.get("display_name") or name}
            if options.get("tooltip"):
                entry["tooltip"] = options["tooltip"]
            entries[normalize_key(name)] = entry
            if options.get("control_after_generate"):
                entries.setdefault("control_after_generate", {"name": "control after generate"})
    return entries


def _output_entries(info: Mapping) -> dict[str, dict]:
    types = info.get("output") or []
    names = info.get("output_name") or types
    tooltips = info.get("output_tooltips") or []
    entries: dict[str, dict] = {}
    for index, io_type in enumerate(types):
        entry = {}
        name = names[index] if index < len(names) else io_type
        if isinstance(io_type, str) and name != io_type:
            entry["name"] = name
        if index < len(tooltips) and tooltips[index]:
            entry["tooltip"] = tooltips[index]
        if entry:
            entries[str(index)] = entry
    return entries


def node_defs(infos: Iterable[Mapping]) -> dict[str, dict]:
    """The English ``nodeDefs.json`` for these node infos (sorted by node id)."""
    out: dict[str, dict] = {}
    for info in sorted(infos, key=lambda i: i["name"]):
        entry: dict[str, Any] = {"display_name": info.get("display_name") or info["name"]}
        if info.get("description"):
            entry["description"] = info["description"]
        inputs = _input_entries(info)
        if inputs:
            entry["inputs"] = inputs
        outputs = _output_entries(info)
        if outputs:
            entry["outputs"] = outputs
        out[normalize_key(info["name"])] = entry
    return out


def main_strings(infos: Iterable[Mapping]) -> dict[str, dict]:
    """The English ``main.json``: the category path segments the node library shows."""
    segments: list[str] = []
    for info in infos:
        for segment in str(info.get("category") or "").split("/"):
            if segment and segment not in segments:
                segments.append(segment)
    return {"nodeCategories": {s: s for s in segments}}


def generated(infos: list[Mapping]) -> dict[str, dict]:
    return {"nodeDefs.json": node_defs(infos), "main.json": main_strings(infos)}


def render(data: Mapping) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def key_paths(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"A.inputs.b.tooltip": leaf}`` for every leaf of a nested dict."""
    if not isinstance(data, Mapping):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(key_paths(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def translation_problems(source: Mapping, translation: Mapping, where: str) -> list[str]:
    """Keys the translation lacks or has beyond the English file, and empty translations."""
    src, dst = key_paths(source), key_paths(translation)
    problems = [f"{where}: no translation for {k} (English: {src[k]!r})" for k in src if k not in dst]
    problems += [f"{where}: {k} is not in the English file (a node, input or output that no longer exists?)"
                 for k in dst if k not in src]
    problems += [f"{where}: {k} is empty" for k in dst if k in src and not (isinstance(dst[k], str) and dst[k].strip())]
    return problems


def languages() -> list[str]:
    return sorted(p.name for p in LOCALES.iterdir() if p.is_dir() and p.name != SOURCE_LANG) if LOCALES.is_dir() else []


def docs_problems(node_ids: Iterable[str], langs: Iterable[str],
                  inputs_of: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Each node needs ``web/docs/<NodeId>.md`` and ``web/docs/<NodeId>/<lang>.md``, naming every input
    (as `name`), and every picture they show must exist (relative to web/docs/, where the frontend
    resolves it)."""
    problems = []
    for node_id in node_ids:
        pages = [DOCS / f"{node_id}.md"] + [DOCS / node_id / f"{lang}.md" for lang in langs]
        for page in pages:
            rel = page.relative_to(REPO)
            if not page.is_file() or not page.read_text(encoding="utf-8").strip():
                problems.append(f"{rel}: missing (the node help page of {node_id})")
                continue
            text = page.read_text(encoding="utf-8")
            for name in (inputs_of or {}).get(node_id, ()):
                if f"`{name}`" not in text:
                    problems.append(f"{rel}: does not describe the input `{name}`")
            for match in IMAGE_LINK.finditer(text):
                src = match.group(1) or match.group(2)
                if src.startswith(("http://", "https://", "/")):
                    problems.append(f"{rel}: picture {src} is not a file of web/docs/")
                elif not (DOCS / src).is_file():
                    problems.append(f"{rel}: picture {src} does not exist (relative to web/docs/, "
                                    f"as the frontend reads it)")
    return problems


def all_problems(infos: list[Mapping]) -> list[str]:
    """What ``--check`` (and the test) report: English files out of date, translation gaps, help pages."""
    problems = []
    expected = generated(infos)
    for name, data in expected.items():
        path = LOCALES / SOURCE_LANG / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(data):
            problems.append(f"{path.relative_to(REPO)} is out of date with the node schemas: run "
                            f"`.venv/bin/python tools/node_locales.py`")
    langs = languages()
    for lang in langs:
        for name, data in expected.items():
            path = LOCALES / lang / name
            if not path.is_file():
                problems.append(f"{path.relative_to(REPO)}: missing")
                continue
            problems += translation_problems(data, json.loads(path.read_text(encoding="utf-8")),
                                             str(path.relative_to(REPO)))
    inputs_of = {i["name"]: [n for section in ("required", "optional")
                             for n in (i.get("input") or {}).get(section) or {}] for i in infos}
    problems += docs_problems([i["name"] for i in infos], langs, inputs_of)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate locales/en from the node schemas and check the translations "
                                "and help pages.")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 on anything out of date")
    args = p.parse_args(argv)
    infos = pack_node_infos()
    if not args.check:
        for name, data in generated(infos).items():
            path = LOCALES / SOURCE_LANG / name
            text = render(data)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_atomic(path, text)
                print(f"wrote {path.relative_to(REPO)}")
            else:
                print(f"{path.relative_to(REPO)}: up to date")
    problems = all_problems(infos)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{len(infos)} nodes: English generated, {', '.join(languages()) or 'no other language'} complete, "
              f"help pages present")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
