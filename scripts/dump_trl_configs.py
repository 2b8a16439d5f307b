#!/usr/bin/env python3
"""Dumps TRL's trainer configs as JSON (and one as YAML) for burn-rlhf's `trl` loader tests, and
writes the field-name tables of `src/trl/fields.rs`.

Everything here is produced by TRL's and transformers' own classes: each config is constructed
with TRL's defaults (or with the overrides below), its `__post_init__` runs, and the result is
written with `TrainingArguments.to_json_string()` (what `trainer.args.to_json_string()` gives,
and the format TRL saves as `training_args` JSON). Field names come from
`dataclasses.fields(cls)`.

Usage (from the repository root, in a venv with `trl==1.16.*`):

    python scripts/dump_trl_configs.py --bco-wheel trl-1.13.0-py3-none-any.whl \
        --out fixtures/trl_configs --rust-fields src/trl/fields.rs

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
import types
import warnings
import zipfile

import transformers
import trl
from transformers import TrainingArguments
from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, RLOOConfig
from trl.experimental.cpo import CPOConfig
from trl.experimental.orpo import ORPOConfig

import yaml


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
]


def rust_list(name, doc, names):
    body = "".join(f'    "{n}",\n' for n in names)
    return f"/// {doc}\npub(crate) const {name}: &[&str] = &[\n{body}];\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bco-wheel", required=True, help="path of trl-1.13.0-py3-none-any.whl")
    parser.add_argument("--out", default="fixtures/trl_configs")
    parser.add_argument("--rust-fields", default=None, help="write the field tables here (src/trl/fields.rs)")
    args = parser.parse_args()

    classes = {
        "DPOConfig": DPOConfig,
        "CPOConfig": CPOConfig,
        "ORPOConfig": ORPOConfig,
        "KTOConfig": KTOConfig,
        "BCOConfig": load_bco_config(args.bco_wheel),
        "RewardConfig": RewardConfig,
        "GRPOConfig": GRPOConfig,
        "RLOOConfig": RLOOConfig,
    }
    os.makedirs(args.out, exist_ok=True)
    # Dumps must not depend on the working directory (TrainingArguments' output_dir default), and
    # TRL's default `bf16=True` is rejected by transformers on a machine without a GPU unless
    # `use_cpu=True`: the only two arguments given to every config.
    common = dict(output_dir="trainer_output", use_cpu=True)

    def dump(stem, cls, overrides):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = cls(**common, **overrides)
        text = config.to_json_string()
        json.loads(text)  # strict JSON (no NaN / Infinity)
        with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
            f.write(text)
        return text

    files = []
    for name, cls in classes.items():
        stem = name.removesuffix("Config").lower() + "_defaults"
        dump(stem, cls, {})
        files.append((f"{stem}.json", name, {}))
    for stem, name, overrides in NON_DEFAULT:
        text = dump(stem, classes[name], overrides)
        files.append((f"{stem}.json", name, overrides))
        if stem == "dpo_mpo":
            with open(os.path.join(args.out, "dpo_mpo.yaml"), "w") as f:
                yaml.safe_dump(json.loads(text), f, sort_keys=False)
            files.append(("dpo_mpo.yaml", name, overrides))

    manifest = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "bco_config_source": os.path.basename(args.bco_wheel),
        "command": "python " + " ".join(sys.argv),
        "files": [
            {"file": f, "class": c, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in o.items()}}
            for f, c, o in files
        ],
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    if args.rust_fields:
        base = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
        base_set = set(base)
        out = [
            "//! Field names of TRL's trainer configs. **Generated** by `scripts/dump_trl_configs.py` from\n",
            f"//! TRL {trl.__version__} (BCOConfig: TRL 1.13.0) and transformers {transformers.__version__} with\n",
            "//! `dataclasses.fields`; do not edit by hand.\n\n",
            rust_list(
                "TRAINING_ARGUMENTS",
                f"Fields of transformers {transformers.__version__} `TrainingArguments` (every TRL config has them).",
                base,
            ),
        ]
        for name, cls in classes.items():
            own = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in base_set]
            const = name.removesuffix("Config").upper()
            out.append("\n")
            out.append(rust_list(f"{const}_OWN", f"`{name}`'s own fields (beyond `TrainingArguments`).", own))
        with open(args.rust_fields, "w") as f:
            f.write("".join(out))
    print(f"wrote {len(files)} files to {args.out} (trl {trl.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
