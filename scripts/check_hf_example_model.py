#!/usr/bin/env python3
"""Loads a model saved by the `hf_dpo` / `hf_grpo` examples in transformers and measures it
independently of the crate.

    python scripts/check_hf_example_model.py DIR --prompts fixtures/data/examples/prompts_test.jsonl [--word no]
    python scripts/check_hf_example_model.py DIR --pairs fixtures/data/examples/preference_test.jsonl

`--prompts`: `AutoModelForCausalLM.from_pretrained(DIR)` + `AutoTokenizer.from_pretrained(DIR)`,
each conversational prompt rendered with `apply_chat_template(add_generation_prompt=True)`,
greedy `generate` (max_new_tokens 8), and the share of answers that start with `--word`
(case-insensitive): the held-out greedy reward the `hf_grpo` example prints.

`--pairs`: for each conversational preference row, the summed log-prob of the chosen and of the
rejected completion, tokenized as TRL 1.16's DPOTrainer does (prompt with the generation prompt,
prompt + completion, completion = the tokens after their common prefix), and the share of pairs
where chosen > rejected: the "chosen preferred" figure the `hf_dpo` example prints.

Prints one JSON line. Exit status 0 when the model loads and the figure was computed, 2 when it
does not load.
"""

import argparse
import json
import sys

import torch


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--prompts")
    ap.add_argument("--pairs")
    ap.add_argument("--word", default="no")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(args.dir)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"loaded": False, "error": str(e)}))
        sys.exit(2)
    model.eval()
    report = {"loaded": True, "dir": args.dir}

    if args.prompts:
        hits, answers = 0, []
        for row in rows(args.prompts):
            ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=8,
                                     do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
            answers.append(text)
            hits += text.lstrip().lower().startswith(args.word.lower())
        report.update(prompts=len(answers), greedy_reward=hits / max(len(answers), 1), first_answer=answers[0])

    if args.pairs:
        def common(a, b):
            n = 0
            for x, y in zip(a, b):
                if x != y:
                    break
                n += 1
            return n

        def seq_logp(ids, start):
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                logits = model(input_ids).logits[0].float()
            logps = torch.log_softmax(logits[:-1], dim=-1)
            targets = input_ids[0, 1:]
            token = logps.gather(1, targets[:, None])[:, 0]
            return token[start - 1:].sum().item()

        preferred, total = 0, 0
        for row in rows(args.pairs):
            p = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
            c = tok.apply_chat_template(row["prompt"] + row["chosen"], return_dict=True)["input_ids"]
            r = tok.apply_chat_template(row["prompt"] + row["rejected"], return_dict=True)["input_ids"]
            n = min(common(p, c), common(p, r))
            preferred += seq_logp(c, n) > seq_logp(r, n)
            total += 1
        report.update(pairs=total, chosen_preferred=preferred / max(total, 1))

    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
