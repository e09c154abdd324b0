#!/usr/bin/env bash
# Build llama-cpp-python once per machine kind and cache the wheel.
#
# Why: a -march=native build of llama.cpp segfaults on CPUs with AMX for any batch > 1 token
# (ggml_backend_amx_mul_mat, upstream llama.cpp#20824), and pip's own wheel cache ignores CMAKE_ARGS,
# so a wheel built with other flags could be silently reused. We build with explicit flags, AMX off,
# AVX-512 on where the CPU has it (measured faster than AVX2-only, docs/benchmarks.md), and key the
# cache by version + flags.
#
# Usage: scripts/build-llama-cpp.sh [VERSION]   -> prints the wheel path on stdout
set -euo pipefail
VERSION="${1:-0.3.36}"
PY="${PYTHON:-python3}"
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
flags="$flags -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF"
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
if [ "${NOMOAT_LLAMA_AVX512:-auto}" != "off" ] && [[ " $cpu " == *" avx512f "* ]]; then
  flags="$flags -DGGML_AVX512=ON"
  [[ " $cpu " == *" avx512_vnni "* ]] && flags="$flags -DGGML_AVX512_VNNI=ON"
  [[ " $cpu " == *" avx512_bf16 "* ]] && flags="$flags -DGGML_AVX512_BF16=ON"
  [[ " $cpu " == *" avx512vbmi "* ]] && flags="$flags -DGGML_AVX512_VBMI=ON"
fi
key=$(printf '%s %s %s' "$VERSION" "$flags" "$($PY -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
cache="${NOMOAT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nomoat/wheels}/$key"
wheel=$(ls "$cache"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION (about 10 minutes on 2 cores) with: $flags" >&2
  mkdir -p "$cache.partial"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    $PY -m pip wheel --no-deps --no-cache-dir -w "$cache.partial" "llama-cpp-python==$VERSION" >&2
  rm -rf "$cache" && mv "$cache.partial" "$cache"   # a killed build never leaves a half cache
  wheel=$(ls "$cache"/llama_cpp_python-*.whl | head -n1)
fi
echo "$wheel"
