#!/usr/bin/env python3
"""Dumps TRL's trainer configs as JSON (and one as YAML) for burn-rlhf's `trl` loader tests, and
writes the field-name tables of `src/trl/fields.rs`.

Everything here is produced by TRL's and transformers' own classes: each config is constructed
with TRL's defaults (or with the overrides below), its `__post_init__` runs, and the result is
written with `TrainingArguments.to_json_string()` (what `trainer.args.to_json_string()` gives,
and the format TRL saves as `training_args` JSON). Field names and defaults come from
`dataclasses.fields(cls)`.

Usage (from the repository root). TRL 1.16 accepts `transformers>=4.56.2`, and the fields of
`TrainingArguments` differ between 4.x and 5.x, so the script runs once per transformers version:
first a *side run* in a venv with each 4.x version (same TRL 1.16), then the main run in the
venv with transformers 5.x, which reads the side runs' records:

    TRL_EXPERIMENTAL_SILENCE=1 /tmp/tf456/bin/python scripts/dump_trl_configs.py \
        --side-run --out fixtures/trl_configs
    TRL_EXPERIMENTAL_SILENCE=1 /tmp/tf457/bin/python scripts/dump_trl_configs.py \
        --side-run --side-prefix tf457 --out fixtures/trl_configs
    TRL_EXPERIMENTAL_SILENCE=1 python scripts/dump_trl_configs.py --bco-wheel trl-1.13.0-py3-none-any.whl \
        --out fixtures/trl_configs --rust-fields src/trl/fields.rs \
        --side-records fixtures/trl_configs/training_arguments_transformers_4.56.2.json \
                       fixtures/trl_configs/training_arguments_transformers_4.57.6.json

A side run (`--side-run`) writes `training_arguments_transformers_<version>.json`: the versions,
its command line, the `init` fields of that transformers' `TrainingArguments`, and the files it
dumped. With `--side-prefix P` it also dumps the defaults of `DPOConfig` and `GRPOConfig` as
`P_dpo_defaults.json` / `P_grpo_defaults.json` (they hold the 4.x-only fields). The main run
makes every other file, `manifest.json` (which lists the side runs' files too, each file with
the transformers version that made it), `defaults_of_loss_changing_fields.json`, and with
`--rust-fields` the Rust tables: `TRAINING_ARGUMENTS` is the union of the running transformers'
fields and those of every `--side-records` file; each `*_OWN` table is the class's fields
beyond the running transformers' `TrainingArguments`.

The side runs dump no other class, so a class added to the main run (as `DistillationConfig` and
the experimental `GKDConfig` were) needs only the main run, with the side records already in `--out`.

`BCOConfig` is not in TRL 1.16 (TRL 1.14 removed the experimental BCO trainer); its class is
read from the TRL 1.13.0 wheel given by `--bco-wheel` (`pip download --no-deps trl==1.13.0`)
and executed on top of the installed TRL's `_BaseConfig` (identical fields in 1.13 and 1.16).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import textwrap
import types
import warnings
import zipfile

import transformers
import trl
from transformers import TrainingArguments
from trl import DistillationConfig, DPOConfig, GRPOConfig, KTOConfig, RewardConfig, RLOOConfig
from trl.experimental.cpo import CPOConfig
from trl.experimental.gkd import GKDConfig
from trl.experimental.online_dpo import OnlineDPOConfig
from trl.experimental.orpo import ORPOConfig

import yaml
from packaging.version import Version


def load_bco_config(wheel):
    """`BCOConfig` from TRL 1.13.0's `trl/experimental/bco/bco_config.py` (read from the wheel)."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read("trl/experimental/bco/bco_config.py").decode()
    name = "trl.experimental.bco.bco_config"
    module = types.ModuleType(name)
    module.__package__ = "trl.experimental.bco"
    module.__file__ = f"{wheel}!/trl/experimental/bco/bco_config.py"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.BCOConfig


