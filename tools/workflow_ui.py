#!/usr/bin/env python3
"""Convert workflows between ComfyUI's API format and its UI (LiteGraph) format.

``workflows/api/<name>.json`` (what ``POST /prompt`` runs) and ``workflows/api/<name>.md`` (the
Note: what to set and what to expect) are the source of truth; ``workflows/<name>.json`` is the
same graph in the format the ComfyUI editor loads (and what ComfyUI serves as the pack's workflow
templates). The node definitions come from a running server's ``/object_info``: they say which
inputs are widgets and in what order.

The UI file is laid out to be read in one look (:func:`assign_stages`, :func:`_layout`): the stages
inputs, inversion, edit and output left to right, each a titled group; the Note at the top left;
no node over another; a link between neighbouring columns runs in the gap between them, one that
would cross a column runs along a wire bus of Reroute nodes above the nodes. ``--all`` refuses a
layout that :func:`layout_problems` faults; the same check runs on the shipped files in the tests
and, with the frontend's own geometry, in the browser test.

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
from pathlib import Path
from typing import Any, Iterable, Mapping

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
NODE_WIDTH = 315

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


def api_to_ui(api: Mapping, object_info: Mapping, note: str | None = None) -> dict:
    """UI-format (LiteGraph) workflow for an API-format one. Node ids must be integers.

    Laid out by stage (:func:`assign_stages`), each stage a titled group; ``note`` becomes a Note
    node at the top left (the shipped workflows' ``workflows/api/<name>.md``)."""
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

    wires = []  # (source id, source slot, target id, target input name), in node order, then input order
    for nid in ids:
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
                wires.append((src, slot, nid, spec.name))
            if not spec.widget or linked:
                slot_entry = {"name": spec.name, "type": spec.type, "link": None}
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
    groups, note_node, reroutes, bus = _layout(api, ids, nodes, specs_of, object_info, note)
    by_id = {str(n["id"]): n for n in list(nodes.values()) + reroutes}
    on_bus = {(str(b[2]), b[3]) for b in bus if b[3] is not None}
    links = []
    for src, slot, dst, name in [w for w in wires if (w[2], w[3]) not in on_bus] + [tuple(b) for b in bus]:
        source, target = by_id[str(src)], by_id[str(dst)]
        index = 0 if name is None else next(i for i, e in enumerate(target["inputs"]) if e["name"] == name)
        link_type = source["outputs"][slot]["type"]
        if link_type == "*":
            link_type = target["inputs"][index]["type"]
        link_id = len(links) + 1
        links.append([link_id, int(src), slot, int(dst), index, link_type])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][index]["link"] = link_id
        if target["type"] == "Reroute":
            target["inputs"][index]["type"] = link_type
    links.sort(key=lambda lk: lk[0])
    ui_nodes = [nodes[nid] for nid in ids] + reroutes + ([note_node] if note_node else [])
    return {
        "last_node_id": max((int(n["id"]) for n in ui_nodes), default=0),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _type_name(t: Any) -> str:
    return "COMBO" if isinstance(t, list) else str(t)


# --------------------------------------------------------------------------------------------
# Layout: stages left to right (inputs, inversion, edit, output), one titled group each, a Note
# saying what to set, no node over another, no link drawn under a node
# --------------------------------------------------------------------------------------------

STAGES = ("inputs", "inversion", "edit", "output")
STAGE_TITLES = {"inputs": "1 · Inputs", "inversion": "2 · Inversion", "edit": "3 · Edit", "output": "4 · Output"}
STAGE_COLORS = {"inputs": "#3f789e", "inversion": "#8A8", "edit": "#a1309b", "output": "#b58b2a"}
PACK_CATEGORY = "Exemplar Edit"
NOTE_TYPES = ("Note", "MarkdownNote")
WIRE_TYPES = ("Reroute",)
POST_TYPES = {"IMAGE", "MASK", "STRING", "FLOAT", "INT", "BOOLEAN"}  # wiring, not a step: may sit between the groups
NOTE_WIDTH = 420
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}
NOTE_MUST_MENTION = (("image",), ("checkpoint",), ("prompt", "word", "caption"), ("expect",))

