# syntax=docker/dockerfile:1.7
# A worker on NVIDIA GPUs: `patchwork worker` built with `--features cuda` (candle's CUDA backend and NCCL
# collectives). Build from the repository root, on any x86-64 machine (no GPU needed):
#
#   docker build -f deploy/docker/worker-cuda.Dockerfile \
#       --build-arg CUDA_COMPUTE_CAP=90 \
#       -t ghcr.io/patchwork-render/patchwork-worker-cuda:0.1.0 .
#
# The build uses tools/cuda/build.sh, which installs nvcc, the headers and NCCL of the CUDA 13.2 series from
# PyPI (cudarc 0.19 knows CUDA up to 13.2). The runtime image must be of the same series, and the GPU nodes'
# driver must support CUDA 13.2: candle's kernels are PTX that the driver compiles when it loads them.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.2.0-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS build
# build.sh needs python3 with venv (the PyPI toolchain) and gcc (a libcuda stub to link against).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential protobuf-compiler nasm python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# 90: H100/H200; 80: A100; 89: L4/L40S. One architecture per image.
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    PIP_NO_CACHE_DIR=1
# The toolchain goes to target/cuda-toolchain, inside the cache mount, so later builds reuse it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    tools/cuda/build.sh --locked \
    && install -D -m 0755 target/cuda/release/patchwork /out/patchwork

FROM ${CUDA_RUNTIME_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The runtime image has cuBLAS, cuRAND, NVRTC and NCCL under versioned names (libnccl.so.2, ...); cudarc
# opens them by names that include the unversioned ones, which only the -dev packages would add. Link those
# names and fail the build if a library is missing. libcuda itself comes from the node's driver, mounted by
# the NVIDIA container toolkit.
RUN set -eu; \
    mkdir -p /usr/local/lib/patchwork; \
    for lib in cublas cublasLt curand nvrtc nccl; do \
        path="$(ldconfig -p | awk -v prefix="lib${lib}.so." 'index($1, prefix) == 1 && !found { print $NF; found = 1 }')"; \
        if [ -z "$path" ]; then echo "lib${lib} is not in the runtime image" >&2; exit 1; fi; \
        ln -sf "$path" "/usr/local/lib/patchwork/lib${lib}.so"; \
    done; \
    echo /usr/local/lib/patchwork > /etc/ld.so.conf.d/patchwork.conf; \
    ldconfig; \
    groupadd --system --gid 10001 patchwork; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/patchwork --shell /usr/sbin/nologin patchwork; \
    install -d -o 10001 -g 10001 /var/lib/patchwork
COPY --from=build /out/patchwork /usr/local/bin/patchwork
USER 10001:10001
WORKDIR /var/lib/patchwork
ENV PATCHWORK_WORKER_LISTEN=0.0.0.0:7700 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 7700 7690
ENTRYPOINT ["/usr/local/bin/patchwork"]
CMD ["worker"]
