"""Tokenizer (a tiny SentencePiece Unigram as a T5Tokenizer), UMT5 encoder, and the pipeline's text path."""

import os
import tempfile

import sentencepiece as spm
import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from .common import check_nondegenerate, fan_in, fill_normal, rel_change, save_tensors

CORPUS = os.path.join(os.path.dirname(__file__), "prompts.txt")

# Tokenizer cases, tokenised exactly as WanPipeline._get_t5_prompt_embeds does (prompt_clean first).
TOKENIZER_PROMPTS = [
    "A cat.",  # short
    "A golden retriever catches a frisbee in a sunny park while two friends laugh and ride bicycles "
    "down a tree-lined street in autumn, slow motion, shallow depth of field.",  # needs truncation
    "  A  cat &amp;\t a   dog &lt;3 \n",  # whitespace runs, leading/trailing, HTML entities
    " \t \n ",  # empty after cleaning: only </s>
    "Ωmega quokka",  # a word and a character never seen in training (<unk>)
    "Snow on a cabin",  # in-domain, medium length, no final punctuation
]

# The full text path encodes these as one batch.
PIPELINE_PROMPTS = [TOKENIZER_PROMPTS[i] for i in (0, 1, 2, 3)]  # short, truncated, cleaned, empty


def train_tokenizer(pieces: int, extra_ids: int, seed: int) -> T5Tokenizer:
    """Trains a Unigram SentencePiece model on prompts.txt and converts it the way transformers converts umT5's.

    T5 layout: <pad> 0, </s> 1, <unk> 2, no <s>; sentinels <extra_id_N> after the pieces, in reverse order.
    nmt_nfkc gives the Precompiled normaliser that umT5's tokenizer.json has.
    """
    spm.set_random_generator_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            input=CORPUS,
            model_prefix=os.path.join(tmp, "spiece"),
            vocab_size=pieces,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc",
            num_threads=1,
            minloglevel=2,
        )
        tok = T5Tokenizer.from_pretrained(tmp, extra_ids=extra_ids)
        # The HF tokenizer must agree with SentencePiece itself, or the fixture tests the converter.
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "spiece.model"))
        for p in TOKENIZER_PROMPTS:
            c = prompt_clean(p)
            hf = tok(c, add_special_tokens=False).input_ids
            if hf != sp.encode(c):
                print(f"  warning: tokenizer.json and spiece.model disagree on {c!r}: {hf} vs {sp.encode(c)}")
    return tok


def build_text_encoder(cfg: dict, g: torch.Generator) -> UMT5EncoderModel:
    config = UMT5Config(
        **cfg,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
    )
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                # One table per layer in umT5 (T5 has it in layer 0 only): make every layer's clearly different.
                fill_normal(p, g, std=1.0)
            elif "layer_norm" in name:
                fill_normal(p, g, std=0.2, mean=1.0)
            elif name == "shared.weight":
                fill_normal(p, g, std=1.0)
            else:
                fill_normal(p, g, std=fan_in(p) ** -0.5)
        biases = [b.weight for b in _rel_biases(model)]
        for i in range(1, len(biases)):
            assert rel_change(biases[i], biases[0]) > 0.5
    return model


def _rel_biases(model):
    return [blk.layer[0].SelfAttention.relative_attention_bias for blk in model.encoder.block]


def _random_ids(g, n: int, vocab: int) -> list:
    """n real tokens: random ordinary ids (not pad/eos/unk) ending with </s>, as the tokenizer would produce."""
    ids = torch.randint(3, vocab, (n - 1,), generator=g).tolist()
    return ids + [1]


@torch.no_grad()
def text_encoder_cases(te, text_len: int, b2_lengths: list, g, root: str, model_dir: str) -> list:
    te = te.float().eval()
    vocab = te.config.vocab_size
    entries = []
    for name, lengths in [("text-encoder-b2", b2_lengths), ("text-encoder-full", [text_len])]:
        ids = torch.zeros(len(lengths), text_len, dtype=torch.int64)
        mask = torch.zeros(len(lengths), text_len, dtype=torch.int64)
        for row, n in enumerate(lengths):
            ids[row, :n] = torch.tensor(_random_ids(g, n, vocab))
            mask[row, :n] = 1
        out = te(input_ids=ids, attention_mask=mask).last_hidden_state
        check_nondegenerate(name, out)
        save_tensors(f"{root}/cases/{name}.in.safetensors", {"input_ids": ids, "attention_mask": mask})
        save_tensors(f"{root}/cases/{name}.out.safetensors", {"last_hidden_state": out})
        entries.append(
            {
                "name": name,
                "component": "text-encoder",
                "model_dir": model_dir,
                "inputs": f"cases/{name}.in.safetensors",
                "expected": f"cases/{name}.out.safetensors",
            }
        )
    return entries


def _tokenize(tokenizer, prompts: list, text_len: int):
    """The call WanPipeline._get_t5_prompt_embeds makes, argument for argument."""
    return tokenizer(
        [prompt_clean(p) for p in prompts],
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )


def tokenizer_cases(tokenizer, text_len: int) -> dict:
    cases = []
    for p in TOKENIZER_PROMPTS:
        enc = _tokenize(tokenizer, [p], text_len)
        ids, mask = enc.input_ids[0].tolist(), enc.attention_mask[0].tolist()
        cases.append({"prompt": p, "cleaned": prompt_clean(p), "input_ids": ids, "attention_mask": mask})
        print(f"  tokenizer {prompt_clean(p)[:40]!r}: {sum(mask)} real tokens")
    return {"text_len": text_len, "cases": cases}


@torch.no_grad()
def text_pipeline_case(pipe, text_len: int, root: str) -> dict:
    """WanPipeline.encode_prompt itself: encoder output cut to each prompt's real length, zero-padded back."""
    enc = _tokenize(pipe.tokenizer, PIPELINE_PROMPTS, text_len)
    embeds, negative = pipe.encode_prompt(
        PIPELINE_PROMPTS,
        do_classifier_free_guidance=False,
        max_sequence_length=text_len,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert negative is None
    lengths = enc.attention_mask.sum(dim=1)
    for row, n in enumerate(lengths.tolist()):
        assert embeds[row, n:].abs().sum() == 0, "padding rows of prompt_embeds must be zero"
    check_nondegenerate("text-pipeline", embeds[0, : lengths[0]])
    save_tensors(
        f"{root}/cases/text-pipeline.in.safetensors",
        {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask},
    )
    save_tensors(f"{root}/cases/text-pipeline.out.safetensors", {"prompt_embeds": embeds})
    return {
        "prompts": PIPELINE_PROMPTS,
        "text_len": text_len,
        "model_dir": "pipeline",
        "inputs": "cases/text-pipeline.in.safetensors",
        "expected": "cases/text-pipeline.out.safetensors",
    }
