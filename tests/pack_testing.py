"""Shared test helpers (imported by conftest.py and by test modules as ``pack_testing``).

- The pack is imported as the package ``exemplar_edit`` from the repository root, whatever
  the checkout folder is called.
- Tests marked ``host`` need ComfyUI: ``COMFYUI_PATH`` or the pinned host in ``.host/ComfyUI``
  (``make setup``). The host is imported once per session in CPU mode.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / ".cache" / "checkpoints"
FLUX_FILES = REPO / ".cache" / "flux"  # diffusion_models/, vae/, text_encoders/ (tools/make_test_checkpoints.py)
FLUX_FOLDERS = ("diffusion_models", "vae", "text_encoders")
PACKAGE = "exemplar_edit"

sys.path.insert(0, str(REPO / "tools"))
import comfy_host  # noqa: E402  (tools/comfy_host.py: where the host is, how to import it)


def _import_pack() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


_import_pack()

def import_host() -> None:
    """Put ComfyUI on sys.path and import it in CPU mode, as `main.py --cpu` would."""
    try:
        comfy_host.import_host()
    except comfy_host.HostNotFound as e:
        pytest.exit(str(e), returncode=2)


def checkpoint_path(name: str) -> Path:
    path = CHECKPOINTS / name
    if not path.exists():
        pytest.exit(f"test checkpoint {path} missing: run `make setup`", returncode=2)
    return path


def relative_error(a, b) -> float:
    """mean |a - b| / mean |b| of two tensors."""
    return float((a - b).abs().mean() / b.abs().mean())


# --- a small CLIP vision model (random weights, deterministic) --------------------------------

TINY_VISION_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 224,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 14, "projection_dim": 768, "torch_dtype": "float32",
}
"""A 2-layer, 64-wide ViT with ViT-L/14's patch size, input size and 768-d projection: ComfyUI's
``ClipVisionModel`` of this config encodes like the real one, in milliseconds."""


def make_tiny_clip_vision(folder: Path):
    """ComfyUI's ``ClipVisionModel`` of :data:`TINY_VISION_CONFIG` (its config file written to
    ``folder``), with fan-in scaled random weights from the e2e test CLIP's seeded generator."""
    import json
    import math

    import comfy.clip_vision
    import torch
    from make_test_clip import _randn  # tools/: the same seeded generator as the e2e test CLIP

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny_clip_vision.json"
    config.write_text(json.dumps(TINY_VISION_CONFIG))
    vision = comfy.clip_vision.ClipVisionModel(str(config))
    sd = {}
    for name, tensor in vision.get_sd().items():
        if tensor.ndim == 1:
            is_norm = ("layer_norm" in name or "layrnorm" in name or "layernorm" in name) and name.endswith("weight")
            sd[name] = torch.ones(tensor.shape) if is_norm else _randn(name, tensor.shape, 0.02)
        else:
            fan_in = int(math.prod(tensor.shape[1:]))
            sd[name] = _randn(name, tensor.shape, 1.0 / math.sqrt(fan_in))
    missing, _ = vision.load_sd(sd)
    assert not missing, missing
    return vision


class TinyCLIPVisionLoader:
    """Test-only loader node: the small random CLIP vision model (built once per session). Its
    config file goes to ``folder`` (a temporary folder when none was set)."""

    folder: Path | None = None
    _cached = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        if TinyCLIPVisionLoader._cached is None:
            folder = TinyCLIPVisionLoader.folder
            if folder is None:
                import atexit
                import shutil
                import tempfile

                folder = Path(tempfile.mkdtemp(prefix="ee_clip_vision_"))
                atexit.register(shutil.rmtree, folder, True)
            TinyCLIPVisionLoader._cached = make_tiny_clip_vision(folder)
        return (TinyCLIPVisionLoader._cached,)


# --- running API-format graphs through ComfyUI's own validator and executor, in-process -------

CAPTURED: dict[str, tuple] = {}


class _Capture:
    """Test-only output node: keeps whatever reaches it in CAPTURED[key]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": "out"})}, "optional": {"value": ("*", {})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never cached: every run captures afresh

    def capture(self, key, value=None):
        CAPTURED[key] = value
        return {}


WRAPPER_CALLS: dict[str, int] = {}


class _OtherPacksSamplerWrapper:
    """Test-only node: what another pack does to a model, a SAMPLER_SAMPLE wrapper (pass-through,
    counting its calls in WRAPPER_CALLS[key])."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "key": ("STRING", {"default": "other_pack"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def patch(self, model, key):
        import comfy.patcher_extension

        def wrapper(executor, *args, **kwargs):
            WRAPPER_CALLS[key] = WRAPPER_CALLS.get(key, 0) + 1
            return executor(*args, **kwargs)

        patched = model.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, key, wrapper)
        return (patched,)


