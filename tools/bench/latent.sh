#!/usr/bin/env bash
# How far apart the VAE's latent puts object colours and shapes (the part of an object's latent signal
# that tells two apart). Prints markdown tables. Under a minute on 2 cores.
#
#   tools/bench/latent.sh [--model DIR] [--scenes 16] [--frames 17]
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo bench --bench latent --no-run --quiet 2>/dev/null || cargo bench --bench latent --no-run
bench=$(ls -t target/release/deps/latent-* | grep -v '\.d$' | head -1)
"$bench" "$@"
echo "$(nproc) cores, $(date -u +%F)"
