#!/usr/bin/env python3
"""Writes tiny random Hugging Face causal-LM checkpoints and transformers' own reference outputs for
burn-rlhf's Llama-family decoder tests (`fixtures/hf/`).

Every checkpoint is built by transformers itself (`AutoModelForCausalLM.from_config`), given seeded
random weights, and written by `model.save_pretrained` (safetensors, float32). Every reference number
(`reference.json`) comes from the model that `from_pretrained` reloads from that very directory: a
full forward with left padding (logits and the final hidden states at the non-pad positions), and
`model.generate(do_sample=False, use_cache=True)` (greedy tokens and their log-probs).

Usage (from the repository root, in a venv with torch and transformers):

    python scripts/make_hf_fixtures.py [--seed 20261206] [--out fixtures/hf]

Takes about 8 s on one CPU core; the output is byte-identical on rerun. See `fixtures/hf/README.md` for the layout.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import safetensors
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 512
PAD_ID = 0
BOS_ID = 1
PROMPT_LENGTHS = (5, 9, 12)
MAX_NEW_TOKENS = 32
# Initialization (see `randomize`): std of every Linear/Embedding weight, std of biases, and the
# spread of RMSNorm weights around 1. Large enough that logits are far from uniform.
WEIGHT_STD = 0.15
EMBED_STD = 0.3
BIAS_STD = 0.1
NORM_STD = 0.1

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    initializer_range=WEIGHT_STD,
    use_cache=True,
)

# name -> (config class, config kwargs on top of COMMON)
ARCHS = {
    "llama3": (
        LlamaConfig,
        dict(
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "qwen2": (
        Qwen2Config,
        dict(
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    "qwen3": (
        Qwen3Config,
        dict(
            head_dim=32,  # != hidden_size / num_attention_heads (16), as in real Qwen3 (e.g. 0.6B: 1024/16 -> 128)
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    "smollm2": (
        LlamaConfig,
        dict(
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            rope_parameters=dict(rope_type="default", rope_theta=100000.0),
        ),
    ),
    "mistral": (
        MistralConfig,
        dict(
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=None,  # as Mistral-7B v0.2/v0.3; the fixtures' sequences (<= 44) are short anyway
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
}


def f32(x):
    """Shortest decimal string that round-trips the float32 value (parsed back as f32 in Rust)."""
    return float(str(np.float32(x)))


def f32_list(t):
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def randomize(model, seed):
    """Seeded re-initialization of every parameter, in sorted-name order: Linear weights
    N(0, WEIGHT_STD), embedding/untied head N(0, EMBED_STD), biases N(0, BIAS_STD), RMSNorm weights
    1 + N(0, NORM_STD) (so that a loader that drops norm weights or biases fails the parity test)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * noise)
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * noise)
            elif "embed_tokens" in name or name.startswith("lm_head"):
                p.copy_(EMBED_STD * noise)
            else:
                p.copy_(WEIGHT_STD * noise)


