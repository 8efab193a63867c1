#!/usr/bin/env python3
"""Convert workflows between ComfyUI's API format and its UI (LiteGraph) format.

``workflows/api/<name>.json`` (what ``POST /prompt`` runs) is the source of truth;
``workflows/<name>.json`` is the same graph in the format the ComfyUI editor loads (and what
ComfyUI serves as the pack's workflow templates). The node definitions come from a running
server's ``/object_info``: they say which inputs are widgets and in what order.

    python tools/workflow_ui.py --all            # regenerate workflows/<name>.json (starts a server)
    python tools/workflow_ui.py --all --check    # exit 1 if any UI file is missing or out of date
    python tools/workflow_ui.py workflows/api/x.json -o /tmp/x.json [--url http://127.0.0.1:8188]

Importable: :func:`api_to_ui` and :func:`ui_to_api` (the reverse, as the frontend's "Export (API)"
would do it), both taking the ``/object_info`` dict.

Frontend conventions followed (ComfyUI_frontend):
- widgets are created in input order (required, then optional, as ``input_order`` lists them);
  ``widgets_values`` holds one value per widget, linked widget inputs included;
- an INT input gets a "control after generate" widget right after it when its spec says
  ``control_after_generate`` (or, when the spec says nothing, when it is named ``seed`` or
  ``noise_seed``); so does a COMBO with ``control_after_generate``. We store ``"fixed"``;
- a combo with ``image_upload`` gets an upload widget after it, stored as ``"image"``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

REPO = TOOLS.parent
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUE = "fixed"
UPLOAD_VALUES = {"image_upload": "image"}
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
COLUMN_WIDTH = 400
NODE_WIDTH = 315
GAP = 40

__all__ = ["api_to_ui", "ui_to_api", "input_specs", "ConversionError"]


class ConversionError(ValueError):
    pass


# --------------------------------------------------------------------------------------------
# Node definitions
# --------------------------------------------------------------------------------------------

class InputSpec:
    __slots__ = ("name", "type", "options", "optional", "widget", "control", "upload")

    def __init__(self, name: str, spec: Any, optional: bool):
        io_type, options = (spec[0], spec[1] if len(spec) > 1 else {}) if isinstance(spec, (list, tuple)) else (spec, {})
        options = options or {}
        self.name = name
        self.options = options
        self.optional = optional
        if isinstance(io_type, list):  # V1 combo: the options list is the type
            self.options = dict(options, options=io_type)
            io_type = "COMBO"
        self.type = str(io_type)
        self.widget = self.type in WIDGET_TYPES and not options.get("forceInput")
        cag = options.get("control_after_generate")
        if self.type == "INT":
            self.control = bool(cag if cag is not None else name in SEED_NAMES)
        elif self.type == "COMBO":
            self.control = bool(cag)
        else:
            self.control = False
        self.upload = next((v for k, v in UPLOAD_VALUES.items() if options.get(k)), None)
        if not self.widget:
            self.control, self.upload = False, None

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            opts = self.options.get("options") or []
            return opts[0] if opts else None
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


def input_specs(info: Mapping) -> list[InputSpec]:
    """The node's inputs in frontend order: required then optional, by ``input_order`` if given."""
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        defs = inputs.get(section) or {}
        names = [n for n in order.get(section, []) if n in defs] or list(defs)
        names += [n for n in defs if n not in names]
        specs += [InputSpec(n, defs[n], section == "optional") for n in names]
    return specs


def _info(object_info: Mapping, class_type: str, where: str) -> Mapping:
    info = object_info.get(class_type)
    if not isinstance(info, Mapping):
        raise ConversionError(f"{where}: node type {class_type!r} is not known to this ComfyUI (/object_info); "
                              f"is the pack that provides it installed and loaded?")
    return info


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _node_key(k: Any):
    return (0, int(k)) if str(k).isdigit() else (1, str(k))


# --------------------------------------------------------------------------------------------
# API -> UI
# --------------------------------------------------------------------------------------------

