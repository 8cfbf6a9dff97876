#!/usr/bin/env python3
"""Times the reference WanTransformer3DModel forward on CPU, to compare with the Rust port.

Config: dim 512 (4 heads x 128), 8 layers, ffn 2048, text_dim 512, freq_dim 256; latent [1,16,9,30,52]
(3,510 tokens after 1x2x2 patching), 64 text tokens, random weights, float32.
Prints one JSON line: {"impl": "torch", "median_s": ..., "min_s": ..., ...}.

    tools/reference/.venv/bin/python tools/reference/bench_dit.py [--threads 2] [--iters 3]
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import WanTransformer3DModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=512,
        freq_dim=256,
        ffn_dim=2048,
        num_layers=8,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    hidden = torch.randn(1, 16, 9, 30, 52)
    timestep = torch.tensor([500.0])
    text = torch.randn(1, 64, 512)

    def run() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)
        return time.perf_counter() - start

    run()  # warm-up: allocator, kernels, RoPE tables
    times = [run() for _ in range(args.iters)]
    print(
        json.dumps(
            {
                "impl": "torch",
                "median_s": round(statistics.median(times), 4),
                "min_s": round(min(times), 4),
                "threads": args.threads,
                "iters": args.iters,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
