"""End to end: the real ComfyUI server (tools/serve.py) with the pack in custom_nodes, driven over
HTTP by tools/run_workflow.py, as a user would.

One server per module, with both test checkpoints. Workflows run checkpoint-major so each model
is loaded once.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import demo  # noqa: E402
import run_workflow  # noqa: E402
import serve  # noqa: E402
import workflow_ui  # noqa: E402

pytestmark = pytest.mark.e2e

TEST_CKPTS = ("test_sd15.safetensors", "test_sdxl.safetensors")
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_PAIRS = [p for p in sorted((REPO / "workflows").glob("*.json")) if (REPO / "workflows" / "api" / p.name).exists()]
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def server():
    missing = [n for n in TEST_CKPTS if not (serve.CHECKPOINT_CACHE / n).is_file()]
    if missing:
        pytest.exit(f"test checkpoint(s) {missing} missing in {serve.CHECKPOINT_CACHE}: run `make setup`",
                    returncode=2)
    with serve.running_server(use_env=False, timeout=300) as url:
        yield url


@pytest.fixture(scope="module")
def object_info(server):
    return run_workflow.get_json(server, "/object_info", timeout=120)


@pytest.fixture(scope="module")
def pack_node_ids(host):
    """The node ids the pack itself declares, through its V3 entrypoint (independent of the server)."""
    import exemplar_edit

    extension = asyncio.run(exemplar_edit.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return sorted(cls.GET_SCHEMA().node_id for cls in nodes)


# --- the pack as the server presents it ------------------------------------------------------

def test_server_lists_every_pack_node(server, object_info, pack_node_ids):
    listed = serve.pack_nodes(object_info)
    assert listed == server.nodes
    assert pack_node_ids, "the pack declares no nodes"
    missing = sorted(set(pack_node_ids) - set(object_info))
    assert not missing, f"declared by the pack but not served by ComfyUI: {missing}"
    wrong_category = sorted(n for n in pack_node_ids if n not in listed)
    assert not wrong_category, f"nodes whose category does not start with 'Exemplar Edit': {wrong_category}"
    assert sorted(listed) == pack_node_ids, f"served under 'Exemplar Edit' but not declared by the pack: " \
                                            f"{sorted(set(listed) - set(pack_node_ids))}"


def test_every_pack_node_is_documented(object_info):
    problems = []
    for node_id in serve.pack_nodes(object_info):
        info = object_info[node_id]
        if not str(info.get("description") or "").strip():
            problems.append(f"{node_id}: no description")
        if not str(info.get("display_name") or "").strip():
            problems.append(f"{node_id}: no display_name")
        for section in ("required", "optional"):
            for name, spec in (info.get("input", {}).get(section) or {}).items():
                options = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip") or "").strip():
                    problems.append(f"{node_id}: {section} input {name!r} has no tooltip")
        outputs = info.get("output") or []
        tooltips = info.get("output_tooltips") or []
        if len(tooltips) != len(outputs):
            problems.append(f"{node_id}: {len(outputs)} outputs but {len(tooltips)} output_tooltips")
        for i, tip in enumerate(tooltips):
            if not str(tip or "").strip():
                name = (info.get("output_name") or outputs)[i] if i < len(outputs) else i
                problems.append(f"{node_id}: output {i} ({name}) has no tooltip")
    assert not problems, "\n".join(problems)


# --- every shipped workflow, on both model families ------------------------------------------

FLUX_MODEL = "flux"  # the FLUX-layout test model the host loads (pack_testing.flux_model_for_host), as make demo
FLUX_WORKFLOWS = [wf for wf in API_WORKFLOWS if demo.is_flux_workflow(run_workflow.load_workflow(wf))]
RUNS = ([pytest.param(ckpt, wf, id=f"{Path(ckpt).stem}-{wf.stem}") for ckpt in TEST_CKPTS
         for wf in API_WORKFLOWS if wf not in FLUX_WORKFLOWS]
        + [pytest.param(FLUX_MODEL, wf, id=f"flux-{wf.stem}") for wf in FLUX_WORKFLOWS])


@pytest.mark.parametrize("ckpt, workflow_path", RUNS)
def test_shipped_workflow_runs(server, ckpt, workflow_path, tmp_path):
    if ckpt == FLUX_MODEL:
        import pack_testing

        ckpt = pack_testing.flux_model_for_host()
    workflow = demo.retarget(run_workflow.load_workflow(workflow_path), ckpt)
    images = demo.synthetic_inputs(workflow, tmp_path / "inputs")
    paths = run_workflow.submit_workflow(server, workflow, images, None, tmp_path / "out", RUN_TIMEOUT)
    assert paths, f"{workflow_path.name} on {ckpt} produced no images"
    for path in paths:
        assert path.parent == tmp_path / "out"
        with Image.open(path) as im:
            im.load()
            assert im.width > 0 and im.height > 0


# --- errors a user sees ----------------------------------------------------------------------

def _invert_prompt(steps: int = 2, skip_steps: int = 0) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TEST_CKPTS[0]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "DDIMInvert", "_meta": {"title": "Invert it"}, "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["3", 0], "mode": "ddim", "steps": steps,
            "cfg": 1.0, "scheduler": "ddim_uniform", "skip_steps": skip_steps, "seed": 0,
            "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5,
            "auto_correlation_rolls": 5}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def test_validation_error_names_node_and_input(server, tmp_path):
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, _invert_prompt(steps=0), out_dir=tmp_path, timeout=60)
    message = str(info.value)
    assert info.value.node_id == "4"
    assert "node 4 (DDIMInvert" in message and '"steps"' in message and "min" in message, message
    assert "\n" not in message


def test_missing_node_type_is_named(server, tmp_path):
    prompt = _invert_prompt()
    prompt["4"]["class_type"] = "NoSuchExemplarNode"
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, prompt, out_dir=tmp_path, timeout=60, check_inputs=False)
    message = str(info.value)
    assert "NoSuchExemplarNode" in message and "node 4" in message, message


def test_execution_error_names_node(server, tmp_path):
    prompt = _invert_prompt()
    prompt["4"]["inputs"]["cfg"] = 3.0  # no negative connected: known only when the node runs
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, prompt, out_dir=tmp_path, timeout=120)
    message = str(info.value)
    assert info.value.node_id == "4"
    assert "ComfyUI failed while running node 4 (DDIMInvert" in message and "negative: cfg is 3.0" in message, message


def test_a_rule_of_the_node_is_checked_at_validation(server, tmp_path):
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, _invert_prompt(steps=2, skip_steps=2), out_dir=tmp_path, timeout=120)
    message = str(info.value)
    assert info.value.node_id == "4"
    assert "HTTP 400" in message and "node 4 (DDIMInvert" in message and "skip_steps: 2 must be between" in message, \
        message
    assert not list(tmp_path.iterdir())


def test_cli_reports_unknown_input_and_node(server, tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_invert_prompt()))
    code = run_workflow.main([str(path), "--url", server, "--set", "Invert it.stepz=3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "node 4 (DDIMInvert" in err and "'stepz'" in err and "skip_steps" in err, err
    code = run_workflow.main([str(path), "--url", server, "--set", "99.steps=3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "No node '99'" in err, err


def test_cli_runs_with_title_override_and_upload(server, tmp_path, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "1": {"class_type": "LoadImage", "_meta": {"title": "Photo"}, "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e_cli"}},
    }))
    photo = demo.synthetic_image(tmp_path / "photo.png", 3, 32)
    out = tmp_path / "out"
    out.mkdir()
    (out / "e2e_cli_00001_.png").write_bytes(b"keep me")
    args = [str(wf), "--url", server, "--image", f"Photo={photo}", "--set", "3.filename_prefix=e2e_cli",
            "--out", str(out)]
    assert run_workflow.main(args) == 0
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(printed) == 1 and printed[0].exists()
    assert (out / "e2e_cli_00001_.png").read_bytes() == b"keep me"  # never overwritten
    with Image.open(printed[0]) as im:
        assert im.size == (32, 32)
        with Image.open(photo) as src:
            expected = [255 - c for c in src.convert("RGB").getpixel((5, 5))]
        assert all(abs(a - b) <= 1 for a, b in zip(im.convert("RGB").getpixel((5, 5)), expected))


def test_connection_refused_is_readable(tmp_path):
    port = serve.free_port()
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(f"http://127.0.0.1:{port}", _invert_prompt(), out_dir=tmp_path, timeout=5)
    assert "connection refused" in str(info.value)


# --- UI format <-> API format ----------------------------------------------------------------

@pytest.mark.parametrize("api_path", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_api_workflow_survives_ui_round_trip(object_info, api_path):
    api = json.loads(api_path.read_text())
    ui = workflow_ui.api_to_ui(api, object_info)
    assert workflow_ui.differences(api, workflow_ui.ui_to_api(ui, object_info)) == []


@pytest.mark.parametrize("ui_path", UI_PAIRS, ids=[p.stem for p in UI_PAIRS])
def test_shipped_ui_workflow_matches_api_twin(server, object_info, ui_path):
    ui = json.loads(ui_path.read_text())
    api = json.loads((REPO / "workflows" / "api" / ui_path.name).read_text())
    diff = workflow_ui.differences(api, workflow_ui.ui_to_api(ui, object_info))
    assert not diff, (f"{ui_path.relative_to(REPO)} drifted from workflows/api/{ui_path.name} "
                      f"(regenerate with `python tools/workflow_ui.py --all`):\n" + "\n".join(diff))
    # ComfyUI offers it as one of the pack's workflow templates, under the custom_nodes folder name.
    templates = run_workflow.get_json(server, "/workflow_templates")
    assert ui_path.stem in templates.get(serve.PACK_DIR_NAME, []), templates
    served = run_workflow.get_json(server, f"/api/workflow_templates/{serve.PACK_DIR_NAME}/{ui_path.name}")
    assert served == ui


@pytest.mark.parametrize("ui_path", UI_PAIRS, ids=[p.stem for p in UI_PAIRS])
def test_shipped_workflow_reads_in_one_look(object_info, ui_path):
    """Stages left to right in titled groups, no node over another, no link under a node, links left
    to right, one Note saying what to set (``workflows/api/<name>.md``) and what to expect."""
    ui = json.loads(ui_path.read_text())
    problems = workflow_ui.layout_problems(workflow_ui.ui_geometry(ui, object_info))
    assert not problems, f"{ui_path.relative_to(REPO)} (regenerate with `python tools/workflow_ui.py --all`):\n" \
                         + "\n".join(problems)
    note = REPO / "workflows" / "api" / f"{ui_path.stem}.md"
    assert note.is_file(), f"{note.relative_to(REPO)} missing: the workflow's Note (what to set, what to expect)"
    assert workflow_ui.note_text(ui) == note.read_text().strip(), f"the Note of {ui_path.name} differs from {note.name}"
    thumbnail = REPO / "workflows" / f"{ui_path.stem}.jpg"
    assert thumbnail.is_file(), f"{thumbnail.relative_to(REPO)} missing: the template browser's card picture " \
                                f"(the browser test draws it)"


def test_layout_check_catches_overlaps_and_links_under_nodes(object_info):
    ui = json.loads((REPO / "workflows" / "inversion_roundtrip.json").read_text())
    nodes = {n["type"]: n for n in ui["nodes"]}
    nodes["VAEDecode"]["pos"] = list(nodes["SamplerCustom"]["pos"])  # on top of another node
    problems = workflow_ui.layout_problems(workflow_ui.ui_geometry(ui, object_info))
    assert any("VAE Decode" in p or "VAEDecode" in p for p in problems if "overlaps" in p), problems
    ui = json.loads((REPO / "workflows" / "inversion_roundtrip.json").read_text())
    ui["nodes"] = [n for n in ui["nodes"] if n["type"] != "Note"]
    assert "0 Note nodes (one says what to set and what to expect)" in \
        workflow_ui.layout_problems(workflow_ui.ui_geometry(ui, object_info))
    api = json.loads((REPO / "workflows" / "api" / "inversion_roundtrip.json").read_text())
    flat = workflow_ui.api_to_ui(api, object_info)  # no bus: put every node in one row, links cross nodes
    for node in flat["nodes"]:
        node["pos"][1] = 200
    for node in flat["nodes"]:
        node["pos"][0] = 400 * flat["nodes"].index(node)
    flat["nodes"] = [n for n in flat["nodes"] if n["type"] != "Reroute"]
    kept = {n["id"] for n in flat["nodes"]}
    flat["links"] = [lk for lk in flat["links"] if lk[1] in kept and lk[3] in kept]
    assert any("runs under" in p for p in workflow_ui.layout_problems(workflow_ui.ui_geometry(flat, object_info),
                                                                      check_note=False))


def test_node_help_and_translations_are_served(server):
    """What the frontend fetches: the help page at /extensions/<pack>/docs/<NodeId>.md (and the
    locale's docs/<NodeId>/<lang>.md), a picture it shows, and the pack's translations in /i18n."""
    base = f"{server}/extensions/{serve.PACK_DIR_NAME}/docs"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for rel in ("DDIMInvert.md", "DDIMInvert/zh.md", "images/inversion_schedule.png"):
        with opener.open(f"{base}/{rel}", timeout=30) as r:
            assert r.status == 200 and r.read() == (REPO / "web" / "docs" / rel).read_bytes(), rel
    i18n = run_workflow.get_json(server, "/i18n")
    zh = json.loads((REPO / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    assert i18n["zh"]["nodeDefs"]["DDIMInvert"] == zh["DDIMInvert"]
    assert i18n["zh"]["nodeCategories"]["Exemplar Edit"]
    assert i18n["en"]["nodeDefs"]["DDIMInvert"]["display_name"] == "DDIM Invert"


def test_every_api_workflow_has_ui_twin():
    missing = [p.name for p in API_WORKFLOWS if not (REPO / "workflows" / p.name).exists()]
    assert not missing, f"no UI-format workflows/{missing[0]} (and {len(missing) - 1} more): run " \
                        f"`python tools/workflow_ui.py --all`"


# --- bad values a client can send: refused at POST /prompt, the input named (issue 15) ----------

def _rejection(server, prompt: dict) -> str:
    """POSTs ``prompt``; asserts ComfyUI refused it before running anything (HTTP 400); returns the message."""
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.queue_prompt(server, prompt)
    message = str(info.value)
    assert "HTTP 400" in message, message
    return message


def _analogy_prompt(**trainer_inputs) -> dict:
    workflow = demo.retarget(run_workflow.load_workflow(REPO / "workflows" / "api" / "image_analogy.json"),
                             TEST_CKPTS[0])
    workflow["9"]["inputs"].update(trainer_inputs)
    return workflow


def _assert_next_valid_prompt_runs(server, tmp_path):
    entry = run_workflow.wait_for_prompt(server, run_workflow.queue_prompt(server, _invert_prompt()), timeout=120)
    assert entry["status"]["status_str"] == "success"


@pytest.mark.parametrize("node, field, value, expected", [
    ("4", "cfg", float("nan"), "Value nan smaller than min of 0.0"),
    ("4", "lambda_ac", float("inf"), "Value inf bigger than max of 1000.0"),
])
def test_non_finite_inversion_values_are_refused_before_work(server, tmp_path, node, field, value, expected):
    prompt = _invert_prompt()
    prompt[node]["inputs"][field] = value
    message = _rejection(server, prompt)
    assert f'input "{field}": {expected}' in message, message
    _assert_next_valid_prompt_runs(server, tmp_path)


def test_non_finite_values_of_the_other_nodes_are_refused(server, tmp_path):
    translation = demo.retarget(run_workflow.load_workflow(REPO / "workflows" / "api" / "image_translation.json"),
                                TEST_CKPTS[0])
    direction = next(k for k, v in translation.items() if v["class_type"] == "EditDirection")
    translation[direction]["inputs"]["multiplier"] = float("nan")
    assert 'input "multiplier": Value nan smaller than min of -4.0' in _rejection(server, translation)
    message = _rejection(server, _analogy_prompt(learning_rate=float("nan")))
    assert 'input "learning_rate": Value nan smaller than min of 1e-06' in message, message
    message = _rejection(server, _analogy_prompt(alpha=float("nan")))  # read by a rule: the node's own message
    assert "alpha: nan is not a number; give a finite value between 0.0 and 1.0" in message, message
    _assert_next_valid_prompt_runs(server, tmp_path)


@pytest.mark.parametrize("name, expected", [
    ("x" * 300, "name: the name is 300 bytes long"),
    ("CON", "reserved device name on Windows"),
    ("nul.backup", "reserved device name on Windows"),
    ("../escape", "path separator"),
])
def test_bad_embedding_names_are_refused_at_post(server, tmp_path, name, expected):
    message = _rejection(server, _analogy_prompt(name=name))
    assert expected in message, message
    _assert_next_valid_prompt_runs(server, tmp_path)


def test_existing_difference_is_named_relative_to_the_models_folder(server, tmp_path):
    folder = server.base / "models" / "differences"  # the trainer's default token_space, conditioning
    folder.mkdir(parents=True, exist_ok=True)
    existing = folder / "e2e_taken.safetensors"
    existing.write_bytes(b"a user's file")
    try:
        workflow = _analogy_prompt(name="e2e_taken", if_exists="error")
        images = demo.synthetic_inputs(workflow, tmp_path / "inputs")
        with pytest.raises(run_workflow.WorkflowError) as info:  # state, not a value: checked when the node runs
            run_workflow.submit_workflow(server, workflow, images, None, tmp_path / "out", RUN_TIMEOUT)
        message = str(info.value)
        assert "name: differences/e2e_taken.safetensors already exists" in message, message
        assert str(server.base) not in message
        assert existing.read_bytes() == b"a user's file"
    finally:
        existing.unlink()


def test_step_windows_that_end_before_they_start_are_refused(server):
    translation = demo.retarget(run_workflow.load_workflow(REPO / "workflows" / "api" / "image_translation.json"),
                                TEST_CKPTS[0])
    guidance = next(k for k, v in translation.items() if v["class_type"] == "CutLossGuidance")
    translation[guidance]["inputs"].update(guidance_start_step=3, guidance_end_step=1)
    assert "guidance_end_step: 1 is before guidance_start_step 3" in _rejection(server, translation)
    appearance = demo.retarget(run_workflow.load_workflow(REPO / "workflows" / "api" / "appearance_transfer.json"),
                               TEST_CKPTS[0])
    rearrange = next(k for k, v in appearance.items() if v["class_type"] == "SemanticFeatureRearrange")
    appearance[rearrange]["inputs"].update(injection_start_step=3, injection_end_step=2)
    assert "injection_end_step: 2 is before injection_start_step 3" in _rejection(server, appearance)


def test_replay_from_a_latent_that_is_not_where_the_sigmas_start_is_refused(server, tmp_path):
    """SplitSigmas' second half with DDIMInvert's own LATENT: the sampler knows which step's latent it
    was given and refuses the mismatch, naming latent_image and the fix."""
    prompt = _invert_prompt(steps=4)
    prompt["7"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["4", 1], "exact_final_step": True}}
    prompt["8"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["4", 2], "step": 2}}
    prompt["9"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["2", 0],
        "negative": ["2", 0], "sampler": ["7", 0], "sigmas": ["8", 1], "latent_image": ["4", 0]}}
    prompt["5"]["inputs"]["samples"] = ["9", 0]
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, prompt, out_dir=tmp_path, timeout=120)
    message = str(info.value)
    assert "latent_image: it is the inversion's latent at step 0, but the sigmas start at step 2" in message, message
    assert "skip_steps" in message
    _assert_next_valid_prompt_runs(server, tmp_path)


@pytest.mark.parametrize("captions", [("", ""), ("a house", "a house")])
def test_a_zero_caption_delta_is_refused_unless_alpha_is_zero(server, tmp_path, captions):
    """Equal or empty captions make D_txt zero: with alpha > 0 the slerp has nothing to interpolate."""
    before, after = captions
    message = _rejection(server, _analogy_prompt(caption_before=before, caption_after=after, alpha=0.8))
    assert "caption_after:" in message and "D_txt is zero" in message and "alpha to 0" in message, message
    image_only = _analogy_prompt(caption_before=before, caption_after=after, alpha=0.0, name="e2e_image_delta_only")
    images = demo.synthetic_inputs(image_only, tmp_path / "inputs")
    assert run_workflow.submit_workflow(server, image_only, images, None, tmp_path / "out", RUN_TIMEOUT)


def test_shipped_analogy_workflow_runs_twice_and_trains_once(server, tmp_path):
    """The shipped image_analogy workflow (trainer on if_exists reuse) run, the server's caches emptied
    (POST /free, as after a restart), then run again: the second run executes the trainer, which
    loads the saved difference instead of training (the file is not written again) and the run
    succeeds instead of stopping with "already exists"."""
    name = f"e2e_twice_{os.getpid()}"
    path = server.base / "models" / "differences" / f"{name}.safetensors"
    workflow = _analogy_prompt(name=name, if_exists="reuse")
    trainer = next(k for k, v in workflow.items() if v["class_type"] == "DeltaInterpolationTrainer")
    images = demo.synthetic_inputs(workflow, tmp_path / "inputs")
    try:
        first = run_workflow.submit_workflow(server, workflow, images, None, tmp_path / "first", RUN_TIMEOUT)
        assert first and path.exists()
        written = (path.stat().st_mtime_ns, path.read_bytes())
        status, _ = run_workflow._json_request("POST", server + "/free", {"free_memory": True})
        assert status == 200
        wf = run_workflow.apply_images(server, workflow, images)
        prompt_id = run_workflow.queue_prompt(server, wf)
        entry = run_workflow.wait_for_prompt(server, prompt_id, wf, timeout=RUN_TIMEOUT)
        assert entry["status"]["status_str"] == "success"
        cached = [set(data.get("nodes") or []) for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
        assert cached and trainer not in set().union(*cached), "the trainer did not run again (cache not emptied)"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == written  # loaded, not trained and saved again
    finally:
        path.unlink(missing_ok=True)


# --- bad files and values, second pass (issue 24): one error per bad input, named ----------------

def _marked_inputs(error: run_workflow.WorkflowError, node_id: str) -> list[str]:
    """The inputs ComfyUI's answer tags on ``node_id`` (the frontend marks each of them)."""
    errors = (error.details.get("node_errors") or {}).get(node_id, {}).get("errors", [])
    return [(e.get("extra_info") or {}).get("input_name") for e in errors]


def _refused(server, prompt: dict) -> run_workflow.WorkflowError:
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.queue_prompt(server, prompt)
    assert "HTTP 400" in str(info.value), info.value
    return info.value


def test_a_nan_number_marks_only_its_input(server, tmp_path):
    prompt = _invert_prompt()
    prompt["4"]["inputs"]["cfg"] = float("nan")
    error = _refused(server, prompt)
    assert _marked_inputs(error, "4") == ["cfg"], error.details
    assert 'input "cfg"' in str(error) and "nan" in str(error) and "min of 0.0" in str(error), error
    _assert_next_valid_prompt_runs(server, tmp_path)


def test_text_for_a_number_marks_only_its_input(server, tmp_path):
    prompt = _invert_prompt()
    prompt["4"]["inputs"]["steps"] = "abc"
    error = _refused(server, prompt)
    assert _marked_inputs(error, "4") == ["steps"], error.details
    assert 'input "steps"' in str(error) and "not supported between" not in str(error), error
    _assert_next_valid_prompt_runs(server, tmp_path)


def test_a_rule_marks_only_the_inputs_it_reads(server, tmp_path):
    error = _refused(server, _invert_prompt(steps=2, skip_steps=2))
    marked = _marked_inputs(error, "4")
    assert "skip_steps" in marked and not {"model", "positive", "latent", "cfg", "seed"} & set(marked), marked
    assert len(set(marked)) == len(marked)


def _injector_prompt(embedding_name: str) -> dict:
    """Token Injector loading a saved difference by name, sampled for one step (64 px)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TEST_CKPTS[0]}},
        "2": {"class_type": "TokenInjector", "inputs": {"clip": ["1", 1], "text": "a photo", "strength": 1.0,
                                                        "embedding_name": embedding_name}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def _difference_bytes(rows) -> bytes:
    import safetensors.torch

    return safetensors.torch.save({"clip_l": rows})


def _corrupt_differences() -> dict[str, bytes]:
    import struct

    import torch

    valid = _difference_bytes(torch.zeros(4, 768))  # the test CLIP-L is 768 wide
    header = json.dumps({"clip_l": {"dtype": "F32", "shape": [4, 768], "data_offsets": [0, 4 * 768 * 4]}}).encode()
    return {
        "half": valid[: len(valid) // 2],
        "short": struct.pack("<Q", len(header)) + header + b"\0" * 64,  # the header claims 12288 bytes of data
        "text": b"this is not a safetensors file\n",
        "nan": _difference_bytes(torch.full((4, 768), float("nan"))),
    }


@pytest.mark.parametrize("kind", ["half", "short", "text", "nan"])
def test_a_bad_difference_file_is_named_with_its_input_and_the_fix(server, tmp_path, kind):
    folder = server.base / "models" / "differences"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"e2e_bad_{kind}.safetensors"
    content = _corrupt_differences()[kind]
    path.write_bytes(content)
    try:
        with pytest.raises(run_workflow.WorkflowError) as info:
            run_workflow.submit_workflow(server, _injector_prompt(path.stem), out_dir=tmp_path, timeout=120)
        message = str(info.value)
        assert info.value.node_id == "2"
        assert f"embedding_name: differences/{path.name}" in message, message
        assert ("not finite" if kind == "nan" else "cannot be read as a safetensors file") in message, message
        assert "train it again" in message and str(server.base) not in message, message
        assert path.read_bytes() == content
    finally:
        path.unlink()
    _assert_next_valid_prompt_runs(server, tmp_path)


def test_a_good_difference_file_is_injected_by_name(server, tmp_path):
    """The control of the test above: the same prompt with a readable, finite file runs."""
    import torch

    path = server.base / "models" / "differences" / "e2e_good.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_difference_bytes(torch.zeros(4, 768)))
    try:
        assert run_workflow.submit_workflow(server, _injector_prompt(path.stem), out_dir=tmp_path, timeout=120)
    finally:
        path.unlink()


@pytest.mark.parametrize("kind", ["half", "nan"])
def test_the_trainer_refuses_to_reuse_a_bad_file_and_keeps_it(server, tmp_path, kind):
    folder = server.base / "models" / "differences"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"e2e_reuse_{kind}.safetensors"
    content = _corrupt_differences()[kind]
    path.write_bytes(content)
    try:
        workflow = _analogy_prompt(name=path.stem, if_exists="reuse")
        images = demo.synthetic_inputs(workflow, tmp_path / "inputs")
        with pytest.raises(run_workflow.WorkflowError) as info:
            run_workflow.submit_workflow(server, workflow, images, None, tmp_path / "out", RUN_TIMEOUT)
        message = str(info.value)
        assert f"name: differences/{path.name}" in message and "if_exists to overwrite" in message, message
        assert str(server.base) not in message
        assert path.read_bytes() == content  # never overwritten, never half-loaded
    finally:
        path.unlink()


@pytest.mark.parametrize("if_exists", ["overwrite", "reuse"])
def test_a_folder_in_place_of_the_trainers_file_is_refused_before_training(server, tmp_path, if_exists):
    folder = server.base / "models" / "differences" / "e2e_folder.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("a user's file")
    try:
        workflow = _analogy_prompt(name="e2e_folder", if_exists=if_exists)
        trainer = next(k for k, v in workflow.items() if v["class_type"] == "DeltaInterpolationTrainer")
        images = demo.synthetic_inputs(workflow, tmp_path / "inputs")
        with pytest.raises(run_workflow.WorkflowError) as info:
            run_workflow.submit_workflow(server, workflow, images, None, tmp_path / "out", RUN_TIMEOUT)
        error = next(data for kind, data in info.value.details["status"]["messages"] if kind == "execution_error")
        assert error["node_id"] == trainer, error
        assert error["exception_message"].startswith("name: differences/e2e_folder.safetensors is a folder"), error
        assert str(server.base) not in error["exception_message"]
        assert (folder / "keep.txt").read_text() == "a user's file"
    finally:
        (folder / "keep.txt").unlink()
        folder.rmdir()
    _assert_next_valid_prompt_runs(server, tmp_path)


@pytest.mark.parametrize("node, field", [("9", "name"), ("12", "embedding_name")])
def test_a_path_separator_in_a_name_names_the_real_folder(server, field, node):
    workflow = _analogy_prompt()
    workflow[node]["inputs"][field] = "sub/winter"
    message = str(_refused(server, workflow))
    assert f"{field}: 'sub/winter' contains a path separator" in message, message
    assert "models/differences" in message and "saved in the embeddings folder" not in message, message


def test_a_sampler_that_cannot_run_one_step_at_a_time_is_refused_naming_it(server, tmp_path):
    """CutLoss Guidance over a 2-step inversion, sampled with uni_pc (known only when
    SamplerCustomAdvanced runs): refused before the guider's first step, naming the sampler."""
    prompt = _invert_prompt()
    prompt["7"] = {"class_type": "EditDirection", "inputs": {
        "clip": ["1", 1], "source": "cat", "target": "dog", "caption": "a photo of a cat", "multiplier": 1.0,
        "source_sentences": "", "target_sentences": ""}}
    prompt["8"] = {"class_type": "CutLossGuidance", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "direction": ["7", 0], "cfg": 5.0,
        "lambda_xa": 1.0, "lambda_cut": 3.0, "step_size": 0.1, "guidance_start_step": 0, "guidance_end_step": 1000,
        "num_patches": 256, "tau": 0.07, "offload_to_cpu": False}}
    prompt["9"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["10"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "uni_pc"}}
    prompt["11"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["9", 0], "guider": ["8", 0], "sampler": ["10", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    prompt["5"]["inputs"]["samples"] = ["11", 0]
    with pytest.raises(run_workflow.WorkflowError) as info:
        run_workflow.submit_workflow(server, prompt, out_dir=tmp_path, timeout=RUN_TIMEOUT)
    message = str(info.value)
    assert info.value.node_id == "11"
    assert "sampler: uni_pc cannot run one step at a time" in message and "dpmpp_2m" in message, message
    _assert_next_valid_prompt_runs(server, tmp_path)
