#!/usr/bin/env bash
# Farm benchmarks: a coordinator and workers in one process on loopback ports, driven through the client
# API; each part prints a markdown table (progress goes to stderr). About 90 s on 2 cores.
#
#   tools/bench/farm.sh [overhead] [bytes] [scaling] [--steps N] [--delay-ms N] [--workers 1,4,16,64]
#                       (default: all three parts)
#
#   overhead   step time of a tiny job (33x128x128, 18 windows) with the real tiny model on 1 worker and with
#              zero-delay load-test workers (1, and 1 per window): the latter is the coordinator + gRPC cost
#              per step, shown as a share of the real step. Then the coordinator's own CPU work per step
#              (extract/encode, decode, fuse, sampler, store updates), timed in-process for the tiny jobs
#              and for the 1.3B shape at 480x832 (81 and 161 frames).
#   bytes      bytes per window per step: f32 payload, protobuf size (prost encoded_len, computed) and, for
#              the tiny job, bytes measured through a counting TCP proxy in front of the worker.
#   scaling    1/4/16/64 load-test workers (capacity 1, DELAY per evaluation) on a 64-window job
#              (65x208x208); efficiency = steps x ceil(windows/workers) x delay / measured, step 1 excluded.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo bench --bench farm --no-run --quiet 2>/dev/null || cargo bench --bench farm --no-run
bench=$(ls -t target/release/deps/farm-* | grep -v '\.d$' | head -1)
"$bench" "$@" 2> >(grep -v '^\[OpenH264\]' >&2)
echo "$(nproc) cores, $(date -u +%F)"
