#!/usr/bin/env python3
"""Checks that a checkpoint directory (as burn-rlhf writes it) loads in transformers and reproduces a
fixture's reference outputs.

    python scripts/check_hf_roundtrip.py DIR_WRITTEN_BY_CRATE REFERENCE [--tol 1e-4] [--json]

REFERENCE is a fixture folder holding `reference.json` (e.g. `fixtures/hf/qwen2`), or the JSON file
itself. For `fixtures/hf/llama3_sharded`, which stores no reference, use `fixtures/hf/llama3`.

What it does: `AutoModelForCausalLM.from_pretrained(DIR, dtype=float32, attn_implementation="eager")`
(bf16/f16 checkpoints are upcast on load, as the references are computed), a full forward on the
reference's left-padded `input_ids` / `attention_mask` / `position_ids`, and the max |diff| of the
logits and of the final hidden states at the reference's non-pad `positions`. It also runs greedy
`generate` with the reference's settings and reports whether the new tokens match (informational:
a near-tie can flip a token when weights changed by rounding; see `top2_margin`). It also lists
the safetensors metadata and whether `lm_head.weight` is stored.

Exit status: 0 if max |logits diff| <= tol, 1 above it, 2 if the directory does not load.
"""

import argparse
import json
import os
import sys

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="checkpoint directory to load (config.json + *.safetensors)")
    ap.add_argument("reference", help="fixture folder with reference.json, or the JSON file")
    ap.add_argument("--tol", type=float, default=1e-4, help="max allowed |logits diff| (default 1e-4)")
    ap.add_argument("--no-generate", action="store_true", help="skip the greedy generation comparison")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = ap.parse_args()

    import safetensors
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    ref_path = args.reference
    if os.path.isdir(ref_path):
        ref_path = os.path.join(ref_path, "reference.json")
    with open(ref_path) as f:
        ref = json.load(f)

    report = {"dir": os.path.abspath(args.dir), "reference": os.path.abspath(ref_path), "tol": args.tol}

    files = sorted(os.listdir(args.dir))
    st_files = [f for f in files if f.endswith(".safetensors")]
    report["files"] = files
    meta, has_lm_head = {}, False
    for fn in st_files:
        with safetensors.safe_open(os.path.join(args.dir, fn), framework="pt") as st:
            meta[fn] = st.metadata()
            has_lm_head |= "lm_head.weight" in st.keys()
    report["safetensors_metadata"] = meta
    report["lm_head_weight_stored"] = has_lm_head
    warnings = []
    if not st_files:
        warnings.append("no .safetensors file")
    for fn, m in meta.items():
        if not m or m.get("format") not in ("pt", "tf", "flax", "mlx"):
            warnings.append(f"{fn}: metadata {m!r} lacks format=pt (transformers 4.x refuses to load it)")
    if len(st_files) > 1 and "model.safetensors.index.json" not in files:
        warnings.append("several shards but no model.safetensors.index.json")

    try:
        model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 - report any load failure
        report["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(report) if args.json else f"LOAD FAILED: {report['error']}")
        sys.exit(2)
    model.eval()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    report["tie_word_embeddings"] = tied
    if tied and has_lm_head:
        warnings.append("tie_word_embeddings is true but lm_head.weight is stored")
    if not tied and not has_lm_head:
        warnings.append("tie_word_embeddings is false but lm_head.weight is missing")

    input_ids = torch.tensor(ref["input_ids"])
    attention_mask = torch.tensor(ref["attention_mask"])
    position_ids = torch.tensor(ref["position_ids"])
    pos = torch.tensor(ref["positions"])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        hidden = model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
    logits = out.logits.float()[pos[:, 0], pos[:, 1]]
    hidden = hidden.float()[pos[:, 0], pos[:, 1]]
    ref_logits = torch.tensor(ref["logits"], dtype=torch.float32)
    ref_hidden = torch.tensor(ref["hidden_states"], dtype=torch.float32)
    if logits.shape != ref_logits.shape:
        report["error"] = f"logits shape {list(logits.shape)} != reference {list(ref_logits.shape)}"
        print(json.dumps(report) if args.json else f"FAIL: {report['error']}")
        sys.exit(1)
    report["max_abs_logits_diff"] = (logits - ref_logits).abs().max().item()
    report["max_abs_hidden_diff"] = (hidden - ref_hidden).abs().max().item()

    if not args.no_generate:
        g = ref["generation"]
        with torch.no_grad():
            seq = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=g["max_new_tokens"],
                use_cache=g["use_cache"],
                pad_token_id=g["pad_token_id"],
                eos_token_id=g["eos_token_id"],
            )
        new = seq[:, input_ids.shape[1] :].tolist()
        report["generation_tokens_match"] = new == g["new_tokens"]
        if not report["generation_tokens_match"]:
            first = [
                next((i for i, (a, b) in enumerate(zip(r, e)) if a != b), min(len(r), len(e)))
                for r, e in zip(new, g["new_tokens"])
            ]
            report["generation_first_mismatch_per_row"] = first
    report["warnings"] = warnings
    ok = report["max_abs_logits_diff"] <= args.tol
    report["ok"] = ok

    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.dir} vs {ref_path}")
        print(f"  safetensors: {len(st_files)} file(s), metadata {sorted({json.dumps(m) for m in meta.values()})}")
        print(f"  tie_word_embeddings={tied} lm_head.weight stored={has_lm_head}")
        print(f"  max |logits diff| = {report['max_abs_logits_diff']:.3e} (tol {args.tol:g})")
        print(f"  max |hidden diff| = {report['max_abs_hidden_diff']:.3e}")
        if "generation_tokens_match" in report:
            print(f"  greedy tokens match: {report['generation_tokens_match']}")
        for w in warnings:
            print(f"  warning: {w}")
        print("  OK" if ok else "  FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
