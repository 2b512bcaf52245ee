#!/usr/bin/env bash
# Configures (once) and builds the project in ./build against the libtorch of .venv's torch
# wheel, or the one CMAKE_PREFIX_PATH / Torch_DIR points at. Extra arguments go to
# `cmake --build` (e.g. --target ldcp).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${LDCP_BUILD_DIR:-build}"
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  prefix="${CMAKE_PREFIX_PATH:-}"
  if [ -z "${Torch_DIR:-}" ]; then
    torch_prefix=$(.venv/bin/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
    prefix="${prefix:+$prefix;}$torch_prefix"
  fi
  # Release at -O2 without debug information: -g triples the build folder (CI's disk filled
  # at 80 GB) and lengthens every compile and link; LDCP_BUILD_TYPE=RelWithDebInfo for gdb.
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${LDCP_BUILD_TYPE:-Release}" \
    -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
    ${prefix:+"-DCMAKE_PREFIX_PATH=$prefix"} ${Torch_DIR:+"-DTorch_DIR=$Torch_DIR"}
fi
# Each libtorch translation unit takes over 1 GiB to compile; two at a time fit any machine.
cmake --build "$BUILD_DIR" --parallel "${LDCP_JOBS:-2}" "$@"
