# syntax=docker/dockerfile:1.7
# The coordinator: `patchwork coordinator`. Build from the repository root (the build context must be the
# root; coordinator.Dockerfile.dockerignore keeps it small):
#
#   docker build -f deploy/docker/coordinator.Dockerfile \
#       -t ghcr.io/patchwork-render/patchwork-coordinator:0.1.0 .
#
# The base images are pinned by version; pin them by digest too (`rust:...@sha256:...`) for reproducible
# release builds.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

FROM ${RUST_IMAGE} AS build
# A C compiler and nasm for openh264's bundled encoder, protoc for the gRPC code. Package versions come
# with the pinned base image (hence no per-package pins: DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential protobuf-compiler nasm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin patchwork \
    && install -D -m 0755 target/release/patchwork /out/patchwork

FROM ${RUNTIME_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 patchwork \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/patchwork --shell /usr/sbin/nologin patchwork \
    && install -d -o 10001 -g 10001 /var/lib/patchwork /var/lib/patchwork/data
COPY --from=build /out/patchwork /usr/local/bin/patchwork
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/patchwork
ENV PATCHWORK_LISTEN=0.0.0.0:7600 \
    PATCHWORK_DATA_DIR=/var/lib/patchwork/data
# gRPC (client API, worker registry, grpc.health.v1); HTTP (web page, /metrics).
EXPOSE 7600 7680
ENTRYPOINT ["/usr/local/bin/patchwork"]
CMD ["coordinator"]