class GraphError(RuntimeError):
    """A graph failed validation or execution; the message is ComfyUI's."""


class _StubServer:
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class GraphRunner:
    def __init__(self):
        import execution

        self._execution = execution
        self.server = _StubServer()
        # ComfyUI's default (classic) cache, as the server uses: unchanged loader nodes are not
        # re-run between graphs, so each checkpoint loads once.
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        self._count = 0

    def validate(self, prompt: dict) -> tuple[bool, dict, list, dict]:
        import asyncio

        self._count += 1
        return asyncio.run(self._execution.validate_prompt(str(self._count), prompt, None))

    def run(self, prompt: dict) -> dict:
        """Validates and executes ``prompt``; returns CAPTURED for its Capture nodes."""
        ok, error, outputs, node_errors = self.validate(prompt)
        # ComfyUI runs the outputs that validate and drops the others (their node_errors): a test
        # graph counts as refused when any node failed validation
        if not ok or node_errors:
            raise GraphError(f"validation failed: {error} {node_errors}")
        CAPTURED.clear()
        self.server.messages.clear()
        self.executor.execute(prompt, str(self._count), {}, outputs)
        if not self.executor.success:
            errors = [d for e, d in self.server.messages if e == "execution_error"]
            detail = errors[0] if errors else self.executor.status_messages
            raise GraphError(f"execution failed: {detail}")
        return dict(CAPTURED)


def make_graph_runner() -> GraphRunner:
    """Registers ComfyUI's built-in nodes, this pack's nodes and ``Capture``; returns a runner."""
    import asyncio

    import_host()
    import folder_paths
    import nodes

    folder_paths.add_model_folder_path("checkpoints", str(CHECKPOINTS), is_default=True)
    for kind in FLUX_FOLDERS:
        folder_paths.add_model_folder_path(kind, str(FLUX_FILES / kind), is_default=True)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    from exemplar_edit.nodes import ExemplarEditExtension

    for node_cls in asyncio.run(ExemplarEditExtension().get_node_list()):
        nodes.NODE_CLASS_MAPPINGS[node_cls.GET_SCHEMA().node_id] = node_cls
    nodes.NODE_CLASS_MAPPINGS["Capture"] = _Capture
    nodes.NODE_CLASS_MAPPINGS["OtherPacksSamplerWrapper"] = _OtherPacksSamplerWrapper
    return GraphRunner()


# --- FLUX-class test models -------------------------------------------------------------------

FLUX_WIDE = "test_flux_wide.safetensors"
FLUX_NARROW = "test_flux.safetensors"
FLUX_SCHNELL = "test_flux_schnell.safetensors"
FLUX_VAE = "test_flux_vae.safetensors"
FLUX_CLIP = "test_clip_l.safetensors"


def flux_file(kind: str, name: str) -> Path:
    path = FLUX_FILES / kind / name
    if not path.exists():
        pytest.exit(f"test model {path} missing: run `make setup`", returncode=2)
    return path


def host_loads_narrow_flux() -> bool:
    """Whether this ComfyUI detects a FLUX layout narrower than 3072 (heads = hidden / 128, ComfyUI
    0.33+); 0.3.75 fixes 24 heads, so only the 3072-wide test model loads there. Asked of the host's
    own detection on the narrow test model's weights."""
    return comfy_host.loads_narrow_flux(flux_file("diffusion_models", FLUX_NARROW))


def flux_model_for_host() -> str:
    """The FLUX-layout test model this host loads: the narrow one where it can, else the wide one."""
    import_host()
    return FLUX_NARROW if host_loads_narrow_flux() else FLUX_WIDE


def needs_narrow_flux() -> None:
    """Skips a test that needs a FLUX layout narrower than 3072 on hosts that cannot load one."""
    import_host()
    if not host_loads_narrow_flux():
        pytest.skip("this ComfyUI detects FLUX models of hidden size 3072 only (24 heads fixed, as 0.3.75); "
                    "the narrow FLUX test models load on ComfyUI 0.33+")


def flux_loaders(unet: str, first_id: int = 1) -> tuple[dict, list, list, list]:
    """API nodes loading a FLUX-layout test model with the stock loaders: UNETLoader, CLIPLoader (the
    test CLIP-L as its text encoder) and VAELoader. Returns (nodes, model, clip, vae) references."""
    a, b, c = (str(first_id + i) for i in range(3))
    nodes = {
        a: {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        b: {"class_type": "CLIPLoader", "inputs": {"clip_name": FLUX_CLIP, "type": "stable_diffusion"}},
        c: {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}},
    }
    return nodes, [a, 0], [b, 0], [c, 0]
