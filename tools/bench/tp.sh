#!/usr/bin/env bash
# Tensor parallelism on CPU ranks: one denoising evaluation (a batch of two, as guidance runs it) on a shard
# group of degree 1 and of degree TP, alternated in one process, printed as a table with the bytes each
# rank all-reduces per evaluation.
#
#   tools/bench/tp.sh                 (TP=2, the 1.3B width: 12 heads × 128, ffn 8960, LAYERS=4 of its 30
#                                      blocks, latents 3x16x24 and 5x30x52)
#
# THREADS (default 2) is the machine's cores the ranks share: at degree N each rank computes on
# THREADS/N of them, so on two cores the ratio is the cost of splitting and all-reducing, not a speedup
# from more hardware.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
TP=${TP:-2}
LAYERS=${LAYERS:-4}
ITERS=${ITERS:-5}
LATENTS=${LATENTS:-"3x16x24 5x30x52"}

cargo build --release -p patchwork-worker --bench model --quiet 2>/dev/null || cargo build --release -p patchwork-worker --bench model
bench=$(ls -t target/release/deps/model-* | grep -v '\.d$' | head -1)
export RAYON_NUM_THREADS=$THREADS

printf '| latent | tokens | TP=1 s/eval | TP=%s s/eval | TP=%s / TP=1 | all-reduced per eval (per rank) |\n' "$TP" "$TP"
printf '| --- | --- | --- | --- | --- | --- |\n'
for latent in $LATENTS; do
  out=$("$bench" dit-tp --tp "$TP" --layers "$LAYERS" --latent "$latent" --iters "$ITERS" --warmup 1)
  python3 - "$latent" "$out" <<'PY'
import json, re, sys
latent, out = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
one, many = rows
tokens = re.search(r"tokens(\d+)", one["shape"]).group(1)
moved = int(re.search(r"all-reduced (\d+) bytes", many["case"]).group(1))
print(f"| {latent} | {tokens} | {one['median_s']:.3f} | {many['median_s']:.3f} | {many['median_s'] / one['median_s']:.2f} | {moved / 2**20:.1f} MiB |")
PY
done
echo
echo "(shape: dim 1536, 12 heads, $LAYERS layers, ffn 8960, batch 2, f32; $THREADS threads; median of $ITERS alternated runs)"
