"""tools/registry_check.py (``make validate``): how it reads comfy-cli's output and the archive."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import registry_check  # noqa: E402

# comfy-cli 1.23.0 on this pack before issue 20 (exit status 0)
WARNED = """Validating node configuration...
Running security checks...
Security warnings found:
S102 Use of `exec` detected
   --> bench/harness.py:268:9
    |
268 |         exec(path.read_text(), scope)
    |         ^^^^

We will soon disable exec and eval, and multiple statements in a single line, so
this will be an error soon.
"""
CLEAN = """Validating node configuration...
Running security checks...
✓ All validation checks passed successfully
"""

PACK = ["__init__.py", "pyproject.toml", "LICENSE", "README.md", "CHANGELOG.md", "nodes/__init__.py",
        "nodes/host/__init__.py", "core/__init__.py", "web/docs/DDIMInvert.md", "locales/en/nodeDefs.json",
        "locales/zh/nodeDefs.json", "workflows/inversion_roundtrip.json", "tools/run_workflow.py"]


def test_a_security_warning_fails_though_comfy_cli_exits_0():
    problems = registry_check.warnings_in(WARNED)
    assert any("S102" in line for line in problems) and any("bench/harness.py:268" in line for line in problems)
    assert registry_check.warnings_in(CLEAN) == []


def test_the_archive_of_the_pack_passes():
    assert registry_check.archive_problems(PACK) == []


def test_development_files_and_missing_pack_files_are_named():
    problems = registry_check.archive_problems([n for n in PACK if not n.startswith("locales/")]
                                               + ["tests/unit/test_x.py", "tools/serve.py", "docs/screenshots/a.png"])
    assert "missing from the archive: locales/en/nodeDefs.json" in problems
    for name in ("tests/unit/test_x.py", "tools/serve.py", "docs/screenshots/a.png"):
        assert any(p.endswith(f": {name}") for p in problems), problems
    assert not any("tools/run_workflow.py" in p for p in problems)


def test_comfyignore_names_every_left_out_folder():
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for out in registry_check.LEFT_OUT:  # anchored: "docs/" alone would also match web/docs/
        assert f"/{out}" in patterns or f"/{out.rstrip('/')}/*" in patterns, f"/{out} is not in .comfyignore"
    for kept in registry_check.KEPT_TOOLS:
        assert f"!/{kept}" in patterns
    assert not [p for p in patterns if not p.lstrip("!").startswith("/")], "unanchored patterns in .comfyignore"
