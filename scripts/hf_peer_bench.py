#!/usr/bin/env python3
"""CPU benchmark peer for burn-rlhf's Llama-family decoder: transformers greedy generation and one TRL
DPOTrainer training step on a model with SmolLM2-135M's configuration and random weights.

    python scripts/hf_peer_bench.py [--make /tmp/hf-peer-smollm2-135m] [--threads 2] [--quick]
    python scripts/hf_peer_bench.py --model DIR     # any existing HF checkpoint dir instead

`--make DIR` (default `/tmp/hf-peer-smollm2-135m`) writes the checkpoint there if DIR has no
config.json yet (`--remake` to overwrite): `LlamaConfig` with SmolLM2-135M's shape (hidden 576, 30
layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152, tied embeddings, rope_theta 100000,
rms_norm_eps 1e-5), transformers' own random init (seeded), float32, about 540 MB. Keep it out of the
repository.

What is timed (`torch.set_num_threads(--threads)`, float32, CPU; one JSON line on stdout):

* `generate`: `model.generate(do_sample=False, use_cache=True, max_new_tokens=N, eos_token_id=None)`
  on random prompts of `--prompt-len` tokens (no padding) at batch 1 and `--gen-batch` (8). The
  wall time covers prefill and all decode steps. One warm-up call, then the median of `--runs`.
  Reported: `tokens_per_s` = batch * new_tokens / median seconds (all rows together),
  `seq_tokens_per_s` = new_tokens / median seconds (per row).
* `dpo_step`: TRL's own `DPOTrainer` built end to end (`DPOTrainer(model=DIR, ref_model=None,
  args=DPOConfig(...), train_dataset=..., processing_class=tokenizer)`, so TRL loads the policy
  and its reference copy from DIR itself) on an in-memory dataset of standard-format preference rows
  whose prompt/chosen/rejected are each `--dpo-len/2` tokens (so every sequence is `--dpo-len` = 256
  tokens, `--dpo-pairs` = 4 pairs per step, i.e. one batch of 8 sequences). The tokenizer is a
  local WordLevel tokenizer whose words `t4..t49151` map to ids 4..49151 and `<pad> <s> </s> <unk>` to 0..3 (no download). `trainer.train()`
  runs `--dpo-steps` steps; a callback times each step from `on_step_begin` to `on_step_end`, which is
  one `training_step` (reference forward under no_grad, policy forward on chosen+rejected
  concatenated, sigmoid DPO loss, backward) plus clipping and the AdamW (torch fused) optimizer step
  and scheduler step. Step 1 is a warm-up; the median of the rest is reported (or step 1 alone
  when only one step runs). TRL 1.16's DPOConfig defaults `gradient_checkpointing=True`; this
  benchmark turns it off unless `--gradient-checkpointing` is given (recorded in the output).
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time

import torch


def make_checkpoint(path, seed):
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        initializer_range=0.041666666666666664,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def word_tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Special tokens get names that are never a substring of a word (transformers splits added tokens
    # out of words first).
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"t{i}": i for i in range(4, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def bench_generate(model, batch, prompt_len, new_tokens, runs, seed):
    gen = torch.Generator().manual_seed(seed + batch)
    ids = torch.randint(4, model.config.vocab_size, (batch, prompt_len), generator=gen)
    mask = torch.ones_like(ids)
    kw = dict(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        use_cache=True,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    times = []
    with torch.inference_mode():
        out = model.generate(**kw)  # warm-up
        assert out.shape == (batch, prompt_len + new_tokens), out.shape
        for _ in range(runs):
            t0 = time.perf_counter()
            model.generate(**kw)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "runs": runs,
        "seconds": [round(t, 4) for t in times],
        "median_s": round(med, 4),
        "tokens_per_s": round(batch * new_tokens / med, 2),
        "seq_tokens_per_s": round(new_tokens / med, 2),
    }


def bench_dpo(path, pairs, seq_len, steps, seed, grad_ckpt, attn, workdir):
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    warnings.filterwarnings("ignore")
    with open(os.path.join(path, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tok = word_tokenizer(vocab)
    gen = torch.Generator().manual_seed(seed)
    part = seq_len // 2  # prompt = part tokens, chosen/rejected = part tokens each (the last one is EOS)

    def words(n):
        return " ".join(f"t{i}" for i in torch.randint(4, vocab, (n,), generator=gen).tolist())

    # Standard (non-conversational) rows: TRL tokenizes prompt and prompt + chosen (string concatenation),
    # so completions start with a space; they already end with EOS, so TRL appends none.
    rows = [
        {"prompt": words(part), "chosen": " " + words(seq_len - part - 1) + " </s>", "rejected": " " + words(seq_len - part - 1) + " </s>"}
        for _ in range(pairs * steps)
    ]
    ds = Dataset.from_list(rows)
    cfg = DPOConfig(
        output_dir=workdir,
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=pairs,
        gradient_accumulation_steps=1,
        max_steps=steps,
        max_length=seq_len,
        gradient_checkpointing=grad_ckpt,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=seed,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": attn},
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    t_init = time.perf_counter()
    trainer = DPOTrainer(model=path, ref_model=None, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
    t_init = time.perf_counter() - t_init
    # Every row must be exactly seq_len tokens (no truncation, no padding).
    lens = {len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset} | {
        len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
    }
    assert lens == {seq_len}, lens
    result = trainer.train()
    times = timer.times
    steady = times[1:] if len(times) > 1 else times
    return {
        "pairs": pairs,
        "seq_len": seq_len,
        "sequences_per_step": 2 * pairs,
        "steps": steps,
        "step_seconds": [round(t, 3) for t in times],
        "median_step_s": round(statistics.median(steady), 3),
        "trainer_init_s": round(t_init, 2),
        "train_loss": result.training_loss,
        "gradient_checkpointing": grad_ckpt,
        "attn_implementation": attn,
        "optim": str(cfg.optim),
        "loss_type": list(cfg.loss_type),
        "beta": cfg.beta,
        "ref_model": "separate copy loaded by DPOTrainer (ref_model=None, no PEFT)",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make", default="/tmp/hf-peer-smollm2-135m", help="checkpoint dir to create/use")
    ap.add_argument("--remake", action="store_true", help="overwrite the --make checkpoint")
    ap.add_argument("--model", help="benchmark this existing HF checkpoint dir instead of --make")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dpo-pairs", type=int, default=4)
    ap.add_argument("--dpo-len", type=int, default=256)
    ap.add_argument("--dpo-steps", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off unless given")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation for both benches (default sdpa)")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-dpo", action="store_true")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test settings: prompt 8, 8 new tokens, 1 run, DPO 2 pairs x 64 tokens, 2 steps",
    )
    args = ap.parse_args()
    if args.quick:
        args.prompt_len, args.new_tokens, args.runs = 8, 8, 1
        args.dpo_pairs, args.dpo_len, args.dpo_steps = 2, 64, 2

    import transformers
    import trl
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(args.threads)

    path = args.model or args.make
    made = None
    if not args.model and (args.remake or not os.path.exists(os.path.join(path, "config.json"))):
        t0 = time.perf_counter()
        n = make_checkpoint(path, args.seed)
        made = {"params": n, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"wrote {path} ({n} parameters)", file=sys.stderr)

    out = {
        "bench": "hf_peer_bench",
        "model_dir": os.path.abspath(path),
        "made": made,
        "threads": args.threads,
        "quick": args.quick,
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if not args.skip_generate:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.attn)
        model.eval()
        out["params"] = sum(p.numel() for p in model.parameters())
        out["generate"] = [
            bench_generate(model, b, args.prompt_len, args.new_tokens, args.runs, args.seed)
            for b in (1, args.gen_batch)
        ]
        del model
    if not args.skip_dpo:
        workdir = os.path.join("/tmp", f"hf-peer-bench-dpo-{os.getpid()}")
        # The Trainer prints its log dicts on stdout; keep stdout for the one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            out["dpo_step"] = bench_dpo(
                path, args.dpo_pairs, args.dpo_len, args.dpo_steps, args.seed, args.gradient_checkpointing, args.attn, workdir
            )
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
