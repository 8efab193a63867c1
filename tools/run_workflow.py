#!/usr/bin/env python3
"""Run an API-format ComfyUI workflow against a running ComfyUI server and save its images.

Standard library only, so it runs with any Python 3.9+ against any ComfyUI URL:

    python tools/run_workflow.py workflows/api/NAME.json --url http://127.0.0.1:8188 \\
        --image 3=path/to/photo.png --set 7.steps=20 --set 4.ckpt_name=model.safetensors \\
        --out out/ [--timeout 600]

- ``--image NODE=PATH`` uploads PATH (``POST /upload/image``) and sets that node's ``image`` input.
- ``--set NODE.INPUT=VALUE`` overrides an input; VALUE is parsed as JSON, else kept as a string.
- NODE is the node's key in the API-format file, or its ``_meta.title`` when that is unique.

The prompt is queued with ``POST /prompt`` and followed by polling ``GET /history/<id>`` (no
websocket). Every output image is fetched through ``/view`` into ``--out``; existing files are
never overwritten (a numeric suffix is added) and each file is written atomically.

The same logic is importable: :func:`submit_workflow` (and the smaller pieces below it) is what
``tools/demo.py`` and the end-to-end tests use.
"""
from __future__ import annotations

import argparse
import copy
import json
import mimetypes
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "WorkflowError",
    "load_workflow",
    "resolve_node",
    "parse_value",
    "apply_overrides",
    "apply_images",
    "upload_image",
    "queue_prompt",
    "wait_for_prompt",
    "output_images",
    "download_images",
    "run_prompt",
    "submit_workflow",
    "main",
]

DEFAULT_URL = "http://127.0.0.1:8188"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WorkflowError(RuntimeError):
    """A failure worth showing to a user as one readable paragraph."""

    def __init__(self, message: str, *, node_id: str | None = None, details: Any = None):
        super().__init__(message)
        self.node_id = node_id
        self.details = details


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    url = (url or DEFAULT_URL).strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def _describe_url_error(url: str, exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower():
        return (f"Cannot reach ComfyUI at {url}: connection refused. Is the server running on that "
                f"address and port? (start a local one with `python tools/serve.py --port 8188`)")
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason).lower():
        return f"ComfyUI at {url} did not answer in time ({reason})."
    return f"Cannot reach ComfyUI at {url}: {reason}."


_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _opener(url: str):
    """No proxy for a local server, whatever $http_proxy says; the usual handling otherwise."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return _DIRECT if host in _LOCAL_HOSTS else urllib.request.build_opener()


def _request(method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, bytes]:
    """Returns (status, body) for any HTTP status; raises WorkflowError for network failures."""
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _opener(url).open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except Exception:  # noqa: BLE001
            body = b""
        return exc.code, body
    except (urllib.error.URLError, OSError) as exc:
        base = url.split("/", 3)
        raise WorkflowError(_describe_url_error("/".join(base[:3]), exc)) from exc


def _json_request(method: str, url: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None
    headers = {}
    if payload is not None:
        data = json.dumps(payload).encode("utf-8")
        headers["Content-Type"] = "application/json"
    status, body = _request(method, url, data=data, headers=headers, timeout=timeout)
    try:
        parsed = json.loads(body.decode("utf-8")) if body else None
    except (ValueError, UnicodeDecodeError):
        parsed = body.decode("utf-8", "replace")
    return status, parsed


def get_json(url: str, path: str, timeout: float = 30.0) -> Any:
    status, body = _json_request("GET", normalize_url(url) + path, timeout=timeout)
    if status != 200:
        raise WorkflowError(f"GET {path} on {url} failed with HTTP {status}: {_short(body)}")
    return body


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Workflow editing
# --------------------------------------------------------------------------------------------

def load_workflow(path: str | os.PathLike) -> dict:
    """Reads an API-format workflow (``{"id": {"class_type", "inputs"}}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"Workflow file {path} does not exist.") from None
    except ValueError as exc:
        raise WorkflowError(f"Workflow file {path} is not valid JSON: {exc}.") from None
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict) and "nodes" not in data:
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"{path} is a UI-format workflow (what the ComfyUI editor saves). This script needs the "
            f"API format: use the matching file in workflows/api/, or export it from ComfyUI with "
            f"'Export (API)'.")
    check_api_workflow(data, str(path))
    return data


