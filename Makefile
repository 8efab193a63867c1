# Two commands for a fresh machine: `make test` and `make demo`. Each sets up what it needs on
# first run (tools/setup.sh: .venv, the pinned ComfyUI in .host/, test checkpoints in .cache/)
# and reuses it afterwards. COMFYUI_PATH=/path/to/ComfyUI uses your own ComfyUI instead.
PY := .venv/bin/python
PORT ?= 8188
CKPT ?=
export CKPT

.PHONY: setup test test-unit test-browser test-hosts validate locales workflows help-pictures demo serve bench clean

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest -q -m "not browser"

# ComfyUI's real frontend in headless Chromium: opens every shipped workflow from the template
# browser, runs it on the test checkpoint, saves docs/screenshots/<workflow>.png.
test-browser:
	@bash tools/setup.sh --browser
	EXEMPLAR_BROWSER_REQUIRED=1 $(PY) -m pytest -q tests/browser

# The whole suite (unit, in-process graphs, real server, browser) once per ComfyUI host: the pinned
# one and each of $(COMFYUI_HOSTS) (default: the v0.33.0 release tree from ../shared/hosts), each in
# its own environment with the requirements that host names (tools/test_hosts.sh).
test-hosts:
	@bash tools/test_hosts.sh

# The Comfy Registry's publishing checks: `comfy node validate` with no warning, and what
# `comfy node pack` would upload (tools/registry_check.py; comfy-cli in its own .run/comfy-cli).
validate:
	python3 tools/registry_check.py

# Generated files, one command each (README, Development): locales/en from the node schemas (it
# lists what locales/zh then lacks), the UI workflows from workflows/api (layout, groups, Note), the
# help pages' pictures.
locales: setup
	$(PY) tools/node_locales.py

workflows: setup
	$(PY) tools/workflow_ui.py --all

help-pictures: setup
	$(PY) tools/help_pictures.py

test-unit: setup
	$(PY) -m pytest -q tests/unit

demo: setup
	$(PY) tools/demo.py

serve: setup
	$(PY) tools/serve.py --port $(PORT)

# Seconds per image, time per step and peak memory of every method against plain sampling in
# the same run (bench/README.md). CPU: the small test models; CUDA: real SD1.5/SDXL/FLUX.1 sizes.
bench: setup
	$(PY) bench/run.py

clean:
	rm -rf .run out
