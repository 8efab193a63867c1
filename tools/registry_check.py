#!/usr/bin/env python3
"""The Comfy Registry's publishing checks, run as a publisher would run them (``make validate``).

    python3 tools/registry_check.py [--archive out/node.zip]

1. ``comfy node validate`` (comfy-cli, pinned below; the check ``comfy node publish`` runs first:
   pyproject.toml's ``[project]``/``[tool.comfy]`` and ruff's S102/S307/E702 security rules) must
   pass with no warning. comfy-cli exits 0 on warnings ("this will be an error soon"), so its
   output is read: any warning fails here.
2. ``comfy node pack`` builds the archive the registry would get (git-tracked files minus
   ``.comfyignore``); it must hold what the pack needs at run time and none of the development
   files (:data:`REQUIRED`, :data:`LEFT_OUT`).

comfy-cli runs from its own environment ``.run/comfy-cli`` (created on first use, rebuilt when the
pin changes; never the project's ``.venv`` or a host's), with ``HOME`` pointed at a scratch folder
so it writes no configuration into the user's home, on a scratch copy of the git-tracked files, so
nothing is written into the checkout. Needs ``git`` and a Python 3.10+ with ``venv``; the first run
downloads comfy-cli from PyPI.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFY_CLI = "comfy-cli==1.23.0"
VENV = REPO / ".run" / "comfy-cli"
COMFY_FLAGS = ["--skip-prompt", "--no-enable-telemetry"]
PASSED = "All validation checks passed"

# What a user's ComfyUI loads: the entry point, the nodes, the node help and translations the
# frontend reads (WEB_DIRECTORY, locales/), the workflow templates with their thumbnails.
REQUIRED = ("__init__.py", "pyproject.toml", "LICENSE", "README.md", "nodes/__init__.py", "nodes/host/__init__.py",
            "core/__init__.py", "web/docs/", "locales/en/nodeDefs.json", "locales/zh/nodeDefs.json", "workflows/")
# Development files (.comfyignore): tests, benchmarks, tools but the documented client, the
# screenshots and research notes, CI.
LEFT_OUT = (".ci/", "bench/", "docs/", "tests/", "tools/", "Makefile", ".gitignore", ".comfyignore")
KEPT_TOOLS = {"tools/run_workflow.py"}


class CheckError(RuntimeError):
    pass


def archive_problems(names: list[str]) -> list[str]:
    """What is wrong with the archive's member list: a required entry missing, a development file in."""
    problems = []
    for need in REQUIRED:
        if not any(n == need or (need.endswith("/") and n.startswith(need)) for n in names):
            problems.append(f"missing from the archive: {need}")
    for name in names:
        if name in KEPT_TOOLS:
            continue
        if any(name == out or (out.endswith("/") and name.startswith(out)) for out in LEFT_OUT):
            problems.append(f"in the archive but not needed by users (add it to .comfyignore): {name}")
    return problems


def warnings_in(output: str) -> list[str]:
    """Lines of ``comfy node validate`` output that report a problem (it exits 0 on warnings)."""
    return [line for line in output.splitlines()
            if re.search(r"warning|error|detected|-->", line, re.IGNORECASE) and PASSED not in line]


def _run(cmd: list[str], *, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise CheckError(f"`{' '.join(cmd)}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def ensure_comfy_cli(python: str = sys.executable) -> Path:
    """``.run/comfy-cli/bin/comfy``, the environment (re)built when it is missing or the pin changed."""
    comfy = VENV / "bin" / "comfy"
    stamp = VENV / ".stamp"
    if comfy.is_file() and stamp.is_file() and stamp.read_text().strip() == COMFY_CLI:
        return comfy
    print(f"[validate] creating {VENV.relative_to(REPO)} with {COMFY_CLI}", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    _run([python, "-m", "venv", str(VENV)], cwd=REPO)
    _run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", COMFY_CLI], cwd=REPO)
    stamp.write_text(COMFY_CLI + "\n")
    return comfy


def stage_tracked_files(dest: Path) -> int:
    """Copies the git-tracked files (as they are in the working tree) into ``dest`` and makes it a git
    repository with them added, as a publisher's clone is. Returns the number of files."""
    listed = _run(["git", "ls-files", "-z", "--cached"], cwd=REPO).stdout.split("\0")
    count = 0
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    _run(["git", "init", "-q"], cwd=dest, env=env)
    _run(["git", "add", "-A"], cwd=dest, env=env)
    return count


def check(archive_out: Path | None = None) -> None:
    comfy = ensure_comfy_cli()
    with tempfile.TemporaryDirectory(prefix="exemplar-edit-registry-") as scratch:
        scratch = Path(scratch)
        home, stage = scratch / "home", scratch / "pack"
        home.mkdir()
        stage.mkdir()
        files = stage_tracked_files(stage)
        env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), NO_COLOR="1",
                   COLUMNS="200")

        t0 = time.monotonic()
        result = _run([str(comfy), *COMFY_FLAGS, "node", "validate"], cwd=stage, env=env, check=False)
        output = result.stdout + result.stderr
        print(output.rstrip(), flush=True)
        problems = warnings_in(output)
        if result.returncode != 0 or PASSED not in output or problems:
            raise CheckError("comfy node validate did not pass cleanly" + (":\n  " + "\n  ".join(problems)
                                                                          if problems else ""))
        print(f"[validate] comfy node validate: passed, no warning ({time.monotonic() - t0:.1f} s, {files} files)")

        result = _run([str(comfy), *COMFY_FLAGS, "node", "pack"], cwd=stage, env=env, check=False)
        archive = stage / "node.zip"
        if result.returncode != 0 or not archive.is_file():
            raise CheckError(f"comfy node pack failed:\n{result.stdout}{result.stderr}")
        with zipfile.ZipFile(archive) as z:
            names = sorted(z.namelist())
        problems = archive_problems(names)
        if problems:
            raise CheckError("the registry archive is wrong:\n  " + "\n  ".join(problems))
        tops = sorted({n.split("/")[0] + ("/" if "/" in n else "") for n in names})
        print(f"[validate] comfy node pack: {len(names)} files, {archive.stat().st_size / 1e6:.2f} MB: "
              + " ".join(tops))
        if archive_out:
            archive_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(archive, archive_out)
            print(f"[validate] archive copied to {archive_out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the Comfy Registry's publishing checks (comfy node validate, "
                                "comfy node pack) in a throwaway comfy-cli environment.")
    p.add_argument("--archive", type=Path, help="also keep the archive `comfy node pack` built here")
    args = p.parse_args(argv)
    try:
        check(args.archive)
    except (CheckError, OSError, subprocess.SubprocessError) as exc:
        print(f"[validate] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
