#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize (the CPU reference for docs/benchmarks.md).
#
# The source is the llama.cpp tree vendored in the llama-cpp-python 0.3.36 sdist. GCC 12
# miscompiles ggml's AMX tile setup (the stores filling the tile config are dropped before
# _tile_loadconfig: SIGILL at tileloadd); a compiler barrier before the call fixes it.
# Usage: tools/build_llamacpp.sh            (about 20 minutes on 2 cores; run under nice)
# Result: $FERRUMC_LLAMACPP/build/bin/{llama-bench,llama-quantize}
set -euo pipefail

VERSION=0.3.36
ROOT=${FERRUMC_LLAMACPP:-$HOME/.cache/ferrumc/llamacpp}
JOBS=${JOBS:-2}
mkdir -p "$ROOT"
cd "$ROOT"

if [ ! -f "llama_cpp_python-$VERSION.tar.gz" ]; then
    pip download "llama-cpp-python==$VERSION" --no-deps --no-binary :all: -d "$ROOT"
fi
SRC="$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
    tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi

# The GCC 12 AMX fix: an empty volatile asm taking the config's address, with a memory
# clobber, keeps the config stores alive. Applied once, idempotently.
AMX_SRC="$SRC/ggml/src/ggml-cpu/amx/mmq.cpp"
if [ -f "$AMX_SRC" ] && ! grep -q 'ferrumc-amx-barrier' "$AMX_SRC"; then
    python3 - "$AMX_SRC" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
call = re.compile(r"^([ \t]*)_tile_loadconfig\((&?\w+)\);", re.M)
text, count = call.subn(
    r'\1asm volatile("" : : "r"(\2) : "memory");  // ferrumc-amx-barrier\n\g<0>', text
)
if count == 0:
    sys.exit(f"{path}: no _tile_loadconfig call; build with -DGGML_AMX_TILE=OFF instead")
open(path, "w").write(text)
print(f"patched {count} _tile_loadconfig call(s) in {path}")
PY
fi

cmake -S "$SRC" -B "$ROOT/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DBUILD_SHARED_LIBS=OFF
nice -n 15 cmake --build "$ROOT/build" --target llama-bench llama-quantize -j "$JOBS"
ls -l "$ROOT/build/bin/llama-bench" "$ROOT/build/bin/llama-quantize"
