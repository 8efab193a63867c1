"""The pack's workflows in ComfyUI's real frontend, in headless Chromium, as a user meets them.

One server (tools/serve.py, with the frontend package that the pinned host expects) and one
browser per module. Each workflow in ``workflows/*.json`` is opened from the frontend's template
browser (logo menu > Browse Templates > Extensions > exemplar_edit), checked for missing node
types, drawn into ``docs/screenshots/<workflow>.png`` (``$EXEMPLAR_SCREENSHOT_DIR`` redirects),
retargeted to the test checkpoint in the loaded graph's widgets, run with the Run button, and
awaited until the output node shows its image. Two controls show the checks can fail.

Also, in the same server and browser: each workflow's layout as the frontend holds it (its node
sizes and slot positions) passes ``workflow_ui.layout_problems``, and its graph screenshot becomes
its template thumbnail ``workflows/<name>.jpg``; the template browser shows the pack's cards with
those thumbnails (``docs/screenshots/template_browser.png``); a node's help panel shows the pack's
help page (``web/docs``); in Chinese (``Comfy.Locale`` zh) the help panel shows the Chinese page and
a new node gets its translated title (``locales/zh``).

Without the prerequisites (``bash tools/setup.sh --browser``) the module is skipped, unless
``EXEMPLAR_BROWSER_REQUIRED=1`` (``make test-browser``), which makes that a failure.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import browser_workflows as bw  # noqa: E402
import serve  # noqa: E402

pytestmark = pytest.mark.browser

_MISSING = bw.missing_prerequisites()
if _MISSING:
    if os.environ.get("EXEMPLAR_BROWSER_REQUIRED") == "1":
        pytest.fail("browser test prerequisites missing:\n" + "\n".join(_MISSING), pytrace=False)
    pytest.skip("; ".join(_MISSING), allow_module_level=True)

WORKFLOWS = bw.workflow_names()
RUN_TIMEOUT = 600
SCREENSHOT_DIR = Path(os.environ.get("EXEMPLAR_SCREENSHOT_DIR") or bw.SCREENSHOTS)
# the thumbnails are committed beside the workflows from the pinned host's run; another host's go
# beside its screenshots
THUMBNAIL_DIR = bw.UI_WORKFLOWS if SCREENSHOT_DIR == bw.SCREENSHOTS else SCREENSHOT_DIR / "thumbnails"
MAX_SCREENSHOT_BYTES = 400_000
MAX_THUMBNAIL_BYTES = 120_000
HELP_NODE = "DDIMInvert"
DOCS = REPO / "web" / "docs"
FRONTEND_VERSION = importlib.metadata.version("comfyui-frontend-package")


@pytest.fixture(scope="module")
def server():
    if not (serve.CHECKPOINT_CACHE / bw.TEST_CHECKPOINT).is_file():
        pytest.exit(f"test checkpoint {bw.TEST_CHECKPOINT} missing in {serve.CHECKPOINT_CACHE}: run `make setup`",
                    returncode=2)
    with serve.running_server(use_env=False, timeout=300) as url:
        bw.prepare_server(url)
        yield url


@pytest.fixture(scope="module")
def chrome(server):
    with bw.browser() as chrome:
        yield chrome


def test_there_are_workflows():
    assert WORKFLOWS, "no workflows/*.json"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_and_runs_in_the_frontend(server, chrome, name, tmp_path):
    result = bw.check_workflow(chrome, server, name, screenshot_dir=SCREENSHOT_DIR, thumbnail_dir=THUMBNAIL_DIR,
                               scratch=tmp_path, timeout_s=RUN_TIMEOUT)
    # The graph was retargeted in the browser: the frontend sent the test checkpoint (FLUX workflows: the
    # FLUX test model, with the test CLIP-L's loader in place of DualCLIPLoader) and small sizes.
    changed = {k for values in result["changes"].values() for k in values}
    assert {"ckpt_name", "unet_name"} & changed, result["changes"]
    assert result["outputs"], result
    for path in result["outputs"]:
        with Image.open(path) as im:
            im.load()
            assert im.width > 0 and im.height > 0
    shot = result["screenshot"]
    assert shot == SCREENSHOT_DIR / f"{name}.png"
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 300 and im.height >= 100
        assert len(im.getcolors(maxcolors=1 << 16) or range(2)) > 8, "the screenshot is blank"
    assert shot.stat().st_size <= MAX_SCREENSHOT_BYTES, f"{shot} is {shot.stat().st_size} bytes"
    thumbnail = result["thumbnail"]
    assert thumbnail == THUMBNAIL_DIR / f"{name}.jpg"
    with Image.open(thumbnail) as im:
        assert im.format == "JPEG" and im.size == bw.THUMBNAIL_SIZE
    assert thumbnail.stat().st_size <= MAX_THUMBNAIL_BYTES, f"{thumbnail} is {thumbnail.stat().st_size} bytes"


def test_template_browser_shows_the_cards_with_thumbnails(server, chrome):
    """Browse Templates > Extensions > exemplar_edit: every workflow's card asks for its thumbnail
    (both frontends request ``<name>.jpg``), gets it, and shows it."""
    ui = bw.Frontend(chrome, server, viewport=(1500, 820))
    try:
        dialog = ui.open_template_browser()
        cards = ui.template_thumbnails(WORKFLOWS)
        ui.page.wait_for_timeout(500)
        shot = bw.screenshot_element(dialog.first, SCREENSHOT_DIR / "template_browser.png")
    finally:
        ui.close()
    for name, card in cards.items():
        assert card["requested"] and card["requested"].endswith(f"/{name}.jpg"), (name, card)
        assert (bw.UI_WORKFLOWS / f"{name}.jpg").is_file(), f"workflows/{name}.jpg is not committed"
        assert card["status"] == 200 and card["width"] > 0, (name, card)
    with Image.open(shot) as im:
        assert im.width >= 600 and im.height >= 400


# --- node help and translations (web/docs, locales) ------------------------------------------

def _sentences(page: Path) -> list[str]:
    """The plain sentences of a help page's first paragraph (markup removed, as the panel shows it)."""
    text = page.read_text(encoding="utf-8").split("\n\n")
    paragraph = next(p for p in text if p.strip() and not p.lstrip().startswith(("#", "!", "|", "<", "-", ">")))
    plain = re.sub(r"[*_`]", "", " ".join(paragraph.split()))
    return [s.strip() for s in re.split(r"(?<=[.。])\s*", plain) if len(s.strip()) > 8]


