#!/usr/bin/env python3
"""Runs `patchwork model forward` on every component case of a fixture folder and prints the relative
error of each output against the reference, e.g. on fixtures of a config the tests never saw:

    tools/reference/make_fixtures.sh --variant alt --out /tmp/alt
    cargo build --release
    tools/reference/.venv/bin/python tools/reference/check_forward.py /tmp/alt target/release/patchwork

Exits non-zero if any case fails or exceeds --tolerance (default 1e-4).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixtures", type=Path)
    ap.add_argument("patchwork", type=Path)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--devices", help="the transformer's devices (`cuda:0`); the other components run on the CPU")
    args = ap.parse_args()

    manifest = json.loads((args.fixtures / "manifest.json").read_text())
    worst, failed = 0.0, False
    with tempfile.TemporaryDirectory() as tmp:
        for case in manifest["cases"]:
            out = Path(tmp) / f"{case['name']}.safetensors"
            cmd = [str(args.patchwork), "model", "forward", "--component", case["component"],
                   "--model-dir", str(args.fixtures / case["model_dir"]),
                   "--inputs", str(args.fixtures / case["inputs"]), "--output", str(out), "--dtype", args.dtype]
            if args.devices and case["component"] == "transformer":
                cmd += ["--devices", args.devices]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{case['name']}: FAILED: {run.stderr.strip()}")
                failed = True
                continue
            got, want = load_file(out), load_file(args.fixtures / case["expected"])
            for name, expected in want.items():
                e, g = expected.astype(np.float64), got[name].astype(np.float64)
                err = float(np.linalg.norm(g - e) / np.linalg.norm(e))
                worst = max(worst, err)
                print(f"{case['name']:28s} {name:18s} {str(list(e.shape)):18s} relative error {err:.2e}")
    print(f"worst relative error {worst:.2e} (tolerance {args.tolerance:.0e})")
    return 1 if failed or worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
