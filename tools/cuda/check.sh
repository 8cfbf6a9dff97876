#!/usr/bin/env bash
# Type-checks the `cuda` feature (candle's CUDA backend, its kernels compiled by nvcc, and patchwork's NCCL
# collectives) on a machine without a GPU, with the compiler-only toolchain from PyPI. CI runs it so that
# the CUDA code keeps compiling; tools/cuda/build.sh makes the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLCHAIN="${CUDA_TOOLCHAIN:-target/cuda-toolchain}"
[ -f "$TOOLCHAIN/env.sh" ] || COMPILER_ONLY=1 tools/cuda/install.sh "$TOOLCHAIN"
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
CARGO_TARGET_DIR=target/cuda-check cargo check -p patchwork-worker --features cuda --all-targets "$@"
CARGO_TARGET_DIR=target/cuda-check cargo clippy -p patchwork-worker --features cuda --all-targets -- -D warnings
echo "the cuda feature compiles"
