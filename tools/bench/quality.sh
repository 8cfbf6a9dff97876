#!/usr/bin/env bash
# Quality of the embedded tiny model through the farm: 50 procedural prompts, each rendered as one native
# window and as a 77-frame video (20 latent frames) joined three ways (smooth sin² fusion, plain average,
# no overlap); every MP4 is measured by the evaluator of `patchwork eval`. Prints markdown tables: the
# scores, the same for lone objects and objects of pairs, and how many objects have the right colour in
# each 17-frame piece of the videos and how many of those pieces have the prompt's background (progress
# on stderr). About 6–8 minutes on 2 cores.
#
#   tools/bench/quality.sh [--prompts 50] [--frames 77] [--steps N] [--guidance G] [--shift S]
#                          [--sampler euler|unipc] [--window 17] [--overlap 8] [--modes 0,1,2,3] [--keep DIR]
#                          (mode 4, not run unless asked: windows drawn one after another, `--fusion continue`,
#                          for a model trained to continue a video; about twice the wall time of the others)
#                          [--model DIR]   (a pipeline folder instead of the embedded model)
#                          [--short]       (prompts without speeds and backgrounds: "a green square moving left")
#                          [--noise shuffled]  (later windows start from the first window's noise, reordered)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo bench --bench quality --no-run --quiet 2>/dev/null || cargo bench --bench quality --no-run
bench=$(ls -t target/release/deps/quality-* | grep -v '\.d$' | head -1)
"$bench" "$@" 2> >(grep -v '^\[OpenH264\]' >&2)
echo "$(nproc) cores, $(date -u +%F)"