# LiteGraph geometry as frontends 1.32 and 1.48 draw it (measured with node.getConnectionPos): the
# title bar is above ``pos``; slot k of the socket rows is centred 14 + 20k below ``pos``; widgets
# follow 6 px under the socket rows, 24 px apart; an output slot is 9 px inside the right edge.
TITLE_H = 30
SLOT_Y0, SLOT_H = 14, 20
WIDGET_Y0, WIDGET_H, MULTILINE_H = 6, 24, 100
INPUT_DX, OUTPUT_DX = 10, -9
BODY_PAD = 10
PREVIEW_H = {"LoadImage": 250, "SaveImage": 250, "PreviewImage": 250, "MaskPreview": 200, "PreviewAny": 100}
TITLE_CHAR_W, TITLE_PAD = 7, 40   # a long title widens the node (frontend 1.48: 505 px for 74 characters)

GROUP_TITLE_H = 50   # the group's title bar and the space under it
GROUP_PAD = 24
GROUP_GAP = 80       # between groups: room for the links from one stage to the next
COLUMN_GAP = 70
NODE_GAP = 36        # vertical space between nodes (title bars included)
LINK_CLEARANCE = 12  # a link passes at least this far from a node it does not connect
LINK_SAMPLES = 64
REROUTE_SIZE = (75, 26)  # the frontend's Reroute node: no title bar, both slots 14 px below its top
REROUTE_SLOT_DY = 14
LANE_H = 40              # between the lanes of the wire bus (a Reroute is 26 px high)
BAND_PAD = 30
BULGE = 0.09             # how far a link bulges sideways per unit of its length (0.072 from the
#                          control points at 1/4, plus the pull of its ends)


def _is_loader(class_type: str) -> bool:
    return "Load" in class_type


