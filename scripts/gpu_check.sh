#!/usr/bin/env bash
# GPU check for the vLLM backend, run on a lent GPU machine (never in CI):
#   1. vLLM: already importable, or installed from wheels carried in .whl/ (see below);
#   2. the model: $RAGSERVE_VLLM_MODEL if set (a local Hugging Face folder), else the bundled
#      Gemma 3 270M GGUF exported to a Hugging Face folder (needs the gguf wheel);
#   3. tests/vllm (the same tests `make test` runs on vLLM's CPU build), then a throughput run;
# everything it prints and measures goes to $OUT (default: a temporary folder).
#
# Wheels: the device machines have torch but no vLLM and no network. Download on a networked
# machine, into .whl/ (ignored by git, named in the device call's `carry`), vLLM's wheel and the
# requirements the device lacks, for its Python and torch (see ../.library/device/README.md):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 -d .whl vllm==X gguf ...
# Each vLLM wheel pins one torch: vLLM 0.26.x is the newest pinning the device image's torch 2.11.0
# (CUDA 13), and its wheel is 289 MiB, while a device call carries at most 64 MiB. So the wheels
# must travel in pieces over consecutive calls to one warm machine (joined under /tmp there), or
# the device image must gain vLLM.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if ! $PY -c "import vllm; print('vllm', vllm.__version__)"; then
  echo "vLLM is not importable here and no wheels were carried in .whl/: nothing to check."
  echo '{"vllm_available": false}' > "$OUT/gpu_check.json"
  exit 2
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

echo "== tests"
$PY -m pytest -q tests/vllm -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}

echo "== throughput"
model_flag=()
[ -n "${RAGSERVE_VLLM_MODEL:-}" ] && model_flag=(--model "$RAGSERVE_VLLM_MODEL")
$PY -m benchmarks.generation_vllm "${model_flag[@]}" --streams 64 --max-tokens 128 --also-fast \
  --json "$OUT/gpu_throughput.json"
exit $status
