#!/usr/bin/env python3
"""Builds the reference fixtures for patchwork's Rust ports of Wan2.1 with the reference implementation.

Every model is built from a config with random weights (nothing can be downloaded here), saved in the diffusers
/ transformers layout, reloaded from disk, and only then run: the expected outputs are what the saved files
produce. See fixtures/reference/README.md (written by this script) for the layout.

    tools/reference/make_fixtures.sh [--out DIR] [--variant committed|alt] [--seed N]
"""

import argparse
import glob
import os
import shutil
import sys
import textwrap

# Nothing may be fetched: every model comes from a local folder. Set before the libraries are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import WanPipeline, WanTransformer3DModel  # noqa: E402

from wanref import common, configs, dit, sched, text, vae  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Everything this script owns inside --out; nothing else there is touched.
OWNED = ["manifest.json", "README.md", "pipeline", "transformer-3h", "cases", "scheduler", "tokenizer"]

# One RNG stream per purpose (see common.generator).
S_TOKENIZER, S_TEXT, S_VAE, S_DIT_MAIN, S_DIT_SHARDED = 1, 2, 3, 4, 5
S_CASES_DIT_MAIN, S_CASES_DIT_SHARDED, S_CASES_VAE, S_CASES_TEXT, S_TRAJ = 11, 12, 13, 14, 15


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "fixtures", "reference"))
    ap.add_argument("--variant", choices=sorted(configs.VARIANTS), default="committed")
    ap.add_argument("--seed", type=int, default=20250)
    return ap.parse_args()


def clean(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name in OWNED:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: keys changed on save/load"
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{what}: {k} changed on save/load"


def save_sharded(model, path: str, shard_size: str) -> list:
    model.save_pretrained(path, safe_serialization=True, max_shard_size=shard_size)
    shards = sorted(glob.glob(os.path.join(path, "diffusion_pytorch_model-*.safetensors")))
    index = os.path.join(path, "diffusion_pytorch_model.safetensors.index.json")
    if len(shards) < 2 or not os.path.exists(index):
        raise SystemExit(f"{path}: expected >= 2 shards and an index, got {os.listdir(path)}")
    return shards


def main() -> int:
    args = parse_args()
    cfg = configs.VARIANTS[args.variant]
    out = os.path.abspath(args.out)
    seed = args.seed

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(seed)  # module constructors draw from it; every parameter is overwritten anyway
    g = lambda stream: common.generator(seed, stream)  # noqa: E731

    print(f"variant {args.variant}, seed {seed}, out {out}")
    clean(out)

    # 1. The pipeline: tokenizer, umT5 encoder, VAE, transformer, UniPC scheduler, saved like Wan2.1-Diffusers.
    print("building the pipeline")
    tokenizer = text.train_tokenizer(cfg["spm_pieces"], cfg["extra_ids"], seed * 1000 + S_TOKENIZER)
    assert len(tokenizer) == cfg["text_encoder"]["vocab_size"], (len(tokenizer), cfg["text_encoder"])
    built = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text.build_text_encoder(cfg["text_encoder"], g(S_TEXT)),
        vae=vae.build_vae(cfg["vae"], cfg["vae_latent_hw"], g(S_VAE)),
        scheduler=sched.unipc(cfg["pipeline_flow_shift"]),
        transformer=dit.build_dit(cfg["dit_main"], g(S_DIT_MAIN)),
    )
    built.save_pretrained(os.path.join(out, "pipeline"), safe_serialization=True)
    pipe = WanPipeline.from_pretrained(os.path.join(out, "pipeline"), torch_dtype=torch.float32)
    for part in ["text_encoder", "vae", "transformer"]:
        same_weights(getattr(built, part), getattr(pipe, part), part)
    del built

    cases = []
    print("transformer cases (pipeline/transformer)")
    cases += dit.dit_cases(
        pipe.transformer, cfg["dit_main_cases"], cfg["dit_main_text_len"], g(S_CASES_DIT_MAIN), out,
        "pipeline/transformer",
    )

    # 2. A second transformer, saved in shards as the 14B checkpoint is.
    print("transformer cases (transformer-3h, sharded)")
    sharded_dir = os.path.join(out, "transformer-3h")
    built = dit.build_dit(cfg["dit_sharded"], g(S_DIT_SHARDED))
    shards = save_sharded(built, sharded_dir, cfg["dit_shard_size"])
    print(f"  {len(shards)} shards")
    reloaded = WanTransformer3DModel.from_pretrained(sharded_dir, torch_dtype=torch.float32)
    same_weights(built, reloaded, "transformer-3h")
    cases += dit.dit_cases(
        reloaded, cfg["dit_sharded_cases"], cfg["dit_sharded_text_len"], g(S_CASES_DIT_SHARDED), out,
        "transformer-3h",
    )

    print("vae cases")
    cases += vae.vae_cases(pipe.vae, cfg["vae_frames"], cfg["vae_latent_hw"], g(S_CASES_VAE), out, "pipeline/vae")

    print("text encoder cases")
    cases += text.text_encoder_cases(
        pipe.text_encoder, cfg["text_len"], cfg["text_b2_lengths"], g(S_CASES_TEXT), out, "pipeline/text_encoder"
    )

    print("tokenizer and text pipeline")
    common.write_json(os.path.join(out, "tokenizer", "cases.json"), text.tokenizer_cases(pipe.tokenizer, cfg["text_len"]))
    text_entry = text.text_pipeline_case(pipe, cfg["text_len"], out)

    print("schedules and trajectories")
    schedules = sched.schedules(cfg["sched_steps"], cfg["sched_shifts"], out)
    trajectories = sched.trajectories(cfg["traj_steps"], cfg["traj_shift"], cfg["traj_latent"], g(S_TRAJ), out)

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    manifest = {
        "versions": versions,
        "variant": args.variant,
        "seed": seed,
        "cases": cases,
        "schedules": schedules,
        "trajectories": trajectories,
        "text": text_entry,
        "scheduler_configs": sched.configs(cfg["traj_shift"]),
    }
    common.write_json(os.path.join(out, "manifest.json"), manifest)
    write_readme(out, args, cfg, versions)
    print(f"done: {len(cases)} cases, {len(schedules)} schedules, {len(trajectories)} trajectories")
    return 0