def check_api_workflow(workflow: Any, name: str = "workflow") -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError(f"{name} is not an API-format workflow (expected a JSON object of nodes).")
    for key, node in workflow.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise WorkflowError(f"{name}: node {key!r} has no class_type, so this is not an API-format workflow.")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{name}: node {key!r} has inputs that are not a JSON object.")


def _title(node: Mapping) -> str | None:
    meta = node.get("_meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("title"), str):
        return meta["title"]
    return None


def _node_label(workflow: Mapping, node_id: str) -> str:
    node = workflow.get(node_id, {}) if isinstance(workflow, Mapping) else {}
    cls = node.get("class_type", "?") if isinstance(node, Mapping) else "?"
    title = _title(node) if isinstance(node, Mapping) else None
    label = f"node {node_id} ({cls}"
    if title and title != cls:
        label += f' "{title}"'
    return label + ")"


def resolve_node(workflow: Mapping, key: str) -> str:
    """Returns the node id for ``key``: an API-format id, or a unique ``_meta.title``."""
    key = str(key)
    if key in workflow:
        return key
    matches = [nid for nid, node in workflow.items() if _title(node) == key]
    if not matches:
        folded = key.casefold()
        matches = [nid for nid, node in workflow.items() if (_title(node) or "").casefold() == folded]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(f"{nid}={n.get('class_type')}" + (f' "{_title(n)}"' if _title(n) else "")
                        for nid, n in workflow.items())
    if len(matches) > 1:
        raise WorkflowError(f"Node title {key!r} is not unique (nodes {', '.join(matches)}); "
                            f"address the node by its id instead. Nodes: {listing}.")
    raise WorkflowError(f"No node {key!r} in the workflow (neither an id nor a title). Nodes: {listing}.")


def parse_value(text: str) -> Any:
    """JSON value if ``text`` parses as JSON, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_target(workflow: Mapping, target: str) -> tuple[str, str]:
    """Splits ``NODE.INPUT`` where NODE may itself contain dots (a title)."""
    if "." not in target:
        raise WorkflowError(f"--set target {target!r} must look like NODE.INPUT (e.g. 7.steps).")
    head, _, tail = target.rpartition(".")
    try:
        return resolve_node(workflow, head), tail
    except WorkflowError:
        # An input name cannot contain a dot, but try every split in case of odd titles.
        parts = target.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                return resolve_node(workflow, ".".join(parts[:i])), ".".join(parts[i:])
            except WorkflowError:
                continue
        raise


def _pairs(items: Mapping | Iterable | None) -> list[tuple[str, Any]]:
    if not items:
        return []
    if isinstance(items, Mapping):
        return [(str(k), v) for k, v in items.items()]
    out = []
    for item in items:
        if isinstance(item, str):
            if "=" not in item:
                raise WorkflowError(f"{item!r} must look like KEY=VALUE.")
            k, _, v = item.partition("=")
            out.append((k.strip(), v))
        else:
            k, v = item
            out.append((str(k), v))
    return out


def apply_overrides(workflow: Mapping, overrides: Mapping | Iterable | None,
                    object_info: Mapping | Callable | None = None) -> dict:
    """Returns a copy of ``workflow`` with ``{"NODE.INPUT": value}`` overrides applied.

    Values given as strings from the command line (``"NODE.INPUT=VALUE"`` items) are parsed as
    JSON; values in a mapping are used as they are. With ``object_info`` (the server's
    ``/object_info``, or a function class_type -> that node's entry), setting an input that is
    not in the workflow and that the node does not have is an error (typos fail loudly).
    """
    wf = copy.deepcopy(dict(workflow))
    for target, value in _pairs(overrides):
        if not isinstance(overrides, Mapping) and isinstance(value, str):
            value = parse_value(value)
        node_id, name = _split_target(wf, target)
        node = wf[node_id]
        inputs = node.setdefault("inputs", {})
        if name not in inputs and object_info is not None:
            known = _known_inputs(object_info, node.get("class_type"))
            if known is not None and name not in known:
                raise WorkflowError(
                    f"Cannot set {target}: {_node_label(wf, node_id)} has no input {name!r}. "
                    f"Its inputs are: {', '.join(known) or '(none)'}.", node_id=node_id)
        inputs[name] = value
    return wf


def _known_inputs(object_info, class_type: str | None) -> list[str] | None:
    if not class_type:
        return None
    info = object_info(class_type) if callable(object_info) else object_info.get(class_type)
    if not isinstance(info, Mapping):
        return None
    names: list[str] = []
    for section in ("required", "optional"):
        names.extend((info.get("input") or {}).get(section, {}) or {})
    return names


def _multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "----comfy-run-workflow-" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content, ctype) in files.items():
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode())
        chunks.append(content)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def upload_image(url: str, path: str | os.PathLike, *, subfolder: str = "", timeout: float = 60.0) -> str:
    """Uploads a file to the server's input folder; returns the value for a LoadImage ``image`` input."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"Cannot read image {path}: {exc.strerror or exc}.") from None
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    fields = {"type": "input", "overwrite": "false"}
    if subfolder:
        fields["subfolder"] = subfolder
    body, content_type = _multipart(fields, {"image": (path.name, content, ctype)})
    status, raw = _request("POST", normalize_url(url) + "/upload/image", data=body,
                           headers={"Content-Type": content_type}, timeout=timeout)
    if status != 200:
        raise WorkflowError(f"Uploading {path} to {url} failed with HTTP {status}: "
                            f"{_short(raw.decode('utf-8', 'replace')) or 'no details'}.")
    reply = json.loads(raw.decode("utf-8"))
    name = reply["name"]
    sub = reply.get("subfolder") or ""
    return f"{sub}/{name}" if sub else name


def apply_images(url: str, workflow: Mapping, images: Mapping | Iterable | None, *,
                 input_name: str = "image", timeout: float = 60.0) -> dict:
    """Uploads each ``{NODE: PATH}`` and sets that node's ``image`` input to the uploaded name."""
    wf = copy.deepcopy(dict(workflow))
    for key, path in _pairs(images):
        node_id = resolve_node(wf, key)
        wf[node_id].setdefault("inputs", {})[input_name] = upload_image(url, path, timeout=timeout)
    return wf


# --------------------------------------------------------------------------------------------
# Queueing, waiting, error reports
# --------------------------------------------------------------------------------------------

def _input_of(error: Mapping) -> str | None:
    extra = error.get("extra_info") or {}
    name = extra.get("input_name") if isinstance(extra, Mapping) else None
    return name


def format_node_errors(workflow: Mapping, node_errors: Mapping) -> list[str]:
    parts = []
    for node_id, entry in (node_errors or {}).items():
        for err in entry.get("errors", []) or []:
            label = _node_label(workflow, str(node_id))
            if label.endswith("(?)") and entry.get("class_type"):
                label = f"node {node_id} ({entry['class_type']})"
            name = _input_of(err)
            where = f'{label}, input "{name}"' if name else label
            msg = err.get("message", "error")
            details = err.get("details")
            extra = err.get("extra_info") or {}
            text = f"{where}: {msg}"
            if details and details != name:
                text += f" ({details})"
            if isinstance(extra, Mapping) and extra.get("received_value") is not None:
                received = _short(extra["received_value"], 80)
                if received not in text:
                    text += f"; received {received}"
            if isinstance(extra, Mapping) and extra.get("exception_message"):
                text += f"; {extra['exception_message']}"
            parts.append(text)
    return parts


def format_rejection(workflow: Mapping, reply: Any, status: int) -> tuple[str, str | None]:
    """One paragraph for a ``POST /prompt`` refusal, plus the first node id it blames."""
    if not isinstance(reply, Mapping):
        return f"ComfyUI refused the prompt (HTTP {status}): {_short(reply) if reply else 'no details'}.", None
    err = reply.get("error") or {}
    node_errors = reply.get("node_errors") or {}
    if isinstance(err, str):
        err = {"message": err}
    parts = format_node_errors(workflow, node_errors)
    first_node = next(iter(node_errors), None)
    head = err.get("message") or "invalid prompt"
    if err.get("type") in ("invalid_prompt", "missing_node_type") and err.get("details"):
        # e.g. "Cannot execute because node Foo does not exist." / "Node ID '#3'"
        nid = str(err["details"]).replace("Node ID", "").strip(" '#")
        if nid in workflow:
            first_node = nid
            head = f"{head.rstrip('.')} ({_node_label(workflow, nid)})"
            if "does not exist" in head or err.get("type") == "missing_node_type":
                head += ". The custom node pack that provides it is probably not installed or failed to import"
        else:
            head = f"{head.rstrip('.')} ({err['details']})"
    elif not parts and err.get("details"):
        head = f"{head.rstrip('.')}: {_short(err['details'])}"
    text = f"ComfyUI rejected the workflow (HTTP {status}): {head.rstrip('.')}."
    if parts:
        text += " " + "; ".join(parts) + "."
    return text, (str(first_node) if first_node is not None else None)


def queue_prompt(url: str, workflow: Mapping, *, client_id: str | None = None, timeout: float = 60.0,
                 strict: bool = True) -> str:
    """POSTs ``/prompt``; returns the prompt id. Raises WorkflowError with the server's reasons."""
    url = normalize_url(url)
    payload = {"prompt": workflow, "client_id": client_id or uuid.uuid4().hex}
    status, reply = _json_request("POST", url + "/prompt", payload, timeout=timeout)
    if status != 200 or not isinstance(reply, Mapping) or "prompt_id" not in reply:
        message, node_id = format_rejection(workflow, reply, status)
        raise WorkflowError(message, node_id=node_id, details=reply)
    node_errors = reply.get("node_errors") or {}
    if node_errors and strict:
        # Part of the graph failed validation; ComfyUI queued only the valid outputs.
        _json_request("POST", url + "/queue", {"delete": [reply["prompt_id"]]}, timeout=timeout)
        parts = format_node_errors(workflow, node_errors)
        raise WorkflowError("ComfyUI accepted only part of the workflow, so it was cancelled: "
                            + "; ".join(parts) + ".", node_id=str(next(iter(node_errors))), details=reply)
    return reply["prompt_id"]


def format_execution_error(workflow: Mapping, messages: Iterable) -> tuple[str, str | None]:
    for item in messages or []:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            continue
        kind, data = item
        if kind == "execution_error" and isinstance(data, Mapping):
            node_id = str(data.get("node_id"))
            label = _node_label(workflow, node_id)
            if "(?" in label and data.get("node_type"):
                label = f"node {node_id} ({data['node_type']})"
            exc_type = (data.get("exception_type") or "").rsplit(".", 1)[-1]
            exc_msg = " ".join(str(data.get("exception_message") or "").split())
            text = f"ComfyUI failed while running {label}: {exc_type + ': ' if exc_type else ''}{exc_msg}"
            tb = data.get("traceback") or []
            if tb and not exc_type.endswith(("InputError", "ValueError")):  # user errors: message suffices
                last = " ".join(str(tb[-1]).split())
                text += f" [at {_short(last, 200)}]"
            return text.rstrip(".") + ".", node_id
        if kind == "execution_interrupted" and isinstance(data, Mapping):
            node_id = data.get("node_id")
            where = f" at {_node_label(workflow, str(node_id))}" if node_id else ""
            return f"The workflow was interrupted{where} (someone pressed Cancel or called /interrupt).", \
                (str(node_id) if node_id else None)
    return "", None


def wait_for_prompt(url: str, prompt_id: str, workflow: Mapping | None = None, *, timeout: float = 600.0,
                    poll: float = 0.5) -> dict:
    """Polls ``GET /history/<id>`` until the prompt finished; returns its history entry.

    ComfyUI adds a prompt to the history only when it has finished (successfully or not).
    """
    url = normalize_url(url)
    workflow = workflow or {}
    deadline = time.monotonic() + timeout
    delay = 0.05
    checks = 0
    history_url = f"{url}/history/{urllib.parse.quote(prompt_id)}"
    while True:
        status, reply = _json_request("GET", history_url, timeout=30)
        if status == 200 and isinstance(reply, Mapping) and prompt_id in reply:
            entry = reply[prompt_id]
            st = entry.get("status") or {}
            if st.get("status_str") == "error" or st.get("completed") is False:
                message, node_id = format_execution_error(workflow, st.get("messages"))
                raise WorkflowError(message or f"ComfyUI reported an error for prompt {prompt_id} "
                                    f"(status {_short(st)}).", node_id=node_id, details=entry)
            return entry
        checks += 1
        if time.monotonic() >= deadline:
            where = _queue_position(url, prompt_id)
            raise WorkflowError(f"Timed out after {round(timeout):d} s waiting for prompt {prompt_id} on {url} "
                                f"({where}; it keeps running there unless you cancel it). Raise --timeout, "
                                f"or check the server log.")
        if checks % 30 == 0 and _queue_position(url, prompt_id) == "not in the queue":
            # Finished between the two requests, or lost (server restarted / queue cleared).
            status, reply = _json_request("GET", history_url, timeout=30)
            if not (isinstance(reply, Mapping) and prompt_id in reply):
                raise WorkflowError(f"Prompt {prompt_id} disappeared from {url}: it is neither queued nor in "
                                    f"the history (was the server restarted or the queue cleared?).")
            continue
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, poll)


def _queue_position(url: str, prompt_id: str) -> str:
    try:
        status, q = _json_request("GET", url + "/queue", timeout=10)
    except WorkflowError:
        return "server not answering"
    if status != 200 or not isinstance(q, Mapping):
        return "queue unknown"
    if any(len(item) > 1 and item[1] == prompt_id for item in q.get("queue_running", [])):
        return "still running"
    pending = [item for item in q.get("queue_pending", []) if len(item) > 1]
    pending.sort(key=lambda item: item[0])
    for i, item in enumerate(pending):
        if item[1] == prompt_id:
            return f"still queued, {i} prompt(s) ahead"
    return "not in the queue"


def output_images(entry: Mapping) -> list[dict]:
    """Every ``{"filename", "subfolder", "type"}`` in a history entry's outputs, in node order."""
    found = []
    outputs = entry.get("outputs") or {}

    def node_key(k: str):
        return (0, int(k)) if str(k).isdigit() else (1, str(k))

    for node_id in sorted(outputs, key=node_key):
        for key, items in (outputs[node_id] or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and item.get("filename"):
                    found.append({"node_id": str(node_id), "filename": item["filename"],
                                  "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")})
    return found


def _free_path(out_dir: Path, name: str) -> Path:
    name = Path(name).name or "image.png"
    target = out_dir / name
    stem, suffix = os.path.splitext(name)
    i = 1
    while target.exists():
        target = out_dir / f"{stem}_{i}{suffix}"
        i += 1
    return target


def write_new_file(out_dir: Path, name: str, content: bytes) -> Path:
    """Writes ``content`` atomically under a name that does not exist yet; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=out_dir)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        while True:
            target = _free_path(out_dir, name)
            try:
                os.link(tmp, target)  # fails if target exists: never overwrites
            except FileExistsError:
                continue
            except OSError:
                if target.exists():
                    continue
                os.replace(tmp, target)  # filesystems without hard links
            return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download_images(url: str, images: Iterable[Mapping], out_dir: str | os.PathLike, *,
                    timeout: float = 60.0) -> list[Path]:
    url = normalize_url(url)
    out = Path(out_dir)
    paths = []
    for img in images:
        query = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                        "type": img.get("type", "output")})
        status, body = _request("GET", f"{url}/view?{query}", timeout=timeout)
        if status != 200:
            raise WorkflowError(f"Downloading output {img['filename']!r} (node {img.get('node_id')}) from "
                                f"{url}/view failed with HTTP {status}.")
        paths.append(write_new_file(out, img["filename"], body))
    return paths


def run_prompt(url: str, workflow: Mapping, *, out_dir: str | os.PathLike | None = "out",
               timeout: float = 600.0, client_id: str | None = None) -> dict:
    """Queues an already prepared workflow, waits, downloads. Returns a dict with
    ``prompt_id``, ``entry`` (the history entry), ``images`` and ``paths``."""
    url = normalize_url(url)
    start = time.monotonic()
    prompt_id = queue_prompt(url, workflow, client_id=client_id)
    remaining = max(1.0, timeout - (time.monotonic() - start))
    entry = wait_for_prompt(url, prompt_id, workflow, timeout=remaining)
    images = output_images(entry)
    paths = download_images(url, images, out_dir) if out_dir is not None else []
    return {"prompt_id": prompt_id, "entry": entry, "images": images, "paths": paths,
            "seconds": time.monotonic() - start}


def submit_workflow(url: str, workflow: Mapping | str | os.PathLike, images: Mapping | Iterable | None = None,
                    overrides: Mapping | Iterable | None = None, out_dir: str | os.PathLike = "out",
                    timeout: float = 600.0, *, check_inputs: bool = True) -> list[Path]:
    """Uploads ``images``, applies ``overrides``, runs the workflow and saves its images.

    ``workflow`` is an API-format dict or a path to one. ``images`` maps node (id or title) to a
    local image path; ``overrides`` maps ``"NODE.INPUT"`` to a value (or is a list of
    ``"NODE.INPUT=JSON"`` strings). Returns the paths written under ``out_dir``.
    Raises :class:`WorkflowError` with a readable message on any failure.
    """
    url = normalize_url(url)
    if not isinstance(workflow, Mapping):
        workflow = load_workflow(workflow)
    check_api_workflow(workflow)
    object_info = None
    if check_inputs:
        def object_info(class_type: str):
            info = get_json(url, "/object_info/" + urllib.parse.quote(class_type), timeout=60)
            return info.get(class_type) if isinstance(info, Mapping) else None
    wf = apply_overrides(workflow, overrides, object_info)
    wf = apply_images(url, wf, images)
    return run_prompt(url, wf, out_dir=out_dir, timeout=timeout)["paths"]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run an API-format ComfyUI workflow on a ComfyUI server and download its images.")
    p.add_argument("workflow", help="API-format workflow JSON (e.g. workflows/api/NAME.json)")
    p.add_argument("--url", default=os.environ.get("COMFYUI_URL", DEFAULT_URL),
                   help=f"ComfyUI server (default: $COMFYUI_URL or {DEFAULT_URL})")
    p.add_argument("--image", action="append", default=[], metavar="NODE=PATH",
                   help="upload PATH and use it as NODE's image input (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="overrides",
                   help="override an input; VALUE is JSON if it parses, else a string (repeatable)")
    p.add_argument("--out", default="out", help="folder for the output images (default: out)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (default: 600)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        images = []
        for item in args.image:
            if "=" not in item:
                raise WorkflowError(f"--image {item!r} must look like NODE=PATH (e.g. 3=photo.png).")
            images.append(tuple(item.split("=", 1)))
        for item in args.overrides:
            if "=" not in item:
                raise WorkflowError(f"--set {item!r} must look like NODE.INPUT=VALUE (e.g. 7.steps=20).")
        start = time.monotonic()
        paths = submit_workflow(args.url, args.workflow, images, args.overrides, args.out, args.timeout)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (the prompt may still be running on the server)", file=sys.stderr)
        return 130
    if not paths:
        print(f"done in {time.monotonic() - start:.1f} s; the workflow produced no images", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
