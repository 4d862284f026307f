#!/usr/bin/env bash
# GPU check for the vLLM backend, run on a lent GPU machine (never in CI):
#   1. vLLM from wheels: already importable, or installed from .whl/ (carried with the tree);
#   2. the model: $GPU_CHECK_MODEL if set (a local Hugging Face folder), else the bundled
#      Gemma 3 270M GGUF through vLLM's GGUF loader (tokenizer: $GPU_CHECK_TOKENIZER);
#   3. the GPU-marked tests (tests/gpu), then a short throughput run;
# everything it prints and measures goes to $OUT (default: a temporary folder).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ! $PY -c "import vllm" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  fi
fi
if ! $PY -c "import vllm; print('vllm', vllm.__version__)"; then
  echo "vLLM is not importable here and no wheels were carried in .whl/: nothing to check."
  echo '{"vllm_available": false}' > "$OUT/gpu_check.json"
  exit 2
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
if [ -z "${GPU_CHECK_MODEL:-}" ]; then
  GPU_CHECK_MODEL=$($PY -c "from ragserve.generation.models import bundled_gguf; print(bundled_gguf())")
fi
export GPU_CHECK_MODEL
echo "== model: $GPU_CHECK_MODEL"

echo "== tests"
$PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}

echo "== throughput"
$PY -m benchmarks.generation_gpu --model "$GPU_CHECK_MODEL" --json "$OUT/gpu_throughput.json"
exit $status
