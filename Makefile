# Set-up and the two everyday commands. `make demo` and `make test` each set up what is missing:
# a virtual environment in .venv/, clm-local with its training, test and server extras (plus
# Debian's chromium for the web page's test, where apt runs as root), and the patched
# llama.cpp runtime (compiled once, then taken from the wheel cache in ~/.cache/clm-local).
#
#   make demo                      # the main job on the embedded default model
#   make test                      # the test suite (CI runs this)
#   make fuzz                      # 5,000 mutated GGUFs of six families through info and load (FUZZ_CASES=..., FUZZ_SEED=...)
#   make fuzz-server               # 5,000 hostile requests against a running server (FUZZ_SERVER_CASES=..., FUZZ_SEED=...)
#   make setup BACKEND=metal       # Apple GPUs; BACKEND=cuda for NVIDIA
#   make device-check BACKEND=cuda # build for this GPU, run runtime/family/server tests offloaded, bench
#   make setup TORCH=torch         # any torch you like (the pin keeps CI on the CPU wheel)

PYTHON  ?= python3
BACKEND ?= cpu
TORCH   ?= torch==2.13.0
FUZZ_CASES ?= 5000
FUZZ_SEED  ?= 1
FUZZ_SERVER_CASES ?= 5000
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-$(BACKEND)

.PHONY: setup demo test lint fuzz fuzz-server device-check

setup: $(STAMP)

$(STAMP): pyproject.toml clm_local/runtime/llama-cpp-pre-layer.patch clm_local/runtime/build.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[train,dev,serve]"
	# the web page's test drives Debian's headless Chromium: install it where apt runs as root
	if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver; fi
	$(BIN)/clm-local runtime install --backend $(BACKEND)
	touch $@

demo: $(STAMP)
	$(BIN)/clm-local demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_runner.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

fuzz-server: $(STAMP)
	$(BIN)/python tests/fuzz_server.py --cases $(FUZZ_SERVER_CASES) --seed $(FUZZ_SEED)

device-check: $(STAMP)
	$(BIN)/python tests/device_check.py --backend $(BACKEND)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
