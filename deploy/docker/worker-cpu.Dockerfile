# syntax=docker/dockerfile:1.7
# A worker that evaluates on the CPU: `patchwork worker`, with the embedded tiny model unless PATCHWORK_MODEL
# names a model directory. Build from the repository root:
#
#   docker build -f deploy/docker/worker-cpu.Dockerfile \
#       -t ghcr.io/patchwork-render/patchwork-worker-cpu:0.1.0 .
#
# The same binary as the coordinator image; a separate image so that each has its own default command,
# ports and tag.
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
    && install -d -o 10001 -g 10001 /var/lib/patchwork
COPY --from=build /out/patchwork /usr/local/bin/patchwork
USER 10001:10001
WORKDIR /var/lib/patchwork
ENV PATCHWORK_WORKER_LISTEN=0.0.0.0:7700 \
    PATCHWORK_DEVICES=cpu
# gRPC (evaluations, grpc.health.v1); HTTP (/metrics).
EXPOSE 7700 7690
ENTRYPOINT ["/usr/local/bin/patchwork"]
CMD ["worker"]
