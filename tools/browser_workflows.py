#!/usr/bin/env python3
"""Drive ComfyUI's own browser frontend (headless Debian Chromium through Playwright) as a user does.

    python tools/browser_workflows.py [--url http://127.0.0.1:8188] [--workflow NAME ...]
                                      [--screenshots docs/screenshots]

For each pack workflow (``workflows/*.json``, which ComfyUI serves as this pack's workflow
templates) it opens the template from the frontend's menu (logo menu > Browse Templates >
Extensions > exemplar_edit > the workflow's card), checks that every node type is known, no
"missing nodes" dialog appeared and the layout reads in one look with the frontend's own node
sizes and slot positions (``workflow_ui.layout_problems``), saves a screenshot of the graph as
drawn and the template thumbnail ``workflows/<name>.jpg`` made from it, retargets the loaded
graph's widgets to the test checkpoint (``tools/demo.py`` ``retarget()``: 64 px, <= 4 steps, a
generated picture uploaded for each LoadImage), presses Run, and waits until the output node
shows the image. Without ``--url`` it starts the server itself (``tools/serve.py``).

The pytest twin is ``tests/browser/test_browser_workflows.py``; ``make test-browser`` runs it and
regenerates ``docs/screenshots/<workflow>.png``.

Needs (``bash tools/setup.sh --browser`` installs them): ``tools/requirements-browser.txt`` in
the project venv (the frontend package the pinned host expects, and Playwright, used only as a
driver: no browser download) and Debian's ``chromium`` (``$CHROMIUM`` overrides the path).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import demo  # noqa: E402
import run_workflow  # noqa: E402
import serve  # noqa: E402
import workflow_ui  # noqa: E402

REPO = TOOLS.parent
UI_WORKFLOWS = REPO / "workflows"
SCREENSHOTS = REPO / "docs" / "screenshots"
TEST_CHECKPOINT = "test_sd15.safetensors"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Settings a returning user would have: no first-run template dialog (the test opens it from the
# menu), no minimap or canvas statistics over the graph in the screenshots.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    # draw node text at every zoom (a wide graph is screenshot below the default level-of-detail zoom)
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
}
SCREENSHOT_SCALE = 0.8      # canvas zoom for screenshots: node text stays readable
MAX_SCREENSHOT_WIDTH = 3200  # a wider graph is drawn smaller
UI_TIMEOUT_MS = 60_000

__all__ = ["missing_prerequisites", "chromium_path", "workflow_names", "Frontend", "BrowserError",
           "retarget_changes", "prepare_server", "browser"]


class BrowserError(AssertionError):
    """What the user would have seen go wrong in the browser."""


# --------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------

def chromium_path() -> str:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or DEFAULT_CHROMIUM


def missing_prerequisites() -> list[str]:
    """What is not installed for the browser test, each with the command that installs it."""
    missing = []
    fix = "run `bash tools/setup.sh --browser` (or `make test-browser`)"
    if importlib.util.find_spec("playwright") is None:
        missing.append(f"the Python package playwright is not installed: {fix}")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        missing.append(f"the ComfyUI frontend (comfyui-frontend-package) is not installed: {fix}")
    chromium = chromium_path()
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        missing.append(f"no Chromium at {chromium}: {fix} (apt-get install chromium), or set $CHROMIUM")
    return missing


def workflow_names() -> list[str]:
    return [p.stem for p in sorted(UI_WORKFLOWS.glob("*.json"))]


# --------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------

def prepare_server(url: str) -> None:
    """Checks that ``url`` serves the real frontend (not the API-only placeholder page) and stores
    the frontend settings in the server's user settings, as the settings dialog would."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/", timeout=30) as r:
        index = r.read().decode("utf-8", "replace")
    if "<script" not in index:
        raise BrowserError(f"{url} serves the placeholder page, not ComfyUI's frontend: install "
                           f"tools/requirements-browser.txt into the server's Python (bash tools/setup.sh --browser)")
    request = urllib.request.Request(url + "/settings", data=json.dumps(FRONTEND_SETTINGS).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with opener.open(request, timeout=30) as r:
        if r.status != 200:
            raise BrowserError(f"POST {url}/settings answered HTTP {r.status}")


_FLUX_MODEL: list[str] = []


def model_for(prompt: Mapping, ckpt: str = TEST_CHECKPOINT) -> str:
    """The test model a workflow is retargeted to: ``ckpt`` (SD), or for a FLUX workflow the FLUX test
    model the server's host loads (``demo.flux_test_model``, asked once)."""
    if not demo.is_flux_workflow(prompt):
        return ckpt
    if not _FLUX_MODEL:
        _FLUX_MODEL.append(demo.flux_test_model())
    return _FLUX_MODEL[0]


def retarget_replacements(prompt: Mapping, ckpt: str = TEST_CHECKPOINT) -> dict[str, dict]:
    """``{node_id: {"type": class, "widgets": {input: value}}}``: the nodes ``demo.retarget`` replaces by
    another node type (a FLUX workflow's DualCLIPLoader becomes CLIPLoader of the test CLIP-L), with
    the new node's widget values. In the browser the node is swapped, its output links kept."""
    target = demo.retarget(prompt, ckpt)
    return {str(node_id): {"type": node["class_type"],
                           "widgets": {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}}
            for node_id, node in target.items() if node.get("class_type") != prompt[node_id].get("class_type")}


def retarget_changes(prompt: Mapping, ckpt: str = TEST_CHECKPOINT) -> dict[str, dict]:
    """``{node_id: {input: value}}``: the widget values that ``demo.retarget`` changes in an API
    prompt (the one the frontend built from the loaded graph); nodes it replaces are left out
    (``retarget_replacements``)."""
    target = demo.retarget(prompt, ckpt)
    changes: dict[str, dict] = {}
    for node_id, node in target.items():
        if node.get("class_type") != prompt[node_id].get("class_type"):
            continue
        before = prompt[node_id].get("inputs", {})
        for name, value in node.get("inputs", {}).items():
            if not isinstance(value, list) and before.get(name) != value:
                changes.setdefault(str(node_id), {})[name] = value
    return changes


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def browser() -> Iterator:
    """Headless Debian Chromium under Playwright (a fresh, empty profile)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
                                    timeout=UI_TIMEOUT_MS)
        try:
            yield chrome
        finally:
            chrome.close()


_JS_NODES = """() => {
  const out = [];
  const walk = (graph) => {
    for (const n of graph.nodes ?? graph._nodes ?? []) {
      const isSubgraph = typeof n.isSubgraphNode === 'function' && n.isSubgraphNode();
      out.push({id: String(n.id), type: n.type, title: n.title,
                registered: isSubgraph || !!LiteGraph.registered_node_types[n.type],
                has_errors: !!n.has_errors});
      if (isSubgraph && n.subgraph) walk(n.subgraph);
    }
  };
  walk(app.rootGraph ?? app.graph);
  return out;
}"""

_JS_SET_WIDGETS = """(changes) => {
  const problems = [];
  for (const [id, values] of Object.entries(changes)) {
    const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
    if (!node) { problems.push(`no node ${id}`); continue; }
    for (const [name, value] of Object.entries(values)) {
      const widget = (node.widgets ?? []).find(w => w.name === name);
      if (!widget) { problems.push(`node ${id} (${node.type}) has no widget ${name}`); continue; }
      widget.value = value;
      widget.callback?.(value, app.canvas, node);
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return problems;
}"""

_JS_REPLACE_NODES = """(replacements) => {
  // a node swapped for another type, as a user deletes it and adds the other: same place, the new
  // node's widgets set, every output link re-made from the new node's output of the same index
  const problems = [], made = {};
  const graph = app.graph;
  const linkOf = (id) => (graph.links?.get ? graph.links.get(id) : graph.links?.[id]);
  for (const [id, spec] of Object.entries(replacements)) {
    const old = graph.getNodeById(Number(id)) ?? graph.getNodeById(id);
    if (!old) { problems.push(`no node ${id}`); continue; }
    const node = LiteGraph.createNode(spec.type);
    if (!node) { problems.push(`no node type ${spec.type}`); continue; }
    node.pos = [old.pos[0], old.pos[1]];
    graph.add(node);
    for (const [name, value] of Object.entries(spec.widgets)) {
      const widget = (node.widgets ?? []).find(w => w.name === name);
      if (!widget) { problems.push(`${spec.type} has no widget ${name}`); continue; }
      widget.value = value;
      widget.callback?.(value, app.canvas, node);
    }
    const targets = [];
    (old.outputs ?? []).forEach((output, slot) => {
      for (const linkId of output.links ?? []) {
        const link = linkOf(linkId);
        if (link) targets.push([slot, graph.getNodeById(link.target_id), link.target_slot]);
      }
    });
    graph.remove(old);
    for (const [slot, target, targetSlot] of targets) node.connect(slot, target, targetSlot);
    made[id] = String(node.id);
  }
  app.graph.setDirtyCanvas(true, true);
  return {problems, made};
}"""

_JS_FRAME = """([scale, left, top]) => {
  const T = LiteGraph.NODE_TITLE_HEIGHT;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - T);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  for (const g of app.graph.groups ?? []) {
    const [gx, gy, gw, gh] = g._bounding ?? g.bounding;
    x0 = Math.min(x0, gx); y0 = Math.min(y0, gy); x1 = Math.max(x1, gx + gw); y1 = Math.max(y1, gy + gh);
  }
  if (scale > 0) {
    const rect = app.canvas.canvas.getBoundingClientRect();
    const ds = app.canvas.ds;
    ds.scale = scale;
    ds.offset[0] = (left - rect.left) / scale - x0;
    ds.offset[1] = (top - rect.top) / scale - y0;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
  }
  return [x0, y0, x1 - x0, y1 - y0];
}"""

_JS_GEOMETRY = """() => {
  const g = app.graph, T = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = {}, links = [], groups = [];
  for (const n of g.nodes) {
    const title = (n.constructor.title_mode === LiteGraph.NO_TITLE || n.title_mode === LiteGraph.NO_TITLE) ? 0 : T;
    const w = (n.widgets ?? []).find(w => w.name === 'text' || w.type === 'customtext');
    nodes[n.id] = {type: n.type, title: n.title ?? n.type,
                   rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
                   text: ['Note', 'MarkdownNote'].includes(n.type)
                     ? String(w?.value ?? n.widgets_values?.[0] ?? '') : null};
  }
  const all = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
  for (const l of all) {
    if (!l) continue;
    const a = g.getNodeById(l.origin_id), b = g.getNodeById(l.target_id);
    if (!a || !b) continue;
    links.push({id: l.id, from: a.id, to: b.id, start: [...a.getConnectionPos(false, l.origin_slot)],
                end: [...b.getConnectionPos(true, l.target_slot)]});
  }
  for (const gr of g.groups ?? []) groups.push({title: gr.title, rect: [...(gr._bounding ?? gr.bounding)]});
  return {nodes, links, groups};
}"""

_JS_OUTPUT_SHOWN = """(ids) => ids.every(id => {
  const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
  const imgs = node?.imgs ?? [];
  return imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
})"""


class Frontend:
    """One browser tab on ComfyUI's frontend."""

    def __init__(self, chrome, url: str, viewport: tuple[int, int] = (1400, 900)):
        self.url = url
        self.page = chrome.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.page.set_default_timeout(UI_TIMEOUT_MS)
        self.console_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                     and self.console_errors.append(m.text))
        self.responses: list[tuple[int, str]] = []
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))
        self.page.on("response", lambda r: r.status >= 400 and self.failed_requests.append(f"HTTP {r.status} {r.url}"))
        self.page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.failure} {r.url}"))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.goto(url + "/")
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph "
                                    "&& document.querySelector('.comfyui-logo')", timeout=120_000)
        self.close_dialogs()

    def close(self) -> None:
        self.page.close()

    # --- dialogs ----------------------------------------------------------------------------

    def dialogs(self) -> list[str]:
        """The text of every open dialog."""
        return [d.inner_text().strip() for d in self.page.get_by_role("dialog").all() if d.is_visible()]

    def error_toasts(self) -> list[str]:
        """The text of every error notification on screen (e.g. a workflow that failed to load)."""
        return [t.inner_text().strip() for t in self.page.locator(".p-toast-message-error").all() if t.is_visible()]

    def close_dialogs(self) -> None:
        for _ in range(5):
            if not self.page.get_by_role("dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    # --- opening a template ------------------------------------------------------------------

    def open_template_browser(self, module: str = serve.PACK_DIR_NAME):
        """Logo menu > Browse Templates > Extensions: ``module``. Returns the dialog."""
        page = self.page
        page.locator(".comfyui-logo").first.click()
        page.get_by_role("menuitem", name="Browse Templates").click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        section = dialog.get_by_text(module, exact=True)
        try:
            section.first.wait_for(timeout=30_000)  # the dialog shows placeholders while it loads the lists
        except Exception:
            raise BrowserError(f"the template browser has no '{module}' entry under Extensions; it shows: "
                               f"{dialog.inner_text()[:500]!r}") from None
        section.first.click()
        return dialog

    def template_thumbnails(self, names: list[str], module: str = serve.PACK_DIR_NAME,
                            timeout_s: float = 30.0) -> dict[str, dict]:
        """``{name: {requested, status, width, height}}``: the thumbnail each card of the open template
        browser asked the server for (``/api/workflow_templates/<module>/<name>.<ext>``) and the size of
        the picture the card shows (0 when it shows none)."""
        page = self.page
        deadline = time.monotonic() + timeout_s
        found: dict[str, dict] = {}
        while time.monotonic() < deadline:
            found = {}
            for name in names:
                hits = [r for r in self.responses if f"/workflow_templates/{module}/{name}." in r[1]
                        and not r[1].endswith(".json")]
                found[name] = {"requested": hits[-1][1] if hits else None, "status": hits[-1][0] if hits else None}
            shown = page.evaluate("""(names) => {
                // a card: the smallest ancestor of the picture whose text has exactly one template name on a line
                const out = {};
                for (const img of document.querySelectorAll('[role=dialog] img')) {
                  for (let el = img.parentElement; el && el.getAttribute('role') !== 'dialog'; el = el.parentElement) {
                    const lines = (el.innerText ?? '').split('\\n').map(l => l.trim());
                    const hits = names.filter(n => lines.includes(n));
                    if (hits.length > 1) break;
                    if (hits.length === 1) {
                      if (img.complete && img.naturalWidth > 0) out[hits[0]] = [img.naturalWidth, img.naturalHeight];
                      break;
                    }
                  }
                }
                return out;
            }""", names)
            for name in names:
                found[name]["width"], found[name]["height"] = shown.get(name, (0, 0))
            if all(v["status"] == 200 and v["width"] > 0 for v in found.values()):
                break
            page.wait_for_timeout(300)
        return found

    def open_template(self, name: str, module: str = serve.PACK_DIR_NAME) -> None:
        """Logo menu > Browse Templates > Extensions: ``module`` > the card titled ``name``."""
        page = self.page
        dialog = self.open_template_browser(module)
        card = dialog.get_by_text(name, exact=True)
        try:
            card.first.wait_for(timeout=15_000)
        except Exception:
            raise BrowserError(f"the template browser lists no '{name}' under {module}; it shows: "
                               f"{dialog.inner_text()[:500]!r}") from None
        card.first.click()
        dialog.wait_for(state="detached")
        page.wait_for_function("(name) => (app.extensionManager?.workflow?.activeWorkflow?.filename ?? name) "
                               "=== name && app.graph.nodes.length > 0", arg=name)
        page.wait_for_timeout(800)  # a missing-nodes dialog opens right after the graph is set

    def load_graph(self, workflow: Mapping) -> None:
        """``app.loadGraphData``: the frontend's own loader (as dropping a file on the canvas)."""
        self.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", dict(workflow))
        self.page.wait_for_timeout(800)

    # --- what the user sees ------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        return self.page.evaluate(_JS_NODES)

    def error_panel(self, section: str = "") -> str:
        """Frontends from about 1.4x report a graph's problems (missing node types, a prompt the server
        refused) in an error overlay ("N errors found") instead of a dialog: the text of its details
        panel from ``section`` on, or "" when no overlay is shown (older frontends)."""
        overlay = self.page.locator('[data-testid="error-overlay"]')
        if not overlay.count() or not overlay.first.is_visible():
            return ""
        overlay.first.get_by_role("button", name="View details").click()
        self.page.wait_for_timeout(800)
        text = self.page.evaluate("() => document.body.innerText")
        start = text.find(section) if section else 0
        return " ".join(text[start:].split())[:4000] if start >= 0 else ""

    def graph_problems(self) -> list[str]:
        """Missing node types and open dialogs (the frontend's missing-nodes warning is one; newer
        frontends show it in their error panel, read only when a node type is missing)."""
        unknown = [n for n in self.nodes() if not n["registered"]]
        problems = [f"node {n['id']} has type {n['type']!r}, which this ComfyUI does not know" for n in unknown]
        if unknown and not self.dialogs():
            panel = self.error_panel("Missing Node Packs")
            if panel:
                problems.append(f"error panel: {panel[:400]}")
        problems += [f"dialog open: {' '.join(text.split())[:400]}" for text in self.dialogs()]
        problems += [f"error message: {' '.join(text.split())[:400]}" for text in self.error_toasts()]
        return problems

    def geometry(self) -> dict:
        """Node rectangles, link end points and groups as the frontend holds them after loading (sizes
        it grew, its own slot positions): the structure ``workflow_ui.layout_problems`` checks."""
        geometry = self.page.evaluate(_JS_GEOMETRY)
        geometry["nodes"] = {int(k): v for k, v in geometry["nodes"].items()}
        for link in geometry["links"]:
            link["from"], link["to"] = int(link["from"]), int(link["to"])
        return geometry

    def node_help(self, node_type: str, timeout_s: float = 30.0) -> str:
        """Selects the first node of ``node_type`` on the canvas and presses the selection toolbox's
        info button, as a user does; returns the text of the node help panel that opens (frontend 1.32:
        the node library's help page; 1.48: the properties panel's Info tab) once it has loaded."""
        page = self.page
        found = page.evaluate("""(type) => {
            const n = app.graph.nodes.find(n => n.type === type);
            if (!n) return false;
            app.canvas.deselectAll?.();
            app.canvas.selectNode(n);
            app.canvas.setDirty(true, true);
            return true;
        }""", node_type)
        if not found:
            raise BrowserError(f"no {node_type} node on the canvas")
        button = page.locator('[data-testid="info-button"]')
        try:
            button.first.wait_for(timeout=10_000)
        except Exception:
            raise BrowserError("the selection toolbox shows no info button for the selected node") from None
        button.first.click()
        try:
            page.wait_for_function("""() => [...document.querySelectorAll('.node-help-content')]
                .some(e => e.offsetParent && e.innerText.trim().length > 40)""", timeout=int(timeout_s * 1000))
        except Exception:
            raise BrowserError(f"the node help panel of {node_type} did not open or stayed empty") from None
        return page.evaluate("""() => [...document.querySelectorAll('.node-help-content')]
            .filter(e => e.offsetParent).map(e => e.innerText).join(' ')""")

    def registered_titles(self, node_types: list[str]) -> dict[str, str]:
        """The title the frontend gives a new node of each type (its display name, translated)."""
        return self.page.evaluate("(types) => Object.fromEntries(types.map(t => [t, LiteGraph.createNode(t)?.title]))",
                                  node_types)

    def api_prompt(self) -> dict:
        """The API prompt the frontend builds from the graph (what Run sends)."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def set_widgets(self, changes: Mapping[str, Mapping]) -> None:
        problems = self.page.evaluate(_JS_SET_WIDGETS, {k: dict(v) for k, v in changes.items()})
        if problems:
            raise BrowserError("; ".join(problems))

    def replace_nodes(self, replacements: Mapping[str, Mapping]) -> dict[str, str]:
        """Swaps nodes for other node types (``retarget_replacements``); returns {old id: new id}."""
        result = self.page.evaluate(_JS_REPLACE_NODES, {k: dict(v) for k, v in replacements.items()})
        if result["problems"]:
            raise BrowserError("; ".join(result["problems"]))
        return result["made"]

    def screenshot_graph(self, path: Path) -> Path:
        """A PNG of the whole graph as the canvas draws it (readable zoom, no overlays)."""
        page = self.page
        margin, left, top, bottom = 24, 90, 150, 110   # clear of the side bar, top bars and zoom controls
        x, y, w, h = page.evaluate(_JS_FRAME, [0, 0, 0])
        scale = min(SCREENSHOT_SCALE, (MAX_SCREENSHOT_WIDTH - 2 * margin) / max(w, 1))
        width = max(1000, int(left + w * scale + 2 * margin + 60))
        height = max(700, int(top + h * scale + 2 * margin + bottom))
        page.set_viewport_size({"width": width, "height": height})
        page.mouse.move(width - 5, 5)  # off the graph: no hover highlight in the picture
        page.wait_for_timeout(300)  # the canvas follows the window size
        page.evaluate(_JS_FRAME, [scale, left + margin, top + margin])
        page.wait_for_timeout(500)  # DOM widgets (prompt text boxes) follow on the next frame
        png = page.screenshot(clip={"x": left, "y": top, "width": int(w * scale + 2 * margin),
                                    "height": int(h * scale + 2 * margin)})
        return _write_png(path, png)

    # --- running -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Presses Run; returns the server's reply to the frontend's POST /api/prompt (status, body)."""
        page = self.page
        button = page.get_by_role("button", name="Run", exact=True)
        with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as info:
            button.first.click()
        response = info.value
        try:
            body = response.json()
        except Exception:
            body = response.text()
        return {"status": response.status, "body": body}

    def wait_output_shown(self, node_ids: list[str], timeout_s: float) -> None:
        """Waits until each output node shows its (loaded) image on the canvas."""
        self.page.wait_for_function(_JS_OUTPUT_SHOWN, arg=list(node_ids), timeout=int(timeout_s * 1000))


THUMBNAIL_SIZE = (600, 400)  # the template browser shows a card's picture 3:2, scaled to fit (object-fit: contain)


def write_thumbnail(screenshot: Path, path: Path) -> Path:
    """The template browser's card picture of a workflow: its graph screenshot scaled to fit 600x400
    on the canvas colour, as ``<name>.jpg`` beside the workflow (the frontends 1.32 and 1.48 request
    ``/api/workflow_templates/<pack>/<name>.jpg`` for a custom node's template). Kept when it shows
    the same picture."""
    from PIL import Image

    with Image.open(screenshot) as im:
        im = im.convert("RGB")
        background = im.getpixel((2, 2))
        scale = min(THUMBNAIL_SIZE[0] / im.width, THUMBNAIL_SIZE[1] / im.height)
        small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    card = Image.new("RGB", THUMBNAIL_SIZE, background)
    card.paste(small, ((THUMBNAIL_SIZE[0] - small.width) // 2, (THUMBNAIL_SIZE[1] - small.height) // 2))
    if _same_picture(path, card):
        return path
    buf = io.BytesIO()
    card.save(buf, format="JPEG", quality=85, optimize=True)
    workflow_ui.write_atomic(path, buf.getvalue())
    return path


def _same_picture(path: Path, image) -> bool:
    """True if ``path`` holds the same picture up to rendering noise (anti-aliasing, palette choice)."""
    from PIL import Image, ImageChops

    try:
        with Image.open(path) as old:
            old = old.convert("RGB")
    except OSError:
        return False
    if old.size != image.size:
        return False
    changed = ImageChops.difference(old, image).convert("L").point(lambda v: 255 if v > 48 else 0)
    return changed.histogram()[255] <= 16  # a changed widget value alters hundreds of pixels


def _write_png(path: Path, png: bytes) -> Path:
    """Saves a screenshot as a small palette PNG, atomically; an existing file that shows the same
    picture is kept, so that re-running the test does not churn committed screenshots."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        if _same_picture(path, small.convert("RGB")):
            return path
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
    workflow_ui.write_atomic(path, buf.getvalue())
    return path


def screenshot_element(locator, path: Path) -> Path:
    """A PNG of one element of the page (e.g. the template browser dialog), written as screenshots are."""
    return _write_png(path, locator.screenshot())


# --------------------------------------------------------------------------------------------
# One workflow, end to end
# --------------------------------------------------------------------------------------------

def check_workflow(chrome, url: str, name: str, *, screenshot_dir: Path | None = SCREENSHOTS,
                   thumbnail_dir: Path | None = None, scratch: Path, timeout_s: float = 600.0,
                   ckpt: str = TEST_CHECKPOINT) -> dict:
    """Opens template ``name`` from the template browser, checks it (known node types, no error, and
    its layout as the frontend holds it: ``workflow_ui.layout_problems``), screenshots it (and makes
    its template thumbnail from the screenshot), retargets it to ``ckpt`` (a FLUX workflow: to the
    FLUX test model, its text encoder node swapped for the test CLIP-L's), runs it with Run and waits
    for the image. Returns a summary; raises BrowserError."""
    start = time.monotonic()
    ui = Frontend(chrome, url)
    try:
        ui.open_template(name)
        problems = ui.graph_problems()
        if problems:
            raise BrowserError(f"{name}: the frontend reports problems after loading the template:\n  "
                               + "\n  ".join(problems))
        layout = workflow_ui.layout_problems(ui.geometry())
        if layout:
            raise BrowserError(f"{name}: as the frontend lays it out (its node sizes and slot positions):\n  "
                               + "\n  ".join(layout))
        shot = ui.screenshot_graph(screenshot_dir / f"{name}.png") if screenshot_dir else None
        thumbnail = write_thumbnail(shot, thumbnail_dir / f"{name}.jpg") if shot and thumbnail_dir else None

        prompt = ui.api_prompt()
        ckpt = model_for(prompt, ckpt)
        replacements = retarget_replacements(prompt, ckpt)
        replaced = {}
        if replacements:
            made = ui.replace_nodes(replacements)
            replaced = {made[k]: dict(v["widgets"]) for k, v in replacements.items()}
            prompt = ui.api_prompt()
        changes = retarget_changes(prompt, ckpt)
        images = demo.synthetic_inputs(prompt, scratch / name)
        for node_id, path in images.items():  # LoadImage's upload button posts the file the same way
            changes.setdefault(node_id, {})["image"] = run_workflow.upload_image(url, path)
        ui.set_widgets(changes)
        sent = ui.api_prompt()
        not_taken = [f"node {nid}.{k}={v!r} (frontend sends {sent.get(nid, {}).get('inputs', {}).get(k)!r})"
                     for nid, values in changes.items() for k, v in values.items()
                     if sent.get(nid, {}).get("inputs", {}).get(k) != v]
        if not_taken:
            raise BrowserError(f"{name}: the frontend did not take the retargeted values: {'; '.join(not_taken)}")

        reply = ui.run()
        body = reply["body"]
        if reply["status"] != 200 or not isinstance(body, dict) or body.get("node_errors"):
            detail = run_workflow.format_rejection(sent, body, reply["status"])[0] if reply["status"] != 200 \
                else "; ".join(run_workflow.format_node_errors(sent, body.get("node_errors") or {}))
            raise BrowserError(f"{name}: Run was rejected by the server's validation: {detail}")
        prompt_id = body["prompt_id"]
        try:
            entry = run_workflow.wait_for_prompt(url, prompt_id, sent, timeout=timeout_s)
        except run_workflow.WorkflowError as exc:
            raise BrowserError(f"{name}: {exc}") from None
        outputs = run_workflow.output_images(entry)
        if not outputs:
            raise BrowserError(f"{name}: the run finished without an output image")
        output_nodes = sorted({o["node_id"] for o in outputs})
        try:
            ui.wait_output_shown(output_nodes, timeout_s=60)
        except Exception:
            raise BrowserError(f"{name}: the server made {len(outputs)} image(s) but the output node(s) "
                               f"{output_nodes} do not show them in the browser") from None
        files = run_workflow.download_images(url, outputs, scratch / name / "out")
        return {"workflow": name, "prompt_id": prompt_id, "screenshot": shot, "thumbnail": thumbnail, "outputs": files,
                "output_nodes": output_nodes, "changes": {**replaced, **changes}, "replaced": replacements,
                "seconds": time.monotonic() - start,
                "console_errors": list(ui.console_errors), "failed_requests": list(ui.failed_requests)}
    finally:
        ui.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Open, check, screenshot and run each pack workflow in ComfyUI's "
                                "frontend in headless Chromium.")
    p.add_argument("--url", help="a running ComfyUI with the pack, the frontend and the test checkpoints "
                   "(default: start one with tools/serve.py)")
    p.add_argument("--workflow", action="append", help="a workflow name in workflows/ (repeatable; default: all)")
    p.add_argument("--screenshots", default=str(SCREENSHOTS), help="folder for <workflow>.png ('' for none)")
    p.add_argument("--thumbnails", default=str(UI_WORKFLOWS), help="folder for the template thumbnails <workflow>.jpg "
                   "('' for none)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per workflow run")
    args = p.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("error: " + "\n       ".join(missing), file=sys.stderr)
        return 2
    names = args.workflow or workflow_names()
    unknown = [n for n in names if not (UI_WORKFLOWS / f"{n}.json").is_file()]
    if unknown:
        print(f"error: no workflows/{unknown[0]}.json", file=sys.stderr)
        return 2
    shots = Path(args.screenshots) if args.screenshots else None
    failures = 0
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="exemplar-edit-browser-") as scratch:
            ctx = contextlib.nullcontext(args.url.rstrip("/")) if args.url else serve.running_server(use_env=False)
            with ctx as url, browser() as chrome:
                prepare_server(url)
                for name in names:
                    try:
                        r = check_workflow(chrome, url, name, screenshot_dir=shots, scratch=Path(scratch),
                                           thumbnail_dir=Path(args.thumbnails) if args.thumbnails else None,
                                           timeout_s=args.timeout)
                        print(f"[browser] {name}: ok in {r['seconds']:.1f} s; screenshot {r['screenshot']}; "
                              f"output {', '.join(str(f) for f in r['outputs'])}", flush=True)
                        for line in r["console_errors"] + r["failed_requests"]:  # for diagnosis only
                            print(f"[browser]   page: {line.splitlines()[0][:200]}", flush=True)
                    except BrowserError as exc:
                        failures += 1
                        print(f"[browser] {name}: FAILED: {exc}", file=sys.stderr, flush=True)
    except (serve.ServerError, BrowserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[browser] {len(names) - failures} passed, {failures} failed in {time.monotonic() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
