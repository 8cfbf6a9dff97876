#!/usr/bin/env bash
# Model benchmarks on CPU, printed as a table.
#
#   tools/bench/model.sh [dit] [dit-1.3b] [vae-decode]     (default: all three; on 2 cores the full
#                                                           1.3B forward and 81-frame decode take
#                                                           about 45 and 20 minutes: see LAYERS and
#                                                           LATENT_FRAMES below)
#
#   dit         DiT forward, dim 512 (4 heads x 128), 8 layers, ffn 2048, text_dim 512, latent 16x9x30x52,
#               64 text tokens: candle and the reference PyTorch forward of the same config, alternated in
#               one run, same thread count; the ratio is torch time / candle time (> 1: candle faster).
#   dit-1.3b    one forward of the published 1.3B shape at 480x832x81 frames (32,760 tokens), random
#               weights: time and peak memory. LAYERS=n runs n of the 30 blocks (time scales linearly).
#   vae-decode  VAE decode of 81 frames at 480x832 (latent 21x60x104), Wan2.1 config, random weights:
#               time and peak memory. LATENT_FRAMES=n decodes 1+4(n-1) frames instead.
#
# THREADS (default 2) sets both RAYON_NUM_THREADS and torch.set_num_threads; ROUNDS (default 3) the
# number of alternated rounds for dit. Needs tools/reference/.venv for the PyTorch side
# (tools/reference/make_fixtures.sh creates it).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(dit dit-1.3b vae-decode)

cargo build --release -p patchwork-worker --bench model --quiet 2>/dev/null || cargo build --release -p patchwork-worker --bench model
bench=$(ls -t target/release/deps/model-* | grep -v '\.d$' | head -1)
py=tools/reference/.venv/bin/python
export RAYON_NUM_THREADS=$THREADS

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

rows=()
for case in "${cases[@]}"; do
  case $case in
    dit)
      if [ ! -x "$py" ]; then
        echo "dit: no $py; run tools/reference/make_fixtures.sh once to create the PyTorch venv" >&2
        exit 2
      fi
      c=(); t=()
      for _ in $(seq "$ROUNDS"); do
        line=$("$bench" dit --warmup 1 --iters 1); c+=("$(field "$line" median_s)")
        line=$("$py" tools/reference/bench_dit.py --threads "$THREADS" --iters 1); t+=("$(field "$line" median_s)")
      done
      cm=$(median "${c[@]}"); tm=$(median "${t[@]}")
      ratio=$(python3 -c "print(f'{$tm/$cm:.2f}')")
      rows+=("dit dim512 L8 3510 tokens|candle ${cm}s|torch ${tm}s|torch/candle ${ratio}x")
      ;;
    dit-1.3b)
      line=$("$bench" dit --preset-1-3b --layers "${LAYERS:-30}" --latent 21x60x104 --text-len 512 --warmup 0 --iters 1)
      rows+=("dit 1.3B L${LAYERS:-30} 32760 tokens|$(field "$line" median_s)s|peak $(field "$line" peak_rss_mib) MiB|")
      ;;
    vae-decode)
      n=${LATENT_FRAMES:-21}
      line=$("$bench" vae-decode --latent "${n}x60x104" --warmup 0 --iters 1)
      rows+=("vae decode $((1 + 4 * (n - 1))) frames 480x832|$(field "$line" median_s)s|peak $(field "$line" peak_rss_mib) MiB|")
      ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
done

printf '\n| case | time | memory / reference | ratio |\n| --- | --- | --- | --- |\n'
for r in "${rows[@]}"; do IFS='|' read -r a b c d <<<"$r"; printf '| %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d"; done
echo "threads: $THREADS, $(nproc) cores, $(date -u +%F)"
