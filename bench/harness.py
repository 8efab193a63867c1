"""What every bench script shares: importing the host on the right device, running API graphs
in-process through ComfyUI's own executor (tests/pack_testing.py's GraphRunner), measuring wall
time and peak memory of one graph run, and describing the machine.

Peak memory, the one number that means something on both devices:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the model weights
  that stay loaded between cases are included: it is what the card must hold).
- CPU: the growth of the process's peak resident set during the run. Before each run freed heap is
  handed back to the OS (glibc ``malloc_trim``) and the kernel's high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``); afterwards ``VmHWM`` (peak RSS) minus the RSS at the start
  is what the run added on top of the already loaded weights. If the high-water mark cannot be
  reset, a 2 ms sampling thread reading ``/proc/self/statm`` is used instead (it can miss short
  spikes; the method used is recorded with every figure).
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
for _p in (REPO / "tools", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


# --- host ------------------------------------------------------------------------------------


def import_host(device: str) -> None:
    """Import ComfyUI in-process: ``--cpu`` for ``device == "cpu"``, default (CUDA) otherwise.

    Same sequence as tools/comfy_host.py (which always picks the CPU, as the tests want); once the
    host is imported, pack_testing's own import_host() is a no-op, so the graph runner uses it."""
    import comfy_host

    if "comfy.model_management" in sys.modules:
        return
    host = str(comfy_host.host_dir())
    if host not in sys.path:
        sys.path.insert(0, host)
    saved_argv = sys.argv
    sys.argv = [sys.argv[0]] + (["--cpu"] if device == "cpu" else [])
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
        import utils.extra_config  # noqa: F401
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = saved_argv


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device on this machine "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}).")
    return requested


class _BenchLatent:
    """Bench-only source node: a deterministic unit-std latent that stands for an encoded image.

    ``run`` is part of the cache key, so changing it makes ComfyUI's cache re-run everything
    downstream (each repeat is measured afresh) while the loaders and text encoders stay cached."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64}), "height": ("INT", {"default": 64}),
                             "seed": ("INT", {"default": 0}), "run": ("INT", {"default": 0, "min": 0})},
                "optional": {"channels": ("INT", {"default": 4, "min": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "bench"

    def make(self, width, height, seed, run, channels=4):
        import torch

        g = torch.Generator().manual_seed(seed)
        return ({"samples": torch.randn(1, channels, height // 8, width // 8, generator=g)},)


class _BenchTouch:
    """Bench-only pass-through: the latent unchanged, with ``run`` in its cache key, so only the
    nodes after it re-run (e.g. a guided sampling from a cached inversion)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "run": ("INT", {"default": 0, "min": 0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "touch"
    CATEGORY = "bench"

    def touch(self, latent, run):
        return (dict(latent),)


MODEL_KINDS = ("checkpoints", "diffusion_models", "text_encoders", "vae")  # what bench folders hold (bench/models.py)


def add_model_folders(folders) -> None:
    """ComfyUI searches ``folders`` for checkpoints, diffusion models, text encoders and VAEs."""
    import folder_paths

    for folder in folders:
        for kind in MODEL_KINDS:
            folder_paths.add_model_folder_path(kind, str(folder), is_default=True)


def make_runner(extra_checkpoint_dirs: list[Path] = ()):
    """pack_testing's GraphRunner with the pack, ``Capture``, ``BenchLatent`` and ``BenchTouch``;
    ``extra_checkpoint_dirs`` are searched for every model kind of ``MODEL_KINDS``."""
    import pack_testing
    import nodes

    runner = pack_testing.make_graph_runner()
    add_model_folders(extra_checkpoint_dirs)
    nodes.NODE_CLASS_MAPPINGS["BenchLatent"] = _BenchLatent
    nodes.NODE_CLASS_MAPPINGS["BenchTouch"] = _BenchTouch
    import translation

    translation.register()
    return runner


# --- measuring -------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class _CpuPeak:
    """Peak RSS growth during a block (see the module docstring)."""

    def __enter__(self):
        import gc

        gc.collect()
        _malloc_trim()
        self.method = "VmHWM after clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._sampler = None
        except OSError:
            self.method = "RSS sampled every 2 ms"
            self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        self.start = _rss_bytes()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        if self._sampler is None:
            self.peak = _hwm_bytes()
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self._peak, _rss_bytes())
        self.growth = max(0, self.peak - self.start)
        return False


@dataclass
class Sample:
    seconds: float
    peak_bytes: int          # CUDA: max allocated; CPU: peak RSS growth
    start_bytes: int         # CUDA: allocated at start; CPU: RSS at start


class measure_block:
    """``with measure_block(device) as m: ...``; afterwards ``m.sample`` holds the block's wall time
    (synchronised on CUDA) and peak memory."""

    def __init__(self, device: str):
        self.device = device
        self.sample: Sample | None = None

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._peak = _CpuPeak().__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            seconds = time.perf_counter() - self._t0
            self.sample = Sample(seconds, torch.cuda.max_memory_allocated(), self._start)
        else:
            seconds = time.perf_counter() - self._t0
            self._peak.__exit__(*exc)
            self.sample = Sample(seconds, self._peak.growth, self._peak.start)
        return False


def measure(fn, device: str) -> Sample:
    """Runs ``fn()`` once; wall time (synchronised) and peak memory."""
    with measure_block(device) as block:
        fn()
    return block.sample


def cpu_memory_method() -> str:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "peak RSS growth (VmHWM after clear_refs, malloc_trim before)"
    except OSError:
        return "peak RSS growth (RSS sampled every 2 ms, malloc_trim before)"


def median(values):
    return statistics.median(values) if values else None


# --- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def comfyui_version() -> str:
    import comfy_host

    path = comfy_host.host_dir() / "comfyui_version.py"
    try:  # read, not executed: the file is one `__version__ = "x.y.z"` line
        match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", path.read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: str) -> dict:
    import torch

    info = {"device": device, "cpu": _cpu_model(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "comfyui": comfyui_version(), "python": platform.python_version(), "pack_commit": git_commit()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def device_slug(info: dict) -> str:
    if info["device"] == "cuda":
        name = info["gpu"].lower().replace("nvidia", "").strip()
        return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")
    return "cpu"


def today() -> str:
    return _dt.date.today().isoformat()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Timer:
    label: str
    t0: float = field(default_factory=time.perf_counter)

    def done(self) -> float:
        return time.perf_counter() - self.t0