def make_prompts(seed):
    gen = torch.Generator().manual_seed(seed + 1000)
    t = max(PROMPT_LENGTHS)
    input_ids = torch.full((len(PROMPT_LENGTHS), t), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, n in enumerate(PROMPT_LENGTHS):
        ids = torch.randint(3, VOCAB, (n,), generator=gen)
        ids[0] = BOS_ID
        input_ids[b, t - n :] = ids
        attention_mask[b, t - n :] = 1
    # Exactly `GenerationMixin._prepare_position_ids_for_generation` (transformers 5.25
    # generation/utils.py 921-925): cumsum(mask) - 1, pad positions set to 0.
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    return input_ids, attention_mask, position_ids


def load(path, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    model.eval()
    return model


@torch.no_grad()
def forward_reference(model, input_ids, attention_mask, position_ids):
    """Full forward; returns (logits [B,T,V], last hidden state after the final norm [B,T,H])."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=True,
    )
    base = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = base.last_hidden_state
    assert torch.equal(model.lm_head(hidden), out.logits), "lm_head(last_hidden_state) != logits"
    return out.logits.float(), hidden.float()


@torch.no_grad()
def greedy(model, input_ids, attention_mask, eos_token_id):
    gen = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        min_new_tokens=0,
        use_cache=True,
        pad_token_id=PAD_ID,
        eos_token_id=eos_token_id,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    new = gen.sequences[:, input_ids.shape[1] :]
    raw = torch.stack(gen.logits, dim=1).float()  # [B, N, V], before logits processors
    scores = torch.stack(gen.scores, dim=1).float()  # after processors (none for plain greedy)
    assert torch.equal(raw, scores), "generation scores differ from raw logits"
    logp = torch.log_softmax(raw, dim=-1)
    token_logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    top2 = raw.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    assert torch.equal(raw.argmax(-1), new), "greedy token is not the argmax"
    return new, token_logp, margin, raw


def safetensors_info(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    info = {}
    for f in files:
        with safetensors.safe_open(os.path.join(d, f), framework="pt") as st:
            keys = sorted(st.keys())
            info[f] = {
                "metadata": st.metadata(),
                "tensors": {k: [str(st.get_slice(k).get_dtype()), list(st.get_slice(k).get_shape())] for k in keys},
            }
    return info


def build(name, seed, out):
    cls, kw = ARCHS[name]
    cfg = cls(**COMMON, **kw)
    # `eos_token_id` is chosen after the first greedy run (see below); start with none.
    cfg.eos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    randomize(model, seed)
    model.eval()
    input_ids, attention_mask, position_ids = make_prompts(seed)

    # Greedy without EOS, then pick an EOS id that no row ever produces (so no row stops early), and
    # store it in config.json / generation_config.json.
    new, _, _, _ = greedy(model, input_ids, attention_mask, eos_token_id=None)
    used = set(new.reshape(-1).tolist()) | set(input_ids.reshape(-1).tolist())
    eos = next(i for i in range(VOCAB - 1, 2, -1) if i not in used)
    model.config.eos_token_id = eos
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=eos, pad_token_id=PAD_ID, do_sample=False
    )

    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)

    # Reference numbers from the reloaded checkpoint; the in-memory model must agree bit for bit.
    re = load(d)
    logits, hidden = forward_reference(re, input_ids, attention_mask, position_ids)
    logits0, hidden0 = forward_reference(model, input_ids, attention_mask, position_ids)
    assert torch.equal(logits, logits0) and torch.equal(hidden, hidden0), f"{name}: reload changed logits"
    new2, token_logp, margin, gen_logits = greedy(re, input_ids, attention_mask, eos_token_id=eos)
    assert torch.equal(new2, new), f"{name}: EOS changed the continuation"
    assert new2.shape[1] == MAX_NEW_TOKENS
    return model, d, (input_ids, attention_mask, position_ids), (logits, hidden), (new2, token_logp, margin, gen_logits), eos


def write_reference(d, name, model_for_tf, seed, inputs, fwd, gen, eos, note=None):
    cfg = model_for_tf.config
    input_ids, attention_mask, position_ids = inputs
    logits, hidden = fwd
    new, token_logp, margin, gen_logits = gen
    b, t, v = logits.shape
    positions = [[i, j] for i in range(b) for j in range(t) if attention_mask[i, j]]
    # Teacher-forced check of the cached decode: one full forward over prompt + generated tokens
    # gives (up to float rounding) the logits generate() produced step by step with the KV cache.
    full_ids = torch.cat([input_ids, new], dim=1)
    full_mask = torch.cat([attention_mask, torch.ones_like(new)], dim=1)
    full_pos = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():
        tf = model_for_tf(full_ids, attention_mask=full_mask, position_ids=full_pos, use_cache=False).logits.float()
    tf = tf[:, t - 1 : t - 1 + new.shape[1]]
    tf_diff = (tf - gen_logits).abs().max().item()
    assert tf_diff < 1e-4, tf_diff
    # First-step generation logits must equal the full forward's last-position logits (same
    # prefill); report how close (the cached path may differ by float rounding).
    prefill_diff = (gen_logits[:, 0] - logits[:, -1]).abs().max().item()
    top = torch.softmax(logits[attention_mask.bool()], -1).max(-1).values
    ref = {
        "arch": name,
        "model_type": cfg.model_type,
        "architectures": cfg.architectures,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "python": sys.version.split()[0],
        },
        "seed": seed,
        "note": note,
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": eos,
        "padding_side": "left",
        "prompt_lengths": list(PROMPT_LENGTHS),
        "shape": {"batch": b, "seq": t, "vocab": v, "hidden": hidden.shape[-1]},
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "position_ids": position_ids.tolist(),
        "rope": {
            "parameters": cfg.rope_parameters,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            # the model's own rotary_emb.inv_freq (float32, head_dim/2 values): angle = pos * inv_freq[i],
            # applied to dims (i, i + head_dim/2) by rotate_half
            "inv_freq": f32_list(model_for_tf.get_decoder().rotary_emb.inv_freq),
            "attention_scaling": float(model_for_tf.get_decoder().rotary_emb.attention_scaling),
        },
        "positions": positions,
        "logits": [f32_list(logits[i, j]) for i, j in positions],
        "hidden_states": [f32_list(hidden[i, j]) for i, j in positions],
        "stats": {
            "logits_std": f32(logits[attention_mask.bool()].std().item()),
            "mean_top1_prob": f32(top.mean().item()),
            "generation_prefill_vs_forward_max_abs_diff": f32(prefill_diff),
            "generation_cached_vs_teacher_forced_max_abs_diff": f32(tf_diff),
            "min_top2_margin": f32(margin.min().item()),
        },
        "generation": {
            "do_sample": False,
            "use_cache": True,
            "max_new_tokens": MAX_NEW_TOKENS,
            "eos_token_id": eos,
            "pad_token_id": PAD_ID,
            "eos_hit": bool((new == eos).any().item()),
            "new_tokens": new.tolist(),
            "logprobs": [f32_list(r) for r in token_logp],
            "top2_margin": [f32_list(r) for r in margin],
        },
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    return ref


def legacy_config(d):
    """Rewrites d/config.json in the transformers 4.x form that most Hub checkpoints still carry:
    `rope_theta` at top level, `rope_scaling` (the rope parameters without `rope_theta`, or null for
    the default rope) and `torch_dtype` instead of transformers 5's `rope_parameters` and `dtype`.
    transformers 5 reads both forms (`standardize_rope_params`); a loader must too."""
    path = os.path.join(d, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    cfg["torch_dtype"] = cfg.pop("dtype")
    with open(path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    manifest = {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "seed": args.seed,
        "command": "python scripts/make_hf_fixtures.py --seed %d" % args.seed,
        "dirs": {},
    }
    for k, name in enumerate(ARCHS):
        seed = args.seed + 17 * k
        model, d, inputs, fwd, gen, eos = build(name, seed, out)
        ref = write_reference(d, name, model, seed, inputs, fwd, gen, eos)
        manifest["dirs"][name] = {"seed": seed, "reference": f"{name}/reference.json", "stats": ref["stats"]}
        print(f"{name}: {ref['stats']}  eos={eos}  new[0][:8]={ref['generation']['new_tokens'][0][:8]}")

        if name == "llama3":
            # Same weights, sharded: model.safetensors.index.json + >= 2 shards. The reference is
            # llama3/reference.json (identical weights); a copy of it is not stored. Its config.json is
            # rewritten in the legacy 4.x form (see `legacy_config`).
            ds = os.path.join(out, "llama3_sharded")
            shutil.rmtree(ds, ignore_errors=True)
            model.save_pretrained(ds, max_shard_size="200KB")
            shards = [f for f in os.listdir(ds) if f.endswith(".safetensors")]
            assert os.path.exists(os.path.join(ds, "model.safetensors.index.json")) and len(shards) >= 2, shards
            legacy_config(ds)
            m2 = load(ds)
            assert m2.config.rope_parameters == model.config.rope_parameters, m2.config.rope_parameters
            l2, h2 = forward_reference(m2, *inputs)
            assert torch.equal(l2, fwd[0]) and torch.equal(h2, fwd[1]), "sharded copy differs"
            manifest["dirs"]["llama3_sharded"] = {
                "seed": seed,
                "reference": "llama3/reference.json",
                "shards": sorted(shards),
                "config_form": "transformers 4.x (rope_theta + rope_scaling + torch_dtype)",
            }
            print(f"llama3_sharded: {len(shards)} shards, logits identical to llama3")

        if name == "qwen2":
            # bfloat16 copy. Its reference is computed from the bf16 weights upcast to float32 (what a
            # loader that upcasts bf16 -> f32 must reproduce), so it differs from qwen2/reference.json.
            db = os.path.join(out, "qwen2_bf16")
            shutil.rmtree(db, ignore_errors=True)
            mb = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            mb.to(torch.bfloat16).save_pretrained(db)
            info = safetensors_info(db)
            assert all(dt == "bfloat16" or dt == "BF16" for f in info.values() for dt, _ in f["tensors"].values()), info
            rb = load(db, torch.float32)  # upcast on load
            fwd_b = forward_reference(rb, *inputs)
            gen_b = greedy(rb, inputs[0], inputs[1], eos_token_id=eos)
            ref_b = write_reference(
                db, "qwen2_bf16", rb, seed, inputs, fwd_b, gen_b, eos,
                note="qwen2 weights rounded to bfloat16 and saved in bfloat16; reference computed in float32 "
                "from the bf16 weights upcast (AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32))",
            )
            mb16 = load(db, torch.bfloat16)
            assert mb16.dtype == torch.bfloat16
            lb_bf16 = forward_reference(mb16, *inputs)[0]
            manifest["dirs"]["qwen2_bf16"] = {
                "seed": seed,
                "reference": "qwen2_bf16/reference.json",
                "stats": ref_b["stats"],
                "max_abs_logits_diff_vs_qwen2_f32": f32((fwd_b[0] - fwd[0]).abs().max().item()),
                "max_abs_logits_diff_bf16_compute_vs_f32_compute": f32((lb_bf16 - fwd_b[0]).abs().max().item()),
            }
            print(f"qwen2_bf16: {ref_b['stats']}  |f32(bf16 w) - f32| = {manifest['dirs']['qwen2_bf16']['max_abs_logits_diff_vs_qwen2_f32']}")

    for name in manifest["dirs"]:
        d = os.path.join(out, name)
        info = safetensors_info(d)
        for f, i in info.items():
            assert i["metadata"] == {"format": "pt"}, (name, f, i["metadata"])
        manifest["dirs"][name]["files"] = sorted(os.listdir(d))
        manifest["dirs"][name]["bytes"] = dir_size(d)
        manifest["dirs"][name]["safetensors"] = info
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"total {dir_size(out) / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
