#!/usr/bin/env bash
# Builds the x86-64 `patchwork` binary with CUDA devices and NCCL (`--features cuda`) on a machine without
# a GPU: installs the CUDA toolchain from PyPI (tools/cuda/install.sh) if needed, then runs cargo.
#
#   tools/cuda/build.sh            -> target/cuda/release/patchwork
#
# CUDA_COMPUTE_CAP (default 90, the H100) picks the kernels' architecture. The binary loads libcuda,
# libcublas and libnccl at run time (cudarc's dynamic loading), so it starts on machines that have them.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLCHAIN="${CUDA_TOOLCHAIN:-target/cuda-toolchain}"
[ -f "$TOOLCHAIN/env.sh" ] || tools/cuda/install.sh "$TOOLCHAIN"
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda --bin patchwork "$@"
echo "built target/cuda/release/patchwork (CUDA $CUDARC_CUDA_VERSION, compute capability $CUDA_COMPUTE_CAP)"