def _set_locale(url: str, locale: str) -> None:
    request = urllib.request.Request(f"{url}/settings/Comfy.Locale", data=json.dumps(locale).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200


def test_node_help_panel_shows_the_pack_help_page(server, chrome):
    ui = bw.Frontend(chrome, server)
    try:
        ui.open_template("inversion_roundtrip")
        shown = " ".join(ui.node_help(HELP_NODE).split())
    finally:
        ui.close()
    sentence = _sentences(DOCS / f"{HELP_NODE}.md")[0]
    assert sentence in shown, f"the help panel of {HELP_NODE} does not show {sentence!r}; it shows {shown[:300]!r}"


# Frontend 1.32.9 merges a custom node's translations (GET /i18n) into the messages of each locale
# before it loads its own messages of that locale; loading them (loadLocale -> setLocaleMessage)
# replaces the whole locale, so in any language but English the pack's names and tooltips are lost
# and its node titles stay English, while the frontend's own nodes are translated. 1.48.7 merges the
# custom translations again after loading a locale. Checked in both bundles; the test below asserts
# exactly this on 1.32 (core node translated, the pack's not) and the translation on later frontends.
LOCALE_REMERGE_FIXED = (1, 48)


def _english_title() -> str:
    en = json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))
    return en[HELP_NODE]["display_name"]


def test_chinese_locale_translates_the_pack(server, chrome):
    zh = json.loads((REPO / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    expected = zh[HELP_NODE]["display_name"]
    _set_locale(server, "zh")
    try:
        ui = bw.Frontend(chrome, server)
        try:
            titles = ui.registered_titles([HELP_NODE, "KSampler"])
            ui.load_graph(json.loads((bw.UI_WORKFLOWS / "inversion_roundtrip.json").read_text()))
            shown = " ".join(ui.node_help(HELP_NODE).split())
        finally:
            ui.close()
    finally:
        _set_locale(server, "en")
    assert titles["KSampler"] != "KSampler", f"the frontend did not switch to Chinese: {titles}"
    sentence = _sentences(DOCS / HELP_NODE / "zh.md")[0]
    assert sentence in shown, f"the Chinese help panel does not show {sentence!r}; it shows {shown[:300]!r}"
    version = tuple(int(v) for v in FRONTEND_VERSION.split(".")[:2])
    if version < LOCALE_REMERGE_FIXED and titles[HELP_NODE] == _english_title():
        pytest.xfail(f"frontend {FRONTEND_VERSION} drops custom-node translations when it loads a locale "
                     f"(core KSampler shows {titles['KSampler']!r}, {HELP_NODE} stays {titles[HELP_NODE]!r}); "
                     f"fixed in 1.48")
    assert titles[HELP_NODE] == expected, titles


# --- the checks above can fail ----------------------------------------------------------------

def test_missing_node_type_is_reported(server, chrome):
    ui_workflow = json.loads((bw.UI_WORKFLOWS / f"{WORKFLOWS[0]}.json").read_text())
    broken = copy.deepcopy(ui_workflow)
    node = next(n for n in broken["nodes"]
                if n["type"] not in ("CheckpointLoaderSimple", "LoadImage", "Note", "Reroute"))
    node["type"] = "NoSuchExemplarNode"
    ui = bw.Frontend(chrome, server)
    try:
        ui.load_graph(ui_workflow)
        assert ui.graph_problems() == []
        ui.load_graph(broken)
        problems = ui.graph_problems()
    finally:
        ui.close()
    assert any(f"node {node['id']} has type 'NoSuchExemplarNode'" in p for p in problems), problems
    # the frontend's own warning: a missing-nodes dialog (frontend 1.32) or its error panel (1.48)
    assert any(p.startswith(("dialog open:", "error panel:")) and "NoSuchExemplarNode" in p for p in problems), problems


def test_validation_error_is_reported(server, chrome):
    ui = bw.Frontend(chrome, server)
    try:
        ui.open_template(WORKFLOWS[0])
        loaders = [nid for nid, node in ui.api_prompt().items() if "ckpt_name" in node.get("inputs", {})]
        assert loaders, f"{WORKFLOWS[0]} has no checkpoint loader"
        ui.set_widgets({loaders[0]: {"ckpt_name": "no_such_checkpoint.safetensors"}})
        reply = ui.run()
        ui.page.wait_for_timeout(500)
        notices = ui.dialogs() or [ui.error_panel()]  # a dialog (frontend 1.32) or the error panel (1.48)
    finally:
        ui.close()
    assert reply["status"] == 400, reply
    assert loaders[0] in reply["body"]["node_errors"], reply
    # the user is told: the dialog quotes the value (1.32); the error panel names the input (1.48)
    assert any("no_such_checkpoint" in text or ("Invalid input" in text and "ckpt_name" in text)
               for text in notices), notices
