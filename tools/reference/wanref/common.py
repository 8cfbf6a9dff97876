"""Shared helpers: seeding, parameter re-randomisation, saving tensors, sanity checks."""

import json
import os
import re

import torch
from safetensors.torch import save_file


def generator(seed: int, stream: int) -> torch.Generator:
    """A private RNG per component, so adding or reordering components never changes another's bytes."""
    return torch.Generator().manual_seed(seed * 1000 + stream)


def randn(g: torch.Generator, *shape, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean


@torch.no_grad()
def fill_normal(p: torch.Tensor, g: torch.Generator, std: float, mean: float = 0.0) -> None:
    p.copy_(randn(g, *p.shape, std=std, mean=mean))


def fan_in(p: torch.Tensor) -> int:
    """Inputs per output for a Linear (out, in) or a Conv (out, in, *kernel) weight."""
    n = 1
    for d in p.shape[1:]:
        n *= d
    return max(n, 1)


def save_tensors(path: str, tensors: dict, meta: dict | None = None) -> None:
    """Writes a safetensors file with float tensors as float32 and int tensors as int64 (the fixture contract)."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            # float64 is kept only where the caller asks for it (scheduler tables); everything else is float32.
            t = t if t.dtype == torch.float64 else t.to(torch.float32)
        else:
            t = t.to(torch.int64)
        out[name] = t.contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path, metadata={k: str(v) for k, v in (meta or {}).items()})


def write_json(path: str, obj) -> None:
    """Indented JSON, but arrays of plain numbers (token ids, masks) on one line each."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    # Only arrays json.dumps spread over lines: a newline never occurs raw inside a JSON string.
    number_array = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")
    text = number_array.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def stats(t: torch.Tensor) -> str:
    t = t.detach().float()
    return f"shape={list(t.shape)} mean={t.mean():+.4f} std={t.std():.4f} absmax={t.abs().max():.4f}"


def check_nondegenerate(name: str, t: torch.Tensor, lo: float = 0.05, hi: float = 20.0) -> None:
    """Fails loudly when a reference output is useless as a test: NaN, all equal, vanishing or exploding."""
    t = t.detach().float()
    if not torch.isfinite(t).all():
        raise SystemExit(f"{name}: non-finite values")
    s = t.std().item()
    if not (lo <= s <= hi):
        raise SystemExit(f"{name}: std {s:.4g} outside [{lo}, {hi}] ({stats(t)})")
    print(f"  {name}: {stats(t)}")


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