# Non-default configs: (file stem, class name, overrides). Every value is passed to TRL's
# constructor as a user would; the dump is what TRL made of it (after `__post_init__`).
NON_DEFAULT = [
    (
        "dpo_mpo",
        "DPOConfig",
        dict(
            loss_type=["sigmoid", "bco_pair", "sft"],
            loss_weights=[0.8, 0.2, 1.0],
            beta=0.05,
            learning_rate=5e-7,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=8,
            max_length=512,
            precompute_ref_log_probs=True,
        ),
    ),
    (
        "dpo_robust_alpha_divergence",
        "DPOConfig",
        dict(
            loss_type="robust",
            label_smoothing=0.1,
            f_divergence_type="alpha_divergence",
            f_alpha_divergence_coef=0.3,
            beta=0.2,
            num_train_epochs=2,
        ),
    ),
    (
        "dpo_ld_wpo_discopop",
        "DPOConfig",
        dict(loss_type=["discopop"], ld_alpha=0.5, use_weighting=True, discopop_tau=0.1, beta=0.3),
    ),
    (
        "cpo_alphapo",
        "CPOConfig",
        dict(loss_type="alphapo", alpha=0.25, beta=2.0, simpo_gamma=0.6, label_smoothing=0.1),
    ),
    ("cpo_ipo", "CPOConfig", dict(loss_type="ipo", beta=0.5, cpo_alpha=0.5)),
    ("orpo_beta", "ORPOConfig", dict(beta=0.25, max_length=256)),
    (
        "kto_apo_zero_unpaired",
        "KTOConfig",
        dict(loss_type="apo_zero_unpaired", beta=0.2, desirable_weight=1.33, undesirable_weight=0.8),
    ),
    ("bco_beta", "BCOConfig", dict(beta=0.3, prompt_sample_size=256, max_density_ratio=5.0)),
    ("reward_centered", "RewardConfig", dict(center_rewards_coefficient=0.01, max_length=2048)),
    (
        "grpo_gspo",
        "GRPOConfig",
        dict(
            loss_type="grpo",
            importance_sampling_level="sequence",
            beta=0.04,
            epsilon=3e-4,
            epsilon_high=4e-4,
            delta=1.5,
            num_generations=4,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_completion_length=256,
            reward_weights=[1.0, 0.5],
            multi_objective_aggregation="normalize_then_sum",
            scale_rewards=False,
            top_entropy_quantile=0.2,
            off_policy_mask_threshold=0.5,
            use_bias_correction_kl=False,
            entropy_coef=0.01,
        ),
    ),
    (
        "grpo_sapo",
        "GRPOConfig",
        dict(
            loss_type="sapo",
            sapo_temperature_pos=0.9,
            sapo_temperature_neg=1.1,
            scale_rewards="batch",
            num_generations=4,
            per_device_train_batch_size=8,
            steps_per_generation=4,
            vespo_k_pos=1.5,
        ),
    ),
    (
        "rloo_clipped",
        "RLOOConfig",
        dict(
            num_generations=4,
            per_device_train_batch_size=4,
            beta=0.0,
            normalize_advantages=True,
            reward_clip_range=(-1.0, 1.0),
            epsilon_high=0.28,
            reward_weights=[2.0],
        ),
    ),
    (
        "online_dpo_ipo_sampling",
        "OnlineDPOConfig",
        dict(
            loss_type="ipo",
            beta=0.2,
            temperature=0.7,
            max_new_tokens=32,
            top_k=20,
            top_p=0.9,
            min_p=0.05,
            missing_eos_penalty=1.0,
        ),
    ),
    ("grpo_mask_truncated", "GRPOConfig", dict(mask_truncated_completions=True)),
    (
        # TRL applies the vLLM importance-sampling correction only with `use_vllm=True`, and
        # `sync_ref_model` needs a reference model (`beta != 0`, checked by the trainer).
        "grpo_unsupported_fields",
        "GRPOConfig",
        dict(
            use_vllm=True,
            vllm_importance_sampling_mode="token_truncate",
            vllm_importance_sampling_clip_min=0.5,
            vllm_importance_sampling_clip_max=2.0,
            beta=0.04,
            sync_ref_model=True,
            ref_model_mixup_alpha=0.9,
            ref_model_sync_steps=64,
        ),
    ),
    (
        "grpo_sampler_fields",
        "GRPOConfig",
        dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
    ),
    (
        # `DistillationConfig` has no `lmbda` (its trainer is always on-policy) and no top-k / tail loss
        # variant: `beta` and `temperature` are its only loss fields; the others here are sampling ones.
        "distillation_gkd",
        "DistillationConfig",
        dict(
            beta=0.3,
            temperature=0.8,
            max_completion_length=24,
            top_p=0.9,
            top_k=20,
            min_p=0.05,
            repetition_penalty=1.1,
            disable_dropout=True,
        ),
    ),
    (
        "gkd_lmbda",
        "GKDConfig",
        dict(lmbda=0.7, beta=0.3, temperature=0.8, max_new_tokens=24, seq_kd=True),
    ),
]