def _depths(api: Mapping) -> dict[str, int]:
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(nid: str) -> int:
        if nid in depth:
            return depth[nid]
        if nid in visiting:
            raise ConversionError(f"the workflow has a cycle through node {nid}")
        visiting.add(nid)
        parents = [str(v[0]) for v in api[nid].get("inputs", {}).values() if _is_link(v) and str(v[0]) in api]
        d = 1 + max((visit(p) for p in parents), default=-1)
        visiting.discard(nid)
        depth[nid] = d
        return d

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: Mapping, object_info: Mapping) -> dict:
    """UI-format (LiteGraph) workflow for an API-format one. Node ids must be integers."""
    for nid in api:
        if not str(nid).isdigit():
            raise ConversionError(f"node id {nid!r} is not an integer; the UI format numbers its nodes")
    ids = sorted(api, key=_node_key)
    depth = _depths(api)
    order = {nid: i for i, nid in enumerate(sorted(ids, key=lambda n: (depth[n], _node_key(n))))}

    nodes: dict[str, dict] = {}
    specs_of: dict[str, list[InputSpec]] = {}
    for nid in ids:
        node = api[nid]
        cls = node["class_type"]
        info = _info(object_info, cls, f"node {nid}")
        specs_of[nid] = input_specs(info)
        known = {s.name for s in specs_of[nid]}
        unknown = [k for k in node.get("inputs", {}) if k not in known]
        if unknown:
            raise ConversionError(f"node {nid} ({cls}) has input(s) {unknown} that {cls} does not define")
        outputs = info.get("output") or []
        names = info.get("output_name") or outputs
        ui = {
            "id": int(nid),
            "type": cls,
            "pos": [0, 0],
            "size": [NODE_WIDTH, 0],
            "flags": {},
            "order": order[nid],
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": str(names[i] if i < len(names) else t), "type": _type_name(t), "links": [],
                         "slot_index": i} for i, t in enumerate(outputs)],
            "properties": {"Node name for S&R": cls},
            "widgets_values": [],
        }
        title = (node.get("_meta") or {}).get("title")
        if title and title != (info.get("display_name") or cls):
            ui["title"] = title
        nodes[nid] = ui

    links = []
    for nid in ids:  # links in node order, then input order
        ui = nodes[nid]
        values = api[nid].get("inputs", {})
        for spec in specs_of[nid]:
            value = values.get(spec.name)
            linked = _is_link(value)
            if linked:
                src, slot = str(value[0]), value[1]
                if src not in nodes:
                    raise ConversionError(f"node {nid} input {spec.name!r} links to missing node {src}")
                src_outputs = nodes[src]["outputs"]
                if slot >= len(src_outputs):
                    raise ConversionError(f"node {nid} input {spec.name!r} links to output {slot} of node {src}, "
                                          f"which has {len(src_outputs)} output(s)")
                link_id = len(links) + 1
                link_type = src_outputs[slot]["type"]
                if link_type == "*":
                    link_type = spec.type
                links.append([link_id, int(src), slot, int(nid), len(ui["inputs"]), link_type])
                src_outputs[slot]["links"].append(link_id)
            if not spec.widget or linked:
                slot_entry = {"name": spec.name, "type": spec.type, "link": links[-1][0] if linked else None}
                if spec.widget:
                    slot_entry["widget"] = {"name": spec.name}
                label = spec.options.get("display_name")
                if label and label != spec.name:
                    slot_entry["label"] = label
                ui["inputs"].append(slot_entry)
            if spec.widget:
                ui["widgets_values"].append(spec.default() if linked or spec.name not in values else value)
                if spec.control:
                    ui["widgets_values"].append(CONTROL_VALUE)
                if spec.upload:
                    ui["widgets_values"].append(spec.upload)
    _layout(ids, nodes, specs_of, depth)
    return {
        "last_node_id": max((int(n) for n in ids), default=0),
        "last_link_id": len(links),
        "nodes": [nodes[nid] for nid in ids],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _type_name(t: Any) -> str:
    return "COMBO" if isinstance(t, list) else str(t)


def _layout(ids, nodes, specs_of, depth) -> None:
    columns: dict[int, list[str]] = defaultdict(list)
    for nid in ids:
        columns[depth[nid]].append(nid)
    for d, members in columns.items():
        y = 50
        for nid in members:
            ui = nodes[nid]
            n_widgets = sum(1 + s.control + bool(s.upload) for s in specs_of[nid] if s.widget)
            multiline = sum(1 for s in specs_of[nid] if s.widget and s.options.get("multiline"))
            height = 30 + 22 * max(len(ui["inputs"]), len(ui["outputs"]), 1) + 26 * n_widgets + 60 * multiline
            if ui["type"] in ("LoadImage", "SaveImage", "PreviewImage"):
                height += 250
            ui["pos"] = [50 + d * COLUMN_WIDTH, y]
            ui["size"] = [NODE_WIDTH, height]
            y += height + GAP


# --------------------------------------------------------------------------------------------
# UI -> API
# --------------------------------------------------------------------------------------------

def ui_to_api(ui: Mapping, object_info: Mapping) -> dict:
    """API-format workflow for a UI-format one, as the frontend's "Export (API)" builds it.

    Muted nodes (mode 2) are left out; bypassed nodes (mode 4) pass their first input of a
    matching type through; Reroute nodes are followed; PrimitiveNode values are inlined; notes
    are dropped.
    """
    nodes = {int(n["id"]): n for n in ui.get("nodes", [])}
    links: dict[int, tuple[int, int, int, int, Any]] = {}
    for link in ui.get("links", []) or []:
        if isinstance(link, Mapping):  # newer serialisation
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[int(link[0])] = (int(link[1]), int(link[2]), int(link[3]), int(link[4]), link[5])

    def source(link_id: int, want_type: Any, seen=()) -> tuple | None:
        """(node id, slot) of the real producer of a link, or ("value", v) for a PrimitiveNode."""
        if link_id not in links:
            return None
        src, slot = links[link_id][0], links[link_id][1]
        node = nodes.get(src)
        if node is None or src in seen:
            return None
        mode = node.get("mode", 0)
        if node["type"] == "Reroute" or mode == 4:
            for inp in node.get("inputs", []) or []:
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp.get("type") in (want_type, "*")
                                                    or want_type in (None, "*")):
                    return source(inp["link"], want_type, seen + (src,))
            return None
        if mode == 2:
            return None
        if node["type"] == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0] if values else None)
        return (src, slot)

    api: dict[str, dict] = {}
    for nid in sorted(nodes):
        node = nodes[nid]
        cls = node.get("type")
        if cls in UI_ONLY_TYPES or node.get("mode", 0) in (2, 4):
            continue
        info = _info(object_info, cls, f"node {nid}")
        specs = input_specs(info)
        inputs: dict[str, Any] = {}
        slots = {inp.get("name"): inp for inp in node.get("inputs", []) or []}
        values = node.get("widgets_values")
        by_name = isinstance(values, Mapping)
        values = values if values is not None else []
        index = 0
        for spec in specs:
            value_here = None
            has_value = False
            if spec.widget:
                if by_name:
                    has_value, value_here = spec.name in values, values.get(spec.name)
                elif index < len(values):
                    has_value, value_here = True, values[index]
                index += 1 + spec.control + bool(spec.upload)
            slot = slots.get(spec.name)
            if slot is not None and slot.get("link") is not None:
                src = source(int(slot["link"]), slot.get("type"))
                if src is not None:
                    inputs[spec.name] = src[1] if src[0] == "value" else [str(src[0]), src[1]]
                    continue
            if spec.widget and has_value:
                inputs[spec.name] = value_here
        entry = {"inputs": inputs, "class_type": cls}
        entry["_meta"] = {"title": node.get("title") or info.get("display_name") or cls}
        api[str(nid)] = entry
    return api


