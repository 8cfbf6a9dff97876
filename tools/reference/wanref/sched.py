"""Flow-matching schedules (Euler, UniPC) exactly as the Wan pipelines configure them, and sampler trajectories."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .common import randn, save_tensors


def unipc(shift: float) -> UniPCMultistepScheduler:
    """The scheduler_config.json of the Wan2.1 diffusers checkpoints, with flow_shift as a parameter."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
        steps_offset=0,
    )


def euler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


SAMPLERS = {"euler": euler, "unipc": unipc}


def _file(sampler: str, steps: int, shift: float) -> str:
    return f"scheduler/{sampler}-n{steps}-s{shift}.safetensors"


def schedules(steps_list, shifts, root: str) -> list:
    entries = []
    for sampler, make in SAMPLERS.items():
        for steps in steps_list:
            for shift in shifts:
                s = make(float(shift))
                s.set_timesteps(steps, device="cpu")
                assert len(s.timesteps) == steps and len(s.sigmas) == steps + 1
                path = _file(sampler, steps, float(shift))
                # Stored as float64 so int64 (UniPC) and float32 (Euler) timesteps share one format; the
                # dtype the scheduler really holds is recorded next to it.
                save_tensors(
                    f"{root}/{path}",
                    {"timesteps": s.timesteps.to(torch.float64), "sigmas": s.sigmas.to(torch.float64)},
                )
                entries.append(
                    {
                        "sampler": sampler,
                        "steps": steps,
                        "shift": float(shift),
                        "file": path,
                        "timesteps_dtype": str(s.timesteps.dtype).removeprefix("torch."),
                        "sigmas_dtype": str(s.sigmas.dtype).removeprefix("torch."),
                    }
                )
    return entries


@torch.no_grad()
def trajectories(steps: int, shift: float, latent_shape, g, root: str) -> list:
    """A whole sampling loop with stand-in model outputs, driven the way WanPipeline.__call__ drives it."""
    entries = []
    for sampler, make in SAMPLERS.items():
        s = make(float(shift))
        s.set_timesteps(steps, device="cpu")
        s.set_begin_index(0)  # as the pipeline does before its loop
        sample0 = randn(g, *latent_shape)
        outputs = randn(g, steps, *latent_shape)
        samples = []
        x = sample0
        for k, t in enumerate(s.timesteps):
            x = s.step(outputs[k], t, x, return_dict=False)[0]
            samples.append(x)
        samples = torch.stack(samples)
        assert torch.isfinite(samples).all()
        print(f"  trajectory {sampler}: final std {samples[-1].std():.4f}")
        path = f"scheduler/trajectory-{sampler}.safetensors"
        save_tensors(
            f"{root}/{path}",
            {
                "sample": sample0,
                "model_outputs": outputs,
                "samples": samples,
                "timesteps": s.timesteps.to(torch.float64),
                "sigmas": s.sigmas.to(torch.float64),
            },
        )
        entries.append({"sampler": sampler, "steps": steps, "shift": float(shift), "file": path})
    return entries


def configs(shift: float) -> dict:
    """Full scheduler configs (every default spelled out), for the manifest."""
    return {name: {k: v for k, v in make(float(shift)).config.items() if not k.startswith("_")}
            for name, make in SAMPLERS.items()}
