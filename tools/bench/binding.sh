#!/usr/bin/env bash
# What the transformer tells apart in a caption, apart from sampling: how often the true caption's
# denoising error is lower than that of a caption with one object's colour or shape changed, or with two
# objects' colours or shapes swapped. Prints a markdown table. A few minutes on 2 cores.
#
#   tools/bench/binding.sh [--model DIR] [--prompts 100] [--noises 2]
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo bench --bench binding --no-run --quiet 2>/dev/null || cargo bench --bench binding --no-run
bench=$(ls -t target/release/deps/binding-* | grep -v '\.d$' | head -1)
"$bench" "$@"
echo "$(nproc) cores, $(date -u +%F)"