def comparable(api: Mapping) -> dict:
    """``{id: (class_type, inputs)}``: what must match between the two formats."""
    return {str(k): {"class_type": v.get("class_type"), "inputs": v.get("inputs", {})} for k, v in api.items()}


def differences(expected: Mapping, got: Mapping) -> list[str]:
    """Readable differences between two API workflows (class types, inputs and links only)."""
    a, b = comparable(expected), comparable(got)
    out = []
    for nid in sorted(set(a) | set(b), key=_node_key):
        if nid not in b:
            out.append(f"node {nid} ({a[nid]['class_type']}) missing")
            continue
        if nid not in a:
            out.append(f"extra node {nid} ({b[nid]['class_type']})")
            continue
        if a[nid]["class_type"] != b[nid]["class_type"]:
            out.append(f"node {nid}: class {a[nid]['class_type']} vs {b[nid]['class_type']}")
        ia, ib = a[nid]["inputs"], b[nid]["inputs"]
        for name in sorted(set(ia) | set(ib)):
            if ia.get(name, "<absent>") != ib.get(name, "<absent>") or (name in ia) != (name in ib):
                out.append(f"node {nid} ({a[nid]['class_type']}) input {name!r}: "
                           f"{json.dumps(ia.get(name, '<absent>'))} vs {json.dumps(ib.get(name, '<absent>'))}")
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _compact(value: Any, indent: int = 0) -> str:
    """JSON with 2-space indentation, but lists of scalars (pos, size, links, widget values) and
    small flat objects on one line, so diffs stay readable."""
    pad, inner = " " * indent, " " * (indent + 2)
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, list):
        if all(isinstance(v, scalar) for v in value):
            return json.dumps(value, ensure_ascii=False)
        return "[\n" + ",\n".join(inner + _compact(v, indent + 2) for v in value) + "\n" + pad + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        flat = all(isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
                   for v in value.values())
        one_line = json.dumps(value, ensure_ascii=False)
        if flat and len(one_line) <= 100:
            return one_line
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_compact(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    return json.dumps(value, ensure_ascii=False)


def dumps(ui: Mapping) -> str:
    return _compact(ui) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _object_info(url: str) -> dict:
    import run_workflow

    return run_workflow.get_json(url, "/object_info", timeout=120)


def convert_all(object_info: Mapping, *, check: bool = False, api_dir: Path = API_DIR,
                ui_dir: Path = WORKFLOWS) -> int:
    status = 0
    files = sorted(api_dir.glob("*.json"))
    if not files:
        print(f"no API workflows in {api_dir}", file=sys.stderr)
        return 1
    for api_path in files:
        api = json.loads(api_path.read_text(encoding="utf-8"))
        ui = api_to_ui(api, object_info)
        back = ui_to_api(ui, object_info)
        diff = differences(api, back)
        if diff:
            print(f"{api_path.name}: does not survive a round trip: " + "; ".join(diff), file=sys.stderr)
            status = 1
            continue
        target = ui_dir / api_path.name
        text = dumps(ui)
        if check:
            if not target.exists():
                print(f"{target} is missing (run tools/workflow_ui.py --all)", file=sys.stderr)
                status = 1
            else:
                existing = json.loads(target.read_text(encoding="utf-8"))
                drift = differences(api, ui_to_api(existing, object_info))
                if drift:
                    print(f"{target} is out of date with {api_path}: " + "; ".join(drift), file=sys.stderr)
                    status = 1
                else:
                    print(f"{target}: up to date")
        else:
            write_atomic(target, text)
            print(f"wrote {target}")
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Convert API-format workflows to the UI format (and check them).")
    p.add_argument("workflow", nargs="?", help="an API-format workflow to convert")
    p.add_argument("-o", "--output", help="where to write the UI workflow (default: stdout)")
    p.add_argument("--all", action="store_true", help="regenerate workflows/<name>.json from workflows/api/*.json")
    p.add_argument("--check", action="store_true", help="with --all: only check, write nothing")
    p.add_argument("--reverse", action="store_true", help="convert a UI workflow to the API format instead")
    p.add_argument("--url", help="a running ComfyUI with the pack (default: start one)")
    args = p.parse_args(argv)
    if not args.all and not args.workflow:
        p.error("give a workflow file or --all")

    import run_workflow
    import serve

    def work(url: str) -> int:
        info = _object_info(url)
        if args.all:
            return convert_all(info, check=args.check)
        data = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        result = ui_to_api(data, info) if args.reverse else api_to_ui(data, info)
        text = dumps(result)
        if args.output:
            write_atomic(Path(args.output), text)
        else:
            sys.stdout.write(text)
        return 0

    try:
        if args.url:
            return work(run_workflow.normalize_url(args.url))
        with serve.running_server(use_env=False) as url:
            return work(url)
    except (ConversionError, run_workflow.WorkflowError, serve.ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
