"""The pack's workflows in ComfyUI's real frontend, in headless Chromium, as a user meets them.

One server (tools/serve.py, with the frontend package that the pinned host expects) and one
browser per module. Each workflow in ``workflows/*.json`` is opened from the frontend's template
browser (logo menu > Browse Templates > Extensions > exemplar_edit), checked for missing node
types, drawn into ``docs/screenshots/<workflow>.png`` (``$EXEMPLAR_SCREENSHOT_DIR`` redirects),
retargeted to the test checkpoint in the loaded graph's widgets, run with the Run button, and
awaited until the output node shows its image. Two controls show the checks can fail.

Without the prerequisites (``bash tools/setup.sh --browser``) the module is skipped, unless
``EXEMPLAR_BROWSER_REQUIRED=1`` (``make test-browser``), which makes that a failure.
"""
from __future__ import annotations

import copy
import json
import os
import sys
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
MAX_SCREENSHOT_BYTES = 400_000


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
    result = bw.check_workflow(chrome, server, name, screenshot_dir=SCREENSHOT_DIR, scratch=tmp_path,
                               timeout_s=RUN_TIMEOUT)
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


# --- the checks above can fail ----------------------------------------------------------------

def test_missing_node_type_is_reported(server, chrome):
    ui_workflow = json.loads((bw.UI_WORKFLOWS / f"{WORKFLOWS[0]}.json").read_text())
    broken = copy.deepcopy(ui_workflow)
    node = next(n for n in broken["nodes"] if n["type"] not in ("CheckpointLoaderSimple", "LoadImage"))
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