# Side runs (`--side-run --side-prefix P`) dump the defaults of these classes as `P_<stem>_defaults.json`.
SIDE_DUMPS = ["DPOConfig", "GRPOConfig"]

# File stem / Rust constant prefix of a class where it is not `name.removesuffix("Config")`.
SNAKE = {"OnlineDPOConfig": "online_dpo"}

# `defaults_of_loss_changing_fields.json`: the declared default (`dataclasses.fields`) of each of
# these fields, for each of these classes that has it.
LOSS_CHANGING_CLASSES = ["DPOConfig", "GRPOConfig", "RLOOConfig", "KTOConfig", "OnlineDPOConfig"]
LOSS_CHANGING_FIELDS = [
    "mask_truncated_completions",
    "use_adaptive_entropy",
    "entropy_coef_min",
    "entropy_coef_max",
    "entropy_coef_delta",
    "entropy_target",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_cap",
    "num_iterations",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "sync_ref_model",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
    "max_new_tokens",
    "max_completion_length",
    "num_generations",
    "missing_eos_penalty",
    "generation_kwargs",
]
# ... and every field whose name starts with this (the importance-sampling bounds and any other
# vLLM importance-sampling field of the class).
LOSS_CHANGING_PREFIX = "vllm_importance_sampling_"


def snake(name):
    return SNAKE.get(name, name.removesuffix("Config").lower())


