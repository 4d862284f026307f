# The two commands: `make serve` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
LLAMA_CPP_VERSION := 0.3.36

# llama.cpp is compiled for this CPU. Its AMX kernels crash where the CPU advertises AMX but the
# kernel or VM does not grant it (this project's machines), so they are left out on x86-64.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
else
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON
endif

.PHONY: install serve test lint index bench clean

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

index: install
	$(BIN)/ragserve index build --demo --if-missing

serve: index
	$(BIN)/ragserve serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.generation

clean:
	rm -rf $(VENV) indexes/python-docs .pytest_cache .ruff_cache
