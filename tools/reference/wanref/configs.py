"""The two fixture variants.

`committed` is what lives in fixtures/reference/. `alt` has the same layout (the same folder and case names,
used as slot names) with different sizes everywhere, so the Rust code can be checked against a configuration
nobody tuned it on. The shapes actually used are in the tensors and in the manifest, never in the names.
"""

# Wan2.1 constants that no variant changes: patch (1,2,2), 16 latent channels, qk norm across heads,
# affine norm before cross-attention, eps 1e-6.
_DIT_FIXED = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    qk_norm="rms_norm_across_heads",
    cross_attn_norm=True,
    eps=1e-6,
)


def _dit(heads, head_dim, layers, ffn, freq_dim, text_dim):
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=layers,
        ffn_dim=ffn,
        freq_dim=freq_dim,
        text_dim=text_dim,
        **_DIT_FIXED,
    )


def _dit_case(name, batch, frames, height, width, timesteps):
    assert len(timesteps) == batch
    return dict(name=name, batch=batch, frames=frames, height=height, width=width, timesteps=timesteps)


COMMITTED = dict(
    # pipeline/transformer. text_dim (40) deliberately differs from the text encoder's d_model (32), as the
    # brief asks: a port that confuses the two fails. The saved pipeline therefore loads but cannot run a
    # full generation; no fixture needs that.
    dit_main=_dit(heads=2, head_dim=24, layers=2, ffn=96, freq_dim=32, text_dim=40),
    dit_main_text_len=12,
    dit_main_cases=[
        _dit_case("transformer-2h-f1-h4w6", 1, 1, 4, 6, [999.0]),
        _dit_case("transformer-2h-f5-h6w4", 2, 5, 6, 4, [500.0, 37.5]),
        _dit_case("transformer-2h-f9-h2w4", 1, 9, 2, 4, [37.5]),
    ],
    # transformer-3h, saved sharded.
    dit_sharded=_dit(heads=3, head_dim=16, layers=3, ffn=64, freq_dim=16, text_dim=24),
    dit_sharded_text_len=7,
    dit_sharded_cases=[
        _dit_case("transformer-3h-f5-h4w2", 1, 5, 4, 2, [750.0]),
        _dit_case("transformer-3h-f1-h2w2", 2, 1, 2, 2, [999.0, 0.5]),
    ],
    dit_shard_size="160KB",
    vae=dict(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ),
    vae_latent_hw=(2, 3),  # pixels 16 x 24
    vae_frames=[1, 5, 9],  # pixel frames; latent frames (f - 1) / 4 + 1
    text_encoder=dict(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    ),
    text_len=16,
    text_b2_lengths=[5, 11],  # real lengths of the two prompts of text-encoder-b2
    spm_pieces=240,  # + 16 T5 sentinel tokens (<extra_id_N>) = vocab 256
    extra_ids=16,
    sched_steps=[1, 4, 10, 50],
    sched_shifts=[1.0, 3.0, 5.0],
    traj_steps=10,
    traj_shift=3.0,
    traj_latent=(1, 16, 3, 4, 6),
    pipeline_flow_shift=3.0,
)

ALT = dict(
    # head_dim 20 splits RoPE unevenly: t 8, h 6, w 6. Here text_dim matches the text encoder's d_model.
    dit_main=_dit(heads=4, head_dim=20, layers=3, ffn=144, freq_dim=64, text_dim=48),
    dit_main_text_len=9,
    dit_main_cases=[
        _dit_case("transformer-2h-f1-h4w6", 1, 3, 6, 8, [998.0]),
        _dit_case("transformer-2h-f5-h6w4", 3, 2, 4, 10, [1.0, 420.25, 999.0]),
        _dit_case("transformer-2h-f9-h2w4", 1, 7, 2, 2, [250.0]),
    ],
    dit_sharded=_dit(heads=4, head_dim=16, layers=4, ffn=80, freq_dim=48, text_dim=20),
    dit_sharded_text_len=5,
    dit_sharded_cases=[
        _dit_case("transformer-3h-f5-h4w2", 1, 4, 2, 6, [123.0]),
        _dit_case("transformer-3h-f1-h2w2", 2, 2, 4, 4, [900.0, 3.0]),
    ],
    dit_shard_size="400KB",
    vae=dict(
        base_dim=12,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ),
    vae_latent_hw=(3, 2),
    vae_frames=[1, 5, 9],
    text_encoder=dict(
        vocab_size=200,
        d_model=48,
        d_kv=12,
        num_heads=3,  # inner dim 36 != d_model
        d_ff=80,
        num_layers=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=20,
    ),
    text_len=24,
    text_b2_lengths=[3, 20],
    spm_pieces=192,
    extra_ids=8,
    sched_steps=[2, 7, 33],
    sched_shifts=[1.5, 7.0],
    traj_steps=7,
    traj_shift=7.0,
    traj_latent=(1, 16, 2, 6, 4),
    pipeline_flow_shift=5.0,
)

VARIANTS = {"committed": COMMITTED, "alt": ALT}
