#!/usr/bin/env bash
# Build llama.cpp's server from the source that the `llama-cpp-python` sdist vendors, into .bench-cache/.
# Built with -DGGML_NATIVE=ON: the best kernels this CPU runs (an AVX-512 build dies with SIGILL on AVX2-only CPUs).
# LLAMA_CPP_ISA=avx2 builds `.bench-cache/llama-server-avx2` instead, with only AVX2/FMA/F16C kernels: on an
# AVX-512 host it stands in for an AVX2-only CPU beside pagedserve at PAGEDSERVE_CPU_ISA=avx2
# (benchmarks/gguf_single_stream.py --isa avx2).
# Idempotent: an existing binary is kept. Built with `nice -n 19` (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=.bench-cache
ISA="${LLAMA_CPP_ISA:-native}"
case "$ISA" in
  native) BIN="$CACHE/llama-server"; BUILD=build; ISA_FLAGS=(-DGGML_NATIVE=ON) ;;
  avx2) BIN="$CACHE/llama-server-avx2"; BUILD=build-avx2
        ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF) ;;
  *) echo "LLAMA_CPP_ISA must be native or avx2, got $ISA" >&2; exit 1 ;;
esac
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PIP="${PIP:-.venv/bin/python -m pip}"

if [[ -x "$BIN" ]]; then
  echo "llama.cpp peer: $BIN already built"
  exit 0
fi
mkdir -p "$CACHE/src"
if ! ls "$CACHE"/src/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  $PIP download -q --no-deps --no-binary :all: -d "$CACHE/src" "llama-cpp-python==$VERSION"
fi
SDIST=$(ls "$CACHE"/src/llama_cpp_python-*.tar.gz | head -n 1)
SRC="$CACHE/src/$(basename "$SDIST" .tar.gz)"
test -d "$SRC" || tar -xzf "$SDIST" -C "$CACHE/src"
command -v cmake >/dev/null || { echo "llama.cpp peer: cmake is not installed (apt-get install cmake)" >&2; exit 1; }
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cd "$SRC/vendor/llama.cpp"
nice -n 19 cmake -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release "${ISA_FLAGS[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
nice -n 19 cmake --build "$BUILD" --target llama-server -j 2
cd - >/dev/null
cp "$SRC/vendor/llama.cpp/$BUILD/bin/llama-server" "$BIN"
echo "llama.cpp peer: built $BIN"