def write_readme(out: str, args, cfg: dict, versions: dict) -> None:
    rel = os.path.relpath(out, REPO_ROOT)
    text_dim, d_model = cfg["dit_main"]["text_dim"], cfg["text_encoder"]["d_model"]
    if text_dim != d_model:
        coupling = (
            f"Here the pipeline transformer's `text_dim` ({text_dim}) differs from the text encoder's `d_model` "
            f"({d_model}) on purpose, so a port that confuses them fails; the pipeline loads but cannot generate "
            "end to end, which no fixture needs."
        )
    else:
        coupling = f"Here `text_dim` equals the text encoder's `d_model` ({d_model}): the pipeline runs end to end."
    if args.variant != "committed":
        coupling += (
            " Folder and case names are those of the committed variant, kept as slot names; the real shapes are"
            " in the tensors and the configs."
        )
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            README.format(
                variant=args.variant,
                seed=args.seed,
                out=rel if not rel.startswith("..") else out,
                coupling=textwrap.fill(coupling, width=110),
                **versions,
            )
        )


README = """\
# Reference fixtures (variant `{variant}`)

Expected outputs of the reference implementation (torch {torch}, diffusers {diffusers}, transformers
{transformers}) for tiny Wan2.1-architecture models with random weights. The Rust ports load the same weight
files and must reproduce these tensors (float32, within a small tolerance).

Generated by `tools/reference/make_fixtures.py`; do not edit by hand. To remake:

    tools/reference/make_fixtures.sh --out {out} --variant {variant} --seed {seed}

## What is here
- `manifest.json`: versions, and every case with paths relative to this folder.
  - `cases`: one per forward pass; `component` is `transformer`, `vae-decode`, `vae-encode` or
    `text-encoder`; `model_dir` is the weights folder; `inputs`/`expected` are safetensors files whose
    tensor names are the reference forward's argument and output names.
  - `schedules`: `timesteps` and `sigmas` (stored as float64; `timesteps_dtype`/`sigmas_dtype` say what the
    scheduler really holds: UniPC int64 timesteps, Euler float32, sigmas float32) per sampler/steps/shift.
  - `trajectories`: an initial `sample`, stand-in `model_outputs[k]`, and `samples[k]`, the sample after
    `scheduler.step(model_outputs[k], timesteps[k], sample)`, driven as WanPipeline drives it.
  - `text`: prompts -> `WanPipeline.encode_prompt(prompts, do_classifier_free_guidance=False,
    max_sequence_length=text_len)`; the `.in` file holds the token ids and mask the pipeline made.
  - `scheduler_configs`: the full Euler and UniPC configs used (shift as in `trajectories`).
- `pipeline/`: a `WanPipeline.save_pretrained` folder (model_index.json, transformer/, vae/, text_encoder/,
  tokenizer/, scheduler/ with Wan2.1's UniPC config).
- `transformer-3h/`: a second transformer saved in shards with `diffusion_pytorch_model.safetensors.index.json`.
- `tokenizer/cases.json`: raw prompt, the prompt after the pipeline's `prompt_clean`, and the ids and mask the
  pipeline's tokenizer call produces (padding to `text_len`, truncation, `</s>` appended).
- `cases/`, `scheduler/`: the tensors.

## How the weights were made
Models are built from configs, every parameter overwritten with seeded random values (norm gains near 1,
random biases and modulation tables, a different relative-position bias in every umT5 layer), the VAE's
output convolutions scaled so decoded pixels are mostly inside the [-1, 1] clamp. Each model is saved,
reloaded, and the expected outputs come from the reloaded copy. The tokenizer is a SentencePiece Unigram
model trained on `tools/reference/wanref/prompts.txt` and converted to a T5 tokenizer.json.

{coupling}

## Reference behaviour worth knowing
- UniPC (Wan's default): sigmas = shift(linspace(1, 1/1000, n+1)[:-1]), the first lowered by 1e-6; timesteps
  are sigma * 1000 truncated (not rounded) to int64; the last step jumps to sigma 0 and returns the x0 guess.
- Euler: `sigma_min` is shifted once at construction and again in `set_timesteps` (a diffusers quirk), so the
  last nonzero sigma is shift(shift(0.001)); timesteps are float32.
- The pipeline passes the scheduler's timestep to the transformer as is (int64 for UniPC); the transformer
  cases use float32 timesteps, which the sinusoidal embedding accepts alike.
- Text: `prompt_clean` (html.unescape twice, whitespace runs collapsed, strip; ftfy is not installed, so it is
  skipped), then pad/truncate to `text_len` with `</s>` kept last. `encode_prompt` zeroes every position past
  the real length (real length = mask sum, `</s>` included). The encoder outputs in `text-encoder-*` are
  given for padded positions too.
- VAE decode clamps to [-1, 1]; encode `mean` is `latent_dist.mode()` before any latents_mean/std.
"""


if __name__ == "__main__":
    sys.exit(main())
