#!/usr/bin/env bash
# GPU check for the vLLM backend, run on a lent GPU machine (never in CI). Three checks, each
# bounded in time, results under $OUT (default: a temporary folder):
#   1. tests/vllm: generator, server and upstream tests on CUDA -> pytest.log
#   2. throughput and batch invariance: benchmarks/generation_vllm.py, with and without the
#      batch-invariant settings                               -> gpu_throughput.json
#   3. token-identical speculation, when SPEC_TIMEOUT is set: `ragserve bench spec` (RaLMSpec
#      variants against the plain loop, BM25, HotpotQA) on the vLLM generator -> spec_vllm.json
#
# vLLM: already importable, else carried. The device machines have torch but no vLLM and no
# network, and a call carries 64 MiB, so scripts/device_bundle.sh (run where pip works) cuts vLLM,
# the packages it needs, the bundled model and the data into .device/p1 … pN; then, back to back
# on one warm machine:
#   call K < N:  carry [".device/pK"], run `bash scripts/gpu_check.sh --piece K`
#   call N:      carry [".device/pN"], run `bash scripts/gpu_check.sh --piece N --run`
# A piece call stores its piece under /tmp; the second one already installs vLLM and checks that
# it imports, so a missing package shows while pieces are still travelling.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
PARTS=/tmp/ragserve-parts
BUNDLE=/tmp/ragserve-bundle
SITE=/tmp/ragserve-site
cd "$(dirname "$0")/.."

piece="" run=1
while [ $# -gt 0 ]; do
  case $1 in
    --piece) piece=$2; run=0; shift 2 ;;
    --run) run=1; shift ;;
    *) echo "usage: $0 [--piece K [--run]]" >&2; exit 2 ;;
  esac
done

# Measured on an H200 (2026-12-04): piece calls 1-5 took 81 s of device time with the start;
# installing 30 s; the GGUF export 82 s; each vLLM engine start about 60 s (40 s of it
# torch.compile). One call runs at most 600 s, so by default the last call runs the tests and the
# throughput (bounded at 270 s and 160 s); the speculation check, already measured there
# (benchmarks/results/spec_vllm_h200.md), runs only when SPEC_TIMEOUT is set (150 s is enough).

# Joins the pieces so far and unpacks what arrived whole (the last member may be cut short; the
# final join rewrites it).
unpack() {
  mkdir -p "$BUNDLE"
  cat "$PARTS"/piece.* | tar -xf - -C "$BUNDLE" 2>/dev/null
  return 0
}

# Carried wheels into $SITE, offline and as they are (their requirements travel beside them).
site_install() {
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$@"
}

install_site() {
  [ -f "$SITE/.installed" ] && return 0
  rm -rf "$SITE" && mkdir -p "$SITE"
  xz -dc -T0 "$BUNDLE/vllm.tar.xz" | tar -xf - -C "$SITE" || return 1
  site_install "$BUNDLE"/whl/*.whl || return 1
  touch "$SITE/.installed"
}

if [ -n "$piece" ]; then
  mkdir -p "$PARTS"
  cp .device/p"$piece"/piece.* "$PARTS"/
  echo "piece $piece stored: $(du -sh "$PARTS" | cut -f1) so far"
  if [ "$piece" -ge 2 ] && [ ! -f "$SITE/.installed" ]; then
    unpack
    install_site || { echo "install failed"; exit 1; }
    PYTHONPATH=$SITE:$PWD $PY -c "import vllm, vllm.v1.engine.async_llm,\
 vllm.entrypoints.openai.api_server, ragserve.server.app, ragserve.generation.vllm;\
 print('vllm', vllm.__version__, 'imports')" 2>&1 | grep -v "^INFO" | tail -5
  fi
  [ "$run" = 1 ] || exit 0
  unpack
  site_install "$BUNDLE"/model/*.whl || exit 1
fi
if [ -f "$SITE/.installed" ]; then
  export PYTHONPATH=$SITE:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# The image's JAX, once imported (transformers probes for it), would reserve 75% of the GPU.
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
# vLLM 0.26's GPU sampler imports FlashInfer unless told not to, and the bundle leaves it out.
$PY -c "import flashinfer" 2>/dev/null || export VLLM_USE_FLASHINFER_SAMPLER=0
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ! $PY -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"; then
  echo "vLLM is not importable here and no pieces were carried: nothing to check."
  echo '{"vllm_available": false}' > "$OUT/gpu_check.json"
  exit 2
fi
status=0

echo "== model export"
t=$(date +%s)
$PY -c "from ragserve.generation.hf_export import export_hf; print(export_hf())" || status=1
echo "export took $(( $(date +%s) - t )) s"

echo "== tests"
timeout "${TESTS_TIMEOUT:-270}" $PY -m pytest -q tests/vllm -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== throughput"
model_flag=()
[ -n "${RAGSERVE_VLLM_MODEL:-}" ] && model_flag=(--model "$RAGSERVE_VLLM_MODEL")
timeout "${THROUGHPUT_TIMEOUT:-160}" $PY -m benchmarks.generation_vllm "${model_flag[@]}" \
  --streams 64 --max-tokens 128 --also-fast --json "$OUT/gpu_throughput.json" || status=1

echo "== speculation (RaLMSpec on vLLM, BM25 over HotpotQA)"
data=${RAGSERVE_DATA:-$BUNDLE/data}
if [ "${SPEC_TIMEOUT:-0}" = 0 ]; then
  echo "skipped (set SPEC_TIMEOUT to run it)"
elif [ -d "$data/hotpotqa" ]; then
  RAGSERVE_GENERATOR=vllm timeout "$SPEC_TIMEOUT" $PY -m ragserve.cli bench spec \
    --retriever bm25 --data "$data/hotpotqa" --num-prompts "${SPEC_PROMPTS:-10}" \
    --variants spec,PSA --max-tokens 64 --index-dir /tmp/ragserve-indexes \
    --json "$OUT/spec_vllm.json" || status=1
else
  echo "no HotpotQA at $data: speculation not checked"
fi

exit $status
