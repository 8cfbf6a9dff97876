"""WanTransformer3DModel: random weights that exercise every path, and its forward cases."""

import torch
from diffusers import WanTransformer3DModel

from .common import check_nondegenerate, fan_in, fill_normal, randn, rel_change, save_tensors


@torch.no_grad()
def randomise_dit(model: WanTransformer3DModel, g: torch.Generator) -> None:
    """Overwrites every parameter.

    diffusers initialises several tensors to values a port could get wrong and still pass with (zero biases,
    unit norm weights); random values everywhere make each of them matter.
    """
    for name, p in model.named_parameters():
        if name.endswith("scale_shift_table"):
            # Added to the time projection: shift, scale and gate of every block and of the output head.
            fill_normal(p, g, std=0.3)
        elif p.ndim == 1 and ".norm" in f".{name}" and name.endswith(".weight"):
            # RMSNorm (q/k, across heads) and the affine LayerNorm before cross-attention: gains near 1.
            fill_normal(p, g, std=0.2, mean=1.0)
        elif p.ndim == 1:
            fill_normal(p, g, std=0.1)  # biases
        else:
            # Linear and the patch-embedding Conv3d: unit-variance outputs for unit-variance inputs.
            fill_normal(p, g, std=fan_in(p) ** -0.5)


def build_dit(cfg: dict, g: torch.Generator) -> WanTransformer3DModel:
    model = WanTransformer3DModel(**cfg)
    randomise_dit(model, g)
    return model.eval()


def forward(model, hidden_states, timestep, encoder_hidden_states) -> torch.Tensor:
    with torch.no_grad():
        return model(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            return_dict=False,
        )[0]


def dit_cases(model, cases: list, text_len: int, g: torch.Generator, root: str, model_dir: str) -> list:
    """Runs each case through `model` (already reloaded from disk) and writes cases/<name>.{in,out}.safetensors."""
    model = model.float().eval()
    cfg = model.config
    entries = []
    for case in cases:
        b = case["batch"]
        hidden = randn(g, b, cfg.in_channels, case["frames"], case["height"], case["width"])
        # float32 timesteps, as the Euler scheduler hands them over (UniPC hands over int64; the model casts).
        timestep = torch.tensor(case["timesteps"], dtype=torch.float32)
        text = randn(g, b, text_len, cfg.text_dim)
        sample = forward(model, hidden, timestep, text)
        assert sample.shape == hidden.shape, (sample.shape, hidden.shape)

        name = case["name"]
        check_nondegenerate(name, sample)
        # Every input must matter, or a port that drops it would still pass.
        dt = rel_change(forward(model, hidden, timestep + 100.0, text), sample)
        dc = rel_change(forward(model, hidden, timestep, text * 0.5 + 0.3), sample)
        print(f"    sensitivity: timestep+100 -> {dt:.3f}, text changed -> {dc:.3f}")
        if dt < 0.02 or dc < 0.02:
            raise SystemExit(f"{name}: output barely depends on timestep ({dt}) or text ({dc})")
        if b > 1 and rel_change(sample[0], sample[1]) < 0.05:
            raise SystemExit(f"{name}: batch items nearly equal")

        save_tensors(
            f"{root}/cases/{name}.in.safetensors",
            {"hidden_states": hidden, "timestep": timestep, "encoder_hidden_states": text},
        )
        save_tensors(f"{root}/cases/{name}.out.safetensors", {"sample": sample})
        entries.append(
            {
                "name": name,
                "component": "transformer",
                "model_dir": model_dir,
                "inputs": f"cases/{name}.in.safetensors",
                "expected": f"cases/{name}.out.safetensors",
            }
        )
    return entries
