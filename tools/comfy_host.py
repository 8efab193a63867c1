"""Where the ComfyUI host is, and how to import it in-process: one place for the tools and tests.

The host is ``$COMFYUI_PATH`` if set, else the pinned one that ``tools/setup.sh`` unpacks into
``.host/ComfyUI``. Importing it in-process follows ``main.py --cpu``: parse the CLI flags, import
ComfyUI's ``utils`` package first (later imports shadow the name otherwise), then the model code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class HostNotFound(FileNotFoundError):
    pass


def host_dir() -> Path:
    """The ComfyUI folder (it has ``main.py``), or HostNotFound saying how to get one."""
    host = Path(os.environ.get("COMFYUI_PATH") or REPO / ".host" / "ComfyUI")
    if not (host / "main.py").is_file():
        raise HostNotFound(f"ComfyUI not found at {host} (no main.py): run `make setup`, or set COMFYUI_PATH "
                           "to a ComfyUI checkout.")
    return host


def import_host() -> None:
    """Put ComfyUI on sys.path and import it in CPU mode, as `main.py --cpu` would (once)."""
    if "comfy.model_management" in sys.modules:
        return
    host = str(host_dir())
    if host not in sys.path:
        sys.path.insert(0, host)
    saved_argv = sys.argv
    sys.argv = [sys.argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu)
        import utils.extra_config  # noqa: F401  (main.py imports ComfyUI's `utils` package first)
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = saved_argv


def loads_narrow_flux(path: str | os.PathLike) -> bool:
    """Whether the imported host detects the FLUX-layout model at ``path`` (narrower than 3072) with
    heads = hidden / 128, as ComfyUI 0.33+ does; 0.3.75 fixes 24 heads, so only 3072-wide FLUX models
    load there. Asked of the host's own detection (``comfy.model_detection``) on the file's weights."""
    import_host()
    import comfy.model_detection
    from safetensors.torch import load_file

    config = comfy.model_detection.detect_unet_config(load_file(str(path)), "")
    return config is not None and config.get("num_heads") == config.get("hidden_size", 0) // 128
