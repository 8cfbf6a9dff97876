"""AutoencoderKLWan (Wan2.1 style): random weights with calibrated scales, and decode / encode cases."""

import torch
from diffusers import AutoencoderKLWan

from .common import check_nondegenerate, fan_in, fill_normal, randn, save_tensors


def latents_stats(g: torch.Generator, z_dim: int):
    """16 per-channel means and (positive) stds, rounded like the published config's values."""
    mean = [round(v, 4) for v in randn(g, z_dim, std=0.6).tolist()]
    std = [round(v, 4) for v in (torch.rand(z_dim, generator=g) * 2.5 + 0.8).tolist()]
    return mean, std


@torch.no_grad()
def randomise_vae(vae: AutoencoderKLWan, g: torch.Generator) -> None:
    for name, p in vae.named_parameters():
        if name.endswith("gamma"):
            fill_normal(p, g, std=0.15, mean=1.0)  # RMS-norm gains around 1
        elif p.ndim == 1:
            fill_normal(p, g, std=0.05)  # conv biases
        else:
            fill_normal(p, g, std=fan_in(p) ** -0.5)  # Conv3d (causal), Conv2d (resample, attention)


@torch.no_grad()
def _output_std(conv, run) -> float:
    """Std of what `conv` produces while `run()` executes (a hook, so clamping downstream does not hide it)."""
    seen = []
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().flatten()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(seen).std().item()


@torch.no_grad()
def calibrate(vae: AutoencoderKLWan, g: torch.Generator, latent_hw) -> None:
    """Scales the two output convolutions so that outputs are informative.

    The decoder output is clamped to [-1, 1]: with raw random weights most values would sit on the clamp,
    and a port could be wrong and still match. Its last conv is scaled for a pre-clamp std of 0.4. The
    encoder's quant_conv is scaled for latents of std ~1. Both are linear and last, so scaling is exact.
    """
    h, w = latent_hw
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = randn(g, 1, vae.config.z_dim, 2, h, w) * std + mean
    s = _output_std(vae.decoder.conv_out, lambda: vae.decode(z))
    vae.decoder.conv_out.weight.mul_(0.4 / s)
    vae.decoder.conv_out.bias.mul_(0.4 / s)

    x = torch.rand(1, 3, 5, h * 8, w * 8, generator=g) * 2 - 1
    s = _output_std(vae.quant_conv, lambda: vae.encode(x))
    vae.quant_conv.weight.mul_(1.0 / s)
    vae.quant_conv.bias.mul_(1.0 / s)


def build_vae(cfg: dict, latent_hw, g: torch.Generator) -> AutoencoderKLWan:
    mean, std = latents_stats(g, cfg["z_dim"])
    vae = AutoencoderKLWan(**cfg, latents_mean=mean, latents_std=std).eval()
    randomise_vae(vae, g)
    calibrate(vae, g, latent_hw)
    return vae


def _video(g: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
    """A smooth-ish video in [-1, 1]: a random low-frequency pattern plus noise, so the encoder sees structure."""
    base = torch.rand(1, 3, frames, height // 4, width // 4, generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(base, size=(frames, height, width), mode="trilinear", align_corners=False)
    noise = torch.rand(1, 3, frames, height, width, generator=g) * 0.4 - 0.2
    return (up * 0.8 + noise).clamp(-1, 1)


@torch.no_grad()
def vae_cases(vae, frames_list, latent_hw, g: torch.Generator, root: str, model_dir: str) -> list:
    vae = vae.float().eval()
    h, w = latent_hw
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    entries = []

    def entry(name, component):
        return {
            "name": name,
            "component": component,
            "model_dir": model_dir,
            "inputs": f"cases/{name}.in.safetensors",
            "expected": f"cases/{name}.out.safetensors",
        }

    for frames in frames_list:
        lf = (frames - 1) // 4 + 1
        name = f"vae-decode-f{frames}"
        # Raw latents, as vae.decode receives them: the pipeline has already undone the normalisation.
        latents = randn(g, 1, z_dim, lf, h, w) * std + mean
        sample = vae.decode(latents).sample
        assert sample.shape == (1, 3, frames, h * 8, w * 8), sample.shape
        clamped = (sample.abs() >= 1.0).float().mean().item()
        print(f"    {name}: {clamped:.1%} of outputs on the clamp")
        if clamped > 0.05:
            raise SystemExit(f"{name}: too many outputs clamped ({clamped:.1%})")
        check_nondegenerate(name, sample)
        save_tensors(f"{root}/cases/{name}.in.safetensors", {"latents": latents})
        save_tensors(f"{root}/cases/{name}.out.safetensors", {"sample": sample})
        entries.append(entry(name, "vae-decode"))

    for frames in frames_list:
        name = f"vae-encode-f{frames}"
        video = _video(g, frames, h * 8, w * 8)
        mode = vae.encode(video).latent_dist.mode()
        assert mode.shape == (1, z_dim, (frames - 1) // 4 + 1, h, w), mode.shape
        check_nondegenerate(name, mode)
        save_tensors(f"{root}/cases/{name}.in.safetensors", {"sample": video})
        save_tensors(f"{root}/cases/{name}.out.safetensors", {"mean": mode})
        entries.append(entry(name, "vae-encode"))
    return entries