def assign_stages(api: Mapping, object_info: Mapping) -> dict[str, str]:
    """``{node_id: stage}``. ``_meta.stage`` in the API file wins; otherwise:

    - output nodes (``output_node``), and nodes downstream of the edit that only make images, masks,
      text or numbers for output-stage nodes (VAE Decode before Save Image, a score before its
      preview): ``output``;
    - nodes that make an INVERSION, and pack nodes that prepare the model they invert with: ``inversion``;
    - the pack's other nodes and everything downstream of them or of an inversion: ``edit``;
    - loaders and everything else upstream: ``inputs``; a source that is no loader (DisableNoise, a
      sampler choice) joins the earliest stage it feeds.
    """
    ids = list(api)
    parents = {n: {str(v[0]) for v in api[n].get("inputs", {}).values() if _is_link(v) and str(v[0]) in api}
               for n in ids}
    children: dict[str, set] = {n: set() for n in ids}
    for n, ps in parents.items():
        for p in ps:
            children[p].add(n)

    def closure(start: Iterable[str], step: Mapping[str, set]) -> set:
        seen, todo = set(), list(start)
        while todo:
            for m in step[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    info = {n: _info(object_info, api[n]["class_type"], f"node {n}") for n in ids}
    is_pack = {n: str(info[n].get("category") or "").startswith(PACK_CATEGORY) for n in ids}
    inverts = {n for n in ids if any("INVERSION" in str(t) for t in info[n].get("output") or [])}
    before_inversion = closure(inverts, parents)
    edits = {n for n in ids if is_pack[n] and n not in inverts and n not in before_inversion}
    processed = closure(inverts | edits, children)
    output = {n for n in ids if info[n].get("output_node")}
    post = {n for n in ids if all(str(t) in POST_TYPES for t in info[n].get("output") or [])}
    changed = True
    while changed:
        changed = False
        for n in ids:
            if n not in output and n in processed and n in post and children[n] and children[n] <= output:
                output.add(n)
                changed = True

    stage: dict[str, str] = {}
    for n in ids:
        explicit = (api[n].get("_meta") or {}).get("stage")
        if explicit is not None:
            if explicit not in STAGES:
                raise ConversionError(f"node {n}: _meta.stage {explicit!r} is not one of {list(STAGES)}")
            stage[n] = explicit
        elif n in output:
            stage[n] = "output"
        elif n in inverts or (is_pack[n] and n in before_inversion):
            stage[n] = "inversion"
        elif is_pack[n] or n in processed:
            stage[n] = "edit"
        elif not parents[n] and not _is_loader(api[n]["class_type"]) and children[n]:
            stage[n] = ""  # decided by what it feeds, below
        else:
            stage[n] = "inputs"
    rank = {s: i for i, s in enumerate(STAGES)}
    for n in ids:
        if stage[n] == "":
            fed = [stage[c] for c in children[n] if stage[c]]
            stage[n] = min(fed, key=rank.__getitem__) if fed else "inputs"
    for n in _topological(ids, parents):  # a link never runs right to left between stages
        later = [stage[p] for p in parents[n] if rank[stage[p]] > rank[stage[n]]]
        if later and (api[n].get("_meta") or {}).get("stage") is None:
            stage[n] = max(later, key=rank.__getitem__)
    return stage


def _topological(ids: list[str], parents: Mapping[str, set]) -> list[str]:
    out, seen = [], set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for p in sorted(parents[n], key=_node_key):
            visit(p)
        out.append(n)

    for n in ids:
        visit(n)
    return out


def _widget_rows(specs: list[InputSpec]) -> list[tuple[str, float]]:
    """``(input name, row height)`` for every widget of the node, in the frontend's order."""
    rows = []
    for s in specs:
        if s.widget:
            rows.append((s.name, MULTILINE_H if s.options.get("multiline") else WIDGET_H))
            rows += [("", WIDGET_H)] * (s.control + bool(s.upload))
    return rows


def _sockets(specs: list[InputSpec]) -> list[str]:
    return [s.name for s in specs if not s.widget]


def node_body_height(ui_node: Mapping, specs: list[InputSpec]) -> float:
    socket_rows = max(len(_sockets(specs)), len(ui_node.get("outputs") or []))
    height = socket_rows * SLOT_H + WIDGET_Y0 + sum(h for _, h in _widget_rows(specs)) + BODY_PAD
    return height + PREVIEW_H.get(ui_node["type"], 0)


def node_width(title: str) -> float:
    return max(NODE_WIDTH, TITLE_PAD + TITLE_CHAR_W * len(title))


def slot_offset(ui_node: Mapping, specs: list[InputSpec], name: str | None, output: int | None = None) -> tuple:
    """(dx, dy) of an input (by name) or output (by index) slot from the node's ``pos``."""
    width = ui_node["size"][0]
    if output is not None:
        return (width + OUTPUT_DX, SLOT_Y0 + SLOT_H * output)
    sockets = _sockets(specs)
    if name in sockets:
        return (INPUT_DX, SLOT_Y0 + SLOT_H * sockets.index(name))
    y = max(len(sockets), len(ui_node.get("outputs") or [])) * SLOT_H + WIDGET_Y0
    for widget, height in _widget_rows(specs):
        if widget == name:
            return (INPUT_DX, y + WIDGET_H / 2 - 2)
        y += height
    return (INPUT_DX, SLOT_Y0)


def _bezier(start: tuple, end: tuple, samples: int = LINK_SAMPLES) -> list[tuple[float, float]]:
    """The points of a link as LiteGraph draws it: a cubic from an output (leaving rightwards) to an
    input (entering from the left), control points a quarter of the distance out (at least 30 px)."""
    (x0, y0), (x1, y1) = start, end
    d = max(30.0, 0.25 * ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5)
    c0, c1 = (x0 + d, y0), (x1 - d, y1)
    out = []
    for i in range(samples + 1):
        t = i / samples
        a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        out.append((a * x0 + b * c0[0] + c * c1[0] + e * x1, a * y0 + b * c0[1] + c * c1[1] + e * y1))
    return out


def _inside(point: tuple, rect: tuple, margin: float = 0.0) -> bool:
    x, y, w, h = rect
    return x - margin < point[0] < x + w + margin and y - margin < point[1] < y + h + margin


def _note_node(note: str, node_id: int) -> dict:
    lines = sum(max(1, -(-len(par) // 52)) for par in note.split("\n"))
    return {"id": node_id, "type": "Note", "pos": [0, 0], "size": [NOTE_WIDTH, 40 + 17 * lines], "flags": {},
            "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": "Start here",
            "properties": {"text": ""}, "widgets_values": [note], **NOTE_COLORS}


def _columns(api: Mapping, ids: list[str], stage: Mapping[str, str], parents: Mapping[str, list],
             children: Mapping[str, list]) -> list[tuple[str, list[str]]]:
    """Columns, stage by stage. Inside a stage a node goes one column right of its latest same-stage
    input; then every node but a loader moves right up to the column before its first same-stage
    consumer, so prompts and encoders sit next to what reads them."""
    order = _topological(ids, {n: {p for p, _, _ in parents[n]} for n in ids})
    asap: dict[str, int] = {}
    for n in order:
        asap[n] = 1 + max((asap[p] for p, _, _ in parents[n] if stage[p] == stage[n]), default=-1)
    depth = {s: max((asap[n] for n in ids if stage[n] == s), default=0) for s in STAGES}
    first = {}
    index = 0
    for s in STAGES:
        first[s] = index
        index += depth[s] + 1
    col = dict(asap)
    for n in reversed(order):
        if _is_loader(api[n]["class_type"]):
            continue
        later = [col[c] for c in children[n] if stage[c] == stage[n]]
        latest = min(later) - 1 if later else depth[stage[n]]

        def far_links(c, n=n):  # links that would have to cross a column, counted on the global grid
            here = first[stage[n]] + c
            return (sum(here - (first[stage[p]] + col[p]) >= 2 for p, _, _ in parents[n])
                    + sum((first[stage[k]] + col[k]) - here >= 2 for k in children[n]))
        col[n] = min(range(asap[n], max(asap[n], latest) + 1), key=lambda c: (far_links(c), -c))
    columns = []
    for s in STAGES:
        for d in range(depth[s] + 1):
            members = sorted((n for n in ids if stage[n] == s and col[n] == d), key=_node_key)
            if members or (d == 0 and s == "inputs"):
                columns.append((s, members))
    return columns


def _layout(api: Mapping, ids: list[str], nodes: dict[str, dict], specs_of: dict[str, list[InputSpec]],
            object_info: Mapping, note: str | None) -> tuple[list[dict], dict | None, list[dict], list[list]]:
    """Positions and sizes every node. Returns the stage groups, the Note node (or None), and the
    Reroute nodes and links of the wire bus.

    A link between neighbouring columns runs in the gap between them. A link that would cross a
    column runs along the wire bus instead: a Reroute in the gap after its source lifts it to its
    own lane in a band above the nodes, the lane runs straight to a Reroute in the gap before each
    column that reads it, and from there it drops into its targets. Gaps are made wide enough that
    no curve swings into a node (LiteGraph draws a link as a cubic whose control points sit a quarter
    of its length out, so a steep link bulges sideways by about 7 % of its length)."""
    stage = assign_stages(api, object_info)
    parents = {n: [(str(v[0]), v[1], name) for name, v in api[n].get("inputs", {}).items()
                   if _is_link(v) and str(v[0]) in api] for n in ids}
    children: dict[str, list[str]] = {n: [] for n in ids}
    for n in ids:
        for p, _, _ in parents[n]:
            children[p].append(n)
    for n in ids:
        title = nodes[n].get("title") or object_info[api[n]["class_type"]].get("display_name") or api[n]["class_type"]
        nodes[n]["size"] = [node_width(str(title)), node_body_height(nodes[n], specs_of[n])]

    columns = _columns(api, ids, stage, parents, children)
    column_of = {n: i for i, (_, members) in enumerate(columns) for n in members}
    links = [(p, slot, n, name) for n in ids for p, slot, name in parents[n]]

    # order inside a column: the mean row of the neighbours in the next column to the left (then right)
    for _ in range(3):
        for look_left in (True, False):
            for ci in (range(1, len(columns)) if look_left else reversed(range(1, len(columns)))):
                # the first column keeps the author's order (the API file's node ids: checkpoint first)
                row = {n: i for _, members in columns for i, n in enumerate(members)}

                def key(n, ci=ci, row=row, look_left=look_left):
                    near = [row[p] for p, _, _ in parents[n] if column_of[p] == ci - 1] if look_left else \
                           [row[c] for c in children[n] if column_of[c] == ci + 1]
                    return (sum(near) / len(near) if near else row[n], row[n])
                columns[ci][1].sort(key=key)

    # the wire bus: one lane per output that feeds a column beyond the next
    row = {n: i for _, members in columns for i, n in enumerate(members)}
    ports: dict[tuple[str, int], dict[int, list]] = {}
    for p, slot, n, name in links:
        if column_of[n] - column_of[p] >= 2:
            ports.setdefault((p, slot), {}).setdefault(column_of[n], []).append((n, name))
    lanes = sorted(ports, key=lambda port: (column_of[port[0]], row[port[0]], port[1]))

    content_top = GROUP_TITLE_H
    lane_y = {port: content_top + REROUTE_SIZE[1] / 2 + 8 + i * LANE_H for i, port in enumerate(lanes)}
    band_bottom = (max(lane_y.values()) + REROUTE_SIZE[1] / 2 + BAND_PAD) if lanes else content_top

    note_node = None
    if note is not None:
        note_node = _note_node(note, max(int(n) for n in ids) + 1 if ids else 1)
    # y: each column a stack from the top (the first column) or from under the bus
    for ci, (_, members) in enumerate(columns):
        cursor = content_top if ci == 0 else band_bottom
        if ci == 0 and note_node is not None:
            note_node["pos"] = [0, cursor + TITLE_H]
            cursor += TITLE_H + note_node["size"][1] + NODE_GAP
        for n in members:
            nodes[n]["pos"] = [0, cursor + TITLE_H]
            cursor += TITLE_H + nodes[n]["size"][1] + NODE_GAP

    def out_y(p, slot):
        return nodes[p]["pos"][1] + slot_offset(nodes[p], specs_of[p], None, slot)[1]

    def in_y(n, name):
        return nodes[n]["pos"][1] + slot_offset(nodes[n], specs_of[n], name)[1]

    # x: every gap wide enough for its Reroutes and for the sideways bulge of the links in it. In a
    # gap the Reroutes that start lanes stand left (the top lane leftmost), those that end lanes
    # right (the top lane rightmost), so no link rising to or dropping from a lane meets another Reroute.
    def bulge(dy: float, dx: float = 150.0) -> float:
        return BULGE * (dy * dy + dx * dx) ** 0.5

    starts: dict[int, list] = {ci: [] for ci in range(len(columns))}  # gap after column ci
    ends: dict[int, list] = {ci: [] for ci in range(len(columns))}
    gap_need = [0.0] * len(columns)
    rise = [0.0] * len(columns)
    fall = [0.0] * len(columns)
    for p, slot, n, name in links:
        if column_of[n] - column_of[p] == 1:
            ci = column_of[p]
            gap_need[ci] = max(gap_need[ci], 2 * LINK_CLEARANCE + 20 + bulge(in_y(n, name) - out_y(p, slot)))
    for port in lanes:
        p, slot = port
        starts[column_of[p]].append(port)
        rise[column_of[p]] = max(rise[column_of[p]], bulge(lane_y[port] - out_y(p, slot)))
        for tc, targets in ports[port].items():
            ends[tc - 1].append(port)
            fall[tc - 1] = max(fall[tc - 1], max(bulge(in_y(n, name) - lane_y[port]) for n, name in targets))
    # slots: a Reroute moves one step further into the gap only when a link rising to (or dropping
    # from) another lane of the gap would pass under it. Positions relative to the gap's left edge
    # (lane starts) or right edge (lane ends).
    step = REROUTE_SIZE[0] + 10
    start_x: dict[tuple, float] = {}
    end_x: dict[tuple, float] = {}

    def clashes(curves: list, rect: tuple) -> bool:
        return any(_inside(pt, rect, LINK_CLEARANCE) for curve in curves for pt in curve)

    for ci in range(len(columns)):
        placed_rects, placed_curves = [], []
        for port in sorted(starts[ci], key=lane_y.get):
            p, slot = port
            k = 0
            while True:
                x = LINK_CLEARANCE + rise[ci] - INPUT_DX + step * k
                rect = (x, lane_y[port] - REROUTE_SLOT_DY, *REROUTE_SIZE)
                curve = _bezier((OUTPUT_DX, out_y(p, slot)), (x + INPUT_DX, lane_y[port]))
                if not clashes(placed_curves, rect) and not any(clashes([curve], r) for r in placed_rects):
                    break
                k += 1
            start_x[port] = x
            placed_rects.append(rect)
            placed_curves.append(curve)
        placed_rects, placed_curves = [], []
        for port in sorted(ends[ci], key=lane_y.get):
            targets = ports[port][ci + 1]
            k = 0
            while True:
                x = -(LINK_CLEARANCE + fall[ci] + REROUTE_SIZE[0] + OUTPUT_DX) - step * k
                rect = (x, lane_y[port] - REROUTE_SLOT_DY, *REROUTE_SIZE)
                curves = [_bezier((x + REROUTE_SIZE[0] + OUTPUT_DX, lane_y[port]), (INPUT_DX, in_y(n, name)))
                          for n, name in targets]
                if not clashes(placed_curves, rect) and not any(clashes(curves, r) for r in placed_rects):
                    break
                k += 1
            end_x[(port, ci + 1)] = x
            placed_rects.append(rect)
            placed_curves += curves
        zone_in = max([start_x[pt] + REROUTE_SIZE[0] for pt in starts[ci]], default=0)
        zone_out = max([-end_x[(pt, ci + 1)] for pt in ends[ci]], default=0)
        gap_need[ci] = max(gap_need[ci], zone_in + zone_out + (20 if zone_in and zone_out else 0))

    column_width = [max([nodes[n]["size"][0] for n in members] + ([NOTE_WIDTH] if note_node and ci == 0 else [0]))
                    for ci, (_, members) in enumerate(columns)]
    x = 0.0
    column_x: list[float] = []
    group_span: dict[str, list[float]] = {}
    for ci, (s, members) in enumerate(columns):
        if ci == 0 or columns[ci - 1][0] != s:
            if ci:
                x += max(GROUP_GAP, gap_need[ci - 1] - 2 * GROUP_PAD)
            x += GROUP_PAD
            group_span[s] = [x - GROUP_PAD, 0]
        else:
            x += max(COLUMN_GAP, gap_need[ci - 1])
        column_x.append(x)
        for n in members:  # one width per column: outputs line up on its right edge
            nodes[n]["pos"][0] = x
            nodes[n]["size"][0] = column_width[ci]
        x += column_width[ci]
        group_span[s][1] = x + GROUP_PAD
    if note_node is not None:
        note_node["pos"][0] = column_x[0]
        note_node["size"][0] = column_width[0]
    column_right = [column_x[ci] + column_width[ci] for ci in range(len(columns))]

    next_id = max([int(n) for n in ids] + ([note_node["id"]] if note_node else [0])) + 1
    reroutes: list[dict] = []
    bus_links: list[list] = []  # [source id, source slot, target id, target input name or None]
    reroute_at: dict[tuple, dict] = {}
    for ci in range(len(columns)):
        for port in starts[ci]:
            reroute_at[(port, "start")] = _reroute(0, column_right[ci] + start_x[port],
                                                   lane_y[port] - REROUTE_SLOT_DY, "*")
        for port in ends[ci]:
            reroute_at[(port, ci + 1)] = _reroute(0, column_x[ci + 1] + end_x[(port, ci + 1)],
                                                  lane_y[port] - REROUTE_SLOT_DY, "*")
    for port in lanes:
        p, slot = port
        io_type = nodes[p]["outputs"][slot]["type"]
        chain = [reroute_at[(port, "start")]] + [reroute_at[(port, tc)] for tc in sorted(ports[port])]
        for r in chain:
            r["id"] = next_id
            r["outputs"][0]["type"] = io_type
            next_id += 1
            reroutes.append(r)
        bus_links.append([p, slot, chain[0]["id"], None])
        for a_, b_ in zip(chain, chain[1:]):
            bus_links.append([a_["id"], 0, b_["id"], None])
        for r, tc in zip(chain[1:], sorted(ports[port])):
            for n, name in ports[port][tc]:
                bus_links.append([r["id"], 0, n, name])

    bottom = max([nodes[n]["pos"][1] + nodes[n]["size"][1] for n in ids]
                 + ([note_node["pos"][1] + note_node["size"][1]] if note_node else [])) + GROUP_PAD
    groups = [{"id": i + 1, "title": STAGE_TITLES[s], "bounding": [group_span[s][0], 0,
                                                                    group_span[s][1] - group_span[s][0], bottom],
               "color": STAGE_COLORS[s], "font_size": 24, "flags": {}}
              for i, s in enumerate(st for st in STAGES if st in group_span)]
    for item in [nodes[n] for n in ids] + reroutes + ([note_node] if note_node else []):
        item["pos"] = [round(v) for v in item["pos"]]
        item["size"] = [round(v) for v in item["size"]]
    for g in groups:
        g["bounding"] = [round(v) for v in g["bounding"]]
    return groups, note_node, reroutes, bus_links


def _reroute(node_id: int, x: float, y: float, io_type: str) -> dict:
    return {"id": node_id, "type": "Reroute", "pos": [x, y], "size": list(REROUTE_SIZE), "flags": {}, "order": 0,
            "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
            "outputs": [{"name": "", "type": io_type, "links": [], "slot_index": 0}],
            "properties": {"showOutputText": False, "horizontal": False}}


# --------------------------------------------------------------------------------------------
# Checks of a layout (the shipped files here, the frontend's own geometry in the browser test)
# --------------------------------------------------------------------------------------------

def ui_geometry(ui: Mapping, object_info: Mapping) -> dict:
    """Node rectangles (title bar included), link end points and group rectangles of a UI workflow,
    from its saved positions and sizes and the slot geometry above. The browser test builds the
    same structure from the frontend's live graph."""
    nodes = {int(n["id"]): n for n in ui.get("nodes", [])}
    specs = {nid: (input_specs(_info(object_info, n["type"], f"node {nid}")) if n["type"] not in UI_ONLY_TYPES
                   else []) for nid, n in nodes.items()}
    geometry = {"nodes": {}, "links": [], "groups": []}
    for nid, n in nodes.items():
        x, y = n["pos"]
        w, h = n["size"]
        title_h = 0 if n["type"] in WIRE_TYPES else TITLE_H
        geometry["nodes"][nid] = {"type": n["type"], "title": n.get("title") or n["type"],
                                  "rect": [x, y - title_h, w, h + title_h],
                                  "text": (n.get("widgets_values") or [""])[0] if n["type"] in NOTE_TYPES else None}
    for link in ui.get("links", []) or []:
        link_id, src, slot, dst, dst_slot = (int(v) for v in link[:5])
        target = nodes[dst]
        name = (target.get("inputs") or [])[dst_slot]["name"]
        sx, sy = slot_offset(nodes[src], specs[src], None, slot)
        ex, ey = slot_offset(target, specs[dst], name)
        geometry["links"].append({"id": link_id, "from": src, "to": dst,
                                  "start": [nodes[src]["pos"][0] + sx, nodes[src]["pos"][1] + sy],
                                  "end": [target["pos"][0] + ex, target["pos"][1] + ey]})
    for g in ui.get("groups", []) or []:
        geometry["groups"].append({"title": g.get("title", ""), "rect": list(g["bounding"])})
    return geometry


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _contains(outer, inner) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def layout_problems(geometry: Mapping, *, check_note: bool = True) -> list[str]:
    """What keeps a person from reading the graph in one look: stages not in titled groups left to
    right, nodes over each other or outside their group, links drawn under a node, links running
    right to left, and a missing or incomplete Note."""
    problems = []
    nodes, links, groups = geometry["nodes"], geometry["links"], geometry["groups"]

    def name(nid):
        return f"node {nid} ({nodes[nid]['title']})"

    ids = sorted(nodes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if _overlap(nodes[a]["rect"], nodes[b]["rect"]):
                problems.append(f"{name(a)} overlaps {name(b)}")
    titles = [g["title"] for g in sorted(groups, key=lambda g: g["rect"][0])]
    expected = [STAGE_TITLES[s] for s in STAGES if STAGE_TITLES[s] in titles]
    if titles != expected or not titles:
        problems.append(f"the groups are not the stages left to right: {titles} (expected an ordered subset of "
                        f"{[STAGE_TITLES[s] for s in STAGES]})")
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            if _overlap(g["rect"], h["rect"]):
                problems.append(f"group {g['title']!r} overlaps group {h['title']!r}")
    for nid in ids:
        if nodes[nid]["type"] in WIRE_TYPES:
            continue
        owners = [g["title"] for g in groups if _contains(g["rect"], nodes[nid]["rect"])]
        if len(owners) != 1:
            problems.append(f"{name(nid)} is in {len(owners)} groups (it should be inside one stage group)")
    for link in links:
        if link["end"][0] <= link["start"][0]:
            problems.append(f"link {link['id']} from {name(link['from'])} to {name(link['to'])} runs right to left")
        curve = _bezier(tuple(link["start"]), tuple(link["end"]))
        for nid in ids:
            if nid in (link["from"], link["to"]):
                continue
            if any(_inside(pt, nodes[nid]["rect"]) for pt in curve):
                problems.append(f"link {link['id']} from {name(link['from'])} to {name(link['to'])} "
                                f"runs under {name(nid)}")
    if check_note:
        notes = [nid for nid in ids if nodes[nid]["type"] in NOTE_TYPES]
        if len(notes) != 1:
            problems.append(f"{len(notes)} Note nodes (one says what to set and what to expect)")
        for nid in notes:
            text = str(nodes[nid].get("text") or "").lower()
            for words in NOTE_MUST_MENTION:
                if not any(w in text for w in words):
                    problems.append(f"the Note does not mention {' or '.join(repr(w) for w in words)}")
    return problems


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


def note_text(ui: Mapping) -> str | None:
    """The text of the workflow's Note node (None without one)."""
    for node in ui.get("nodes", []):
        if node.get("type") in NOTE_TYPES:
            return str((node.get("widgets_values") or [""])[0]).strip()
    return None


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


def write_atomic(path: Path, content: str | bytes) -> None:
    """Writes ``content`` (text as UTF-8) to ``path`` through a temporary file in the same folder and
    one rename, so a reader never sees half a file: the one writer of the generated files in tools/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
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
        note_path = api_path.with_suffix(".md")
        if not note_path.is_file():
            print(f"{note_path} is missing: write what to set (images, checkpoint, words) and what to expect; "
                  f"it becomes the workflow's Note", file=sys.stderr)
            status = 1
            continue
        ui = api_to_ui(api, object_info, note_path.read_text(encoding="utf-8").strip())
        problems = layout_problems(ui_geometry(ui, object_info))
        if problems:
            print(f"{api_path.name}: the layout is not readable: " + "; ".join(problems), file=sys.stderr)
            status = 1
            continue
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
                drift += layout_problems(ui_geometry(existing, object_info))
                if note_text(existing) != note_path.read_text(encoding="utf-8").strip():
                    drift.append(f"its Note differs from {note_path.name}")
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