def declared_default(f):
    """A dataclass field's default as declared (before any `__post_init__`)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{f.name} has no default")


def jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def loss_changing_defaults(classes, common):
    """`defaults_of_loss_changing_fields.json`: declared defaults, and the value in the class's
    defaults dump where `__post_init__` changed it."""
    out = {}
    for name in LOSS_CHANGING_CLASSES:
        cls = classes[name]
        by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
        names = [n for n in LOSS_CHANGING_FIELDS if n in by_name]
        names += [n for n in by_name if n.startswith(LOSS_CHANGING_PREFIX) and n not in names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dumped = json.loads(cls(**common).to_json_string())
        defaults = {n: jsonable(declared_default(by_name[n])) for n in names}
        out[name] = {
            "defaults": defaults,
            "absent": [n for n in LOSS_CHANGING_FIELDS if n not in by_name],
            "changed_by_post_init": {n: dumped[n] for n in names if dumped[n] != defaults[n]},
        }
    return out


def rust_list(name, doc, names, extra=(), extra_comment=None):
    """A Rust `&[&str]` constant; `extra` names follow a `// extra_comment` line."""
    docs = "".join(f"/// {line}\n" if line else "///\n" for line in doc.split("\n"))
    body = "".join(f'    "{n}",\n' for n in names)
    if extra:
        body += f"    // {extra_comment}\n" + "".join(f'    "{n}",\n' for n in extra)
    return f"{docs}pub(crate) const {name}: &[&str] = &[\n{body}];\n"


def training_argument_names():
    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def common_arguments():
    """The arguments given to every config. Dumps must not depend on the working directory
    (`output_dir`), TRL's default `bf16=True` is rejected by transformers on a machine without a
    GPU unless `use_cpu=True`, and transformers 4.x's default `logging_dir` holds the current time
    and the host name (`output_dir/runs/<time>_<host>`), so it is fixed where the field exists."""
    common = dict(output_dir="trainer_output", use_cpu=True)
    if "logging_dir" in training_argument_names():
        common["logging_dir"] = "trainer_output/runs"
    return common


def dump(out, stem, cls, overrides, common):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = cls(**common, **overrides)
    text = config.to_json_string()
    json.loads(text)  # strict JSON (no NaN / Infinity)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        f.write(text)
    return text


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, allow_nan=False)
        f.write("\n")


def record_name(version):
    return f"training_arguments_transformers_{version}.json"


def side_run(args):
    """Run under another transformers version: its `TrainingArguments` fields (and dumps)."""
    import accelerate
    import huggingface_hub
    import tokenizers
    import torch

    classes = {"DPOConfig": DPOConfig, "GRPOConfig": GRPOConfig}
    common = common_arguments()
    os.makedirs(args.out, exist_ok=True)
    files = []
    if args.side_prefix:
        for name in SIDE_DUMPS:
            stem = f"{args.side_prefix}_{snake(name)}_defaults"
            dump(args.out, stem, classes[name], {}, common)
            files.append({"file": f"{stem}.json", "class": name, "overrides": {}})
    record = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "command": "python " + " ".join(sys.argv),
        "common_arguments": common,
        "training_arguments_fields": training_argument_names(),
        "files": files,
    }
    path = os.path.join(args.out, record_name(transformers.__version__))
    write_json(path, record)
    print(f"wrote {path} and {len(files)} dumps (trl {trl.__version__}, transformers {transformers.__version__})")


def read_side_records(paths, out):
    records = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        if r["trl"] != trl.__version__:
            sys.exit(f"{path}: made with trl {r['trl']}, this run has trl {trl.__version__}")
        if os.path.basename(path) != record_name(r["transformers"]):
            sys.exit(f"{path}: expected the name {record_name(r['transformers'])}")
        for entry in r["files"]:
            if not os.path.exists(os.path.join(out, entry["file"])):
                sys.exit(f"{path}: {entry['file']} is not in {out}")
        records.append((path, r))
    # Newest transformers first, whatever the order on the command line.
    return sorted(records, key=lambda pr: Version(pr[1]["transformers"]), reverse=True)


def training_arguments_table(base, records):
    """`TRAINING_ARGUMENTS`: the running transformers' fields, then those found only in the side
    records (newest version first)."""
    base_set = set(base)
    extra, notes = [], []
    for _, r in records:
        names = r["training_arguments_fields"]
        new = [n for n in names if n not in base_set and n not in extra]
        extra += new
        lacks = len([n for n in base if n not in set(names)])
        notes.append(
            f"{r['transformers']} has {len(names)} fields, {len(new)} of them new here, and lacks {lacks} of "
            f"{transformers.__version__}'s"
        )
    versions = [transformers.__version__] + [r["transformers"] for _, r in records]
    if records:
        doc = textwrap.fill(
            f"Fields of `TrainingArguments` (every TRL config has them): the union over transformers "
            f"{', '.join(versions)} (TRL {trl.__version__} requires `transformers>=4.56.2`). First the "
            f"{len(base)} fields of {transformers.__version__}, in its order, then the {len(extra)} that only "
            f"the older versions have: " + "; ".join(notes) + ".",
            width=96,
        )
    else:
        doc = f"Fields of transformers {transformers.__version__} `TrainingArguments` (every TRL config has them)."
    comment = f"Not in transformers {transformers.__version__} (only in " + " / ".join(
        r["transformers"] for _, r in records
    ) + ")"
    return rust_list("TRAINING_ARGUMENTS", doc, base, extra, comment), extra


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bco-wheel", help="path of trl-1.13.0-py3-none-any.whl (required except with --side-run)")
    parser.add_argument("--out", default="fixtures/trl_configs")
    parser.add_argument("--rust-fields", default=None, help="write the field tables here (src/trl/fields.rs)")
    parser.add_argument(
        "--side-run",
        action="store_true",
        help="only write training_arguments_transformers_<version>.json (and --side-prefix dumps) to --out",
    )
    parser.add_argument(
        "--side-prefix", help="with --side-run: also dump PREFIX_dpo_defaults.json, PREFIX_grpo_defaults.json"
    )
    parser.add_argument(
        "--side-records",
        nargs="*",
        default=[],
        metavar="FILE",
        help="records of side runs: their TrainingArguments fields join TRAINING_ARGUMENTS, their files the manifest",
    )
    args = parser.parse_args()
    if args.side_run:
        if args.bco_wheel or args.rust_fields or args.side_records:
            parser.error("--side-run takes only --out and --side-prefix")
        side_run(args)
        return
    if not args.bco_wheel:
        parser.error("--bco-wheel is required")
    if args.side_prefix:
        parser.error("--side-prefix needs --side-run")

    classes = {
        "DPOConfig": DPOConfig,
        "CPOConfig": CPOConfig,
        "ORPOConfig": ORPOConfig,
        "KTOConfig": KTOConfig,
        "BCOConfig": load_bco_config(args.bco_wheel),
        "RewardConfig": RewardConfig,
        "GRPOConfig": GRPOConfig,
        "RLOOConfig": RLOOConfig,
        "OnlineDPOConfig": OnlineDPOConfig,
        "DistillationConfig": DistillationConfig,
        "GKDConfig": GKDConfig,
    }
    os.makedirs(args.out, exist_ok=True)
    records = read_side_records(args.side_records, args.out)
    common = common_arguments()

    files = []
    for name, cls in classes.items():
        stem = snake(name) + "_defaults"
        dump(args.out, stem, cls, {}, common)
        files.append((f"{stem}.json", name, {}))
    for stem, name, overrides in NON_DEFAULT:
        text = dump(args.out, stem, classes[name], overrides, common)
        files.append((f"{stem}.json", name, overrides))
        if stem == "dpo_mpo":
            with open(os.path.join(args.out, "dpo_mpo.yaml"), "w") as f:
                yaml.safe_dump(json.loads(text), f, sort_keys=False)
            files.append(("dpo_mpo.yaml", name, overrides))

    derived = "defaults_of_loss_changing_fields.json"
    write_json(
        os.path.join(args.out, derived),
        {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "what": (
                "For each class: `defaults` = the declared default (dataclasses.fields: default, or "
                "default_factory()) of every listed field the class has, plus every field named "
                f"{LOSS_CHANGING_PREFIX}*; `absent` = listed fields the class does not have; "
                "`changed_by_post_init` = those whose value in the class's defaults dump differs."
            ),
            "fields_listed": LOSS_CHANGING_FIELDS,
            "classes": loss_changing_defaults(classes, common),
        },
    )

    manifest = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "bco_config_source": os.path.basename(args.bco_wheel),
        "command": "python " + " ".join(sys.argv),
        "common_arguments": common,
        "side_runs": [
            {
                "record": os.path.basename(path),
                "transformers": r["transformers"],
                "command": r["command"],
                "common_arguments": r["common_arguments"],
            }
            for path, r in records
        ],
        "files": [
            {
                "file": f,
                "class": c,
                "transformers": transformers.__version__,
                "overrides": {k: jsonable(v) for k, v in o.items()},
            }
            for f, c, o in files
        ]
        + [
            {"file": e["file"], "class": e["class"], "transformers": r["transformers"], "overrides": e["overrides"]}
            for _, r in records
            for e in r["files"]
        ],
        "derived": [{"file": derived, "transformers": transformers.__version__}],
    }
    write_json(os.path.join(args.out, "manifest.json"), manifest)

    if args.rust_fields:
        base = training_argument_names()
        base_set = set(base)
        table, extra = training_arguments_table(base, records)
        out = [
            "//! Field names of TRL's trainer configs. **Generated** by `scripts/dump_trl_configs.py` from\n",
            f"//! TRL {trl.__version__} (BCOConfig: TRL 1.13.0) and transformers {transformers.__version__} with\n",
            "//! `dataclasses.fields`; do not edit by hand.",
        ]
        if records:
            older = " and ".join(r["transformers"] for _, r in records)
            out.append(f"\n//! `TRAINING_ARGUMENTS` also holds the fields of transformers {older}.")
        out += ["\n\n", table]
        for name, cls in classes.items():
            own = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in base_set]
            out.append("\n")
            out.append(
                rust_list(f"{snake(name).upper()}_OWN", f"`{name}`'s own fields (beyond `TrainingArguments`).", own)
            )
        with open(args.rust_fields, "w") as f:
            f.write("".join(out))
        if extra:
            print(f"TRAINING_ARGUMENTS: {len(base)} + {len(extra)} from older transformers: {', '.join(extra)}")
    n = len(files) + sum(len(r["files"]) for _, r in records)
    print(
        f"wrote {len(files) + 2} files to {args.out} (with manifest.json and {derived}), manifest lists {n} "
        f"(trl {trl.__version__}, transformers {transformers.__version__})"
    )


if __name__ == "__main__":
    main()
