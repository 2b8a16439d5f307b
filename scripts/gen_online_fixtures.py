#!/usr/bin/env python3
"""Parity fixtures for GRPO's importance-sampling / off-policy-mask matrix and for online DPO.

Writes three fixture folders (format: fixtures/README.md):

* ``grpo_matrix/``: TRL's ``GRPOTrainer._compute_loss`` for every loss type x beta x vLLM importance-sampling mode x
  off-policy sequence mask. The inputs of each call are produced by TRL's own pipeline: ``GRPOTrainer._prepare_inputs``
  (which runs ``_generate_and_score_completions``: advantages, the ``old``/``ref`` per-token log-probs, the vLLM
  importance-sampling ratio of the chosen mode, ``num_items_in_batch``; then shuffles and splits the generation batch
  into micro-batches), then ``_compute_loss`` on one micro-batch.
* ``online_dpo/``: TRL's ``OnlineDPOTrainer.training_step`` (experimental) for the ``sigmoid`` and ``ipo`` losses.
* ``grpo_step/``: ``GRPOTrainer._prepare_inputs`` + ``_compute_loss`` with gradient_accumulation_steps =
  steps_per_generation = num_processes = 1 and num_iterations = 2, where TRL's accounting is exactly one optimizer
  step over the whole 8-row batch. Each case also records how the batch splits into 1, 2 or 4 micro-batches (TRL's
  loss on each part, its share of the one-step loss, its metrics). The script asserts, per case, that the documented
  normalizer formula of the loss type reproduces TRL's loss and gradient (on a verification-only per-token loss
  written from the documented formulas, ``step_ref_per_token_loss``; its values are never written), that the parts'
  shares add up to TRL's loss and gradient, and how each metric combines across parts.

Every expected value comes from TRL's code. Nothing written re-implements a loss; what is replaced is listed in
fixtures/README.md (section "Online fixtures"): the models (fakes returning leaf tensors we control), ``_generate``
(returns fixed token ids, and fixed vLLM sampling log-probs for GRPO), the accelerator (single process) and the
reward functions (plain callables returning fixed rewards). The trainer instances are made with
``Class.__new__(Class)`` and given the attributes ``__init__`` would set from the config; every GRPO case's config is
additionally passed through the real ``GRPOConfig`` + ``GRPOTrainer.__init__`` (tiny random model saved to a temp
folder, vLLM client construction stubbed out), so that a combination TRL refuses is recorded as not covered.

Usage:
    python scripts/gen_online_fixtures.py [--seed N] [--out DIR]

Default seed 20261206, default DIR = this repository's fixtures/. Deterministic given the seed. Needs TRL 1.16
(torch, transformers, datasets come with it). Updates DIR/manifest.json (adds the three groups, keeps the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections import defaultdict
from types import SimpleNamespace

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import trl  # noqa: E402

TRL_VERSION = trl.__version__
TORCH_VERSION = torch.__version__.split("+")[0]
GROUPS = ["grpo_matrix", "online_dpo", "grpo_step"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------------------
# Scaffolding (same pattern as the shared generator: writer, single-process accelerator, bare trainer instances)
# ----------------------------------------------------------------------------------------------------------------------


class SkipCase(Exception):
    pass


def case_rng(seed: int, name: str) -> np.random.Generator:
    """Independent RNG per (seed, name) so adding/removing cases never shifts the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def torch_seed(seed: int, name: str) -> int:
    return (seed * 1000003 + zlib.crc32(name.encode())) % (2**31)


def to_list(x):
    """Tensor / ndarray / scalar -> JSON-ready nested lists. Bools become 0/1 ints, floats keep float64 repr."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            return x.to(torch.int64).tolist()
        if x.is_floating_point():
            return x.to(torch.float64).tolist()
        return x.tolist()
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_:
            return x.astype(np.int64).tolist()
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float64).tolist()
        return x.tolist()
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: to_list(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_list(v) for v in x]
    return x


def all_finite(obj) -> bool:
    if obj is None or isinstance(obj, (str, bool, int)):
        return True
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return True


def dumps(obj, indent=0) -> str:
    """JSON with one key per line for dicts and compact arrays."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class Writer:
    def __init__(self, out: str, seed: int):
        self.out = out
        self.seed = seed
        self.counts = defaultdict(int)
        self.cases = defaultdict(list)
        self.skipped = []
        self.bytes = 0

    def emit(self, group, case, source, config, inputs, expected, extra=None):
        config, inputs, expected, extra = to_list(config), to_list(inputs), to_list(expected), to_list(extra)
        if not (all_finite(config) and all_finite(inputs) and all_finite(expected) and all_finite(extra)):
            raise SkipCase("non-finite value in config/inputs/expected")
        doc = {"source": source, "case": case, "config": config, "inputs": inputs, "expected": expected}
        if extra:
            doc.update(extra)
        text = dumps(doc) + "\n"
        with open(os.path.join(self.out, group, case + ".json"), "w") as f:
            f.write(text)
        self.counts[group] += 1
        self.cases[group].append(case)
        self.bytes += len(text)

    def run(self, group, case, fn):
        try:
            fn()
        except SkipCase as e:
            self.skipped.append(f"{group}/{case}: {e}")
            print(f"  skipped {group}/{case}: {e}", file=sys.stderr)
        except Exception as e:  # the anchor itself raised: record it, keep going
            msg = f"{group}/{case}: anchor raised {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            self.skipped.append(msg)
            print(f"  not covered {msg}", file=sys.stderr)


class FakeAccelerator:
    """Single-process stand-in for accelerate.Accelerator: gathers/reductions are identities."""

    device = torch.device("cpu")
    process_index = 0
    num_processes = 1
    is_main_process = True
    sync_gradients = True

    def gather(self, t):
        return t

    def gather_for_metrics(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t

    def pad_across_processes(self, t, dim=0, pad_index=0):
        return t

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, m):
        return m

    def backward(self, loss, **kwargs):
        # accelerate divides by gradient_accumulation_steps here; every online_dpo case uses 1.
        loss.backward()


def bare(cls, **attrs):
    """Instance of a TRL trainer class without running __init__, carrying exactly the given attributes."""
    obj = cls.__new__(cls)
    base = dict(
        accelerator=FakeAccelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        state=SimpleNamespace(global_step=0, epoch=0.0),
    )
    base.update(attrs)
    for k, v in base.items():
        object.__setattr__(obj, k, v)
    return obj


def last_metrics(store, keys=None, prefix=None):
    out = {}
    for k, v in store.items():
        if keys is not None and k not in keys:
            continue
        if prefix is not None and not k.startswith(prefix):
            continue
        if isinstance(v, list) and v:
            out[k] = float(v[-1])
    return out


def token_stats(rng, shape, V):
    """Per-token log-prob of a sampled token and the entropy, from random next-token distributions over V words."""
    scale = rng.uniform(0.5, 3.0, size=tuple(shape) + (1,))
    logits = rng.normal(0.0, 1.0, size=tuple(shape) + (V,)) * scale
    targets = np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)
    m = logits.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    logp_all = logits - lse[..., None]
    p = np.exp(logp_all)
    return np.take_along_axis(logp_all, targets[..., None], -1)[..., 0], -(p * logp_all).sum(-1)


def r4(x):
    """Round to 4 decimals (short JSON, exact float64 values seen by TRL)."""
    return np.round(np.asarray(x, dtype=np.float64), 4)


def logp_like(x):
    """Round to 4 decimals and keep strictly negative (<= -1e-3), like real log-probs."""
    return np.minimum(r4(x), -1e-3)


def tt(x, dtype=torch.float64, grad=False):
    t = torch.as_tensor(np.asarray(x), dtype=dtype).clone()
    if grad:
        t.requires_grad_(True)
    return t


def src(module_func):
    return f"trl {TRL_VERSION} {module_func}"


class RowFusedLM(nn.Module):
    """Stands in for a model patched by `trl.trainer.utils.add_fused_lm_head`, called with `fused_lm_head=True`.

    Rows are recognised by their (padded, width C) completion token ids, so the model answers for any subset / order
    of the rows it knows (TRL chunks, shuffles and splits batches). Returns, on the last C positions, rows of the given
    per-token tensors (indexing keeps the autograd link to a leaf) and, exactly like the real fused head, zero-fills
    (masked_fill: value 0 and gradient 0) wherever the shifted label is -100.
    """

    is_gradient_checkpointing = False

    def __init__(self, completion_rows, C, fields):
        super().__init__()
        self._index = {tuple(int(t) for t in row): i for i, row in enumerate(completion_rows)}
        assert len(self._index) == len(completion_rows), "completion rows must be unique"
        self._C = C
        self._fields = fields
        self.calls = 0

    def forward(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head, "expected a fused_lm_head=True call"
        self.calls += 1
        C = self._C
        idx = torch.tensor([self._index[tuple(int(t) for t in r[-C:].tolist())] for r in input_ids])
        mask = labels[:, 1:] != -100
        B, Lm1 = mask.shape
        out = {}
        for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"):
            t = self._fields.get(name)
            if t is None:
                out[name] = None
                continue
            t = t[idx]
            full = torch.cat([torch.zeros(B, Lm1 - C, dtype=t.dtype), t], dim=1)
            out[name] = full.masked_fill(~mask, 0)
        loss = -out["log_probs"].sum() / mask.sum().clamp(min=1)
        return SimpleNamespace(loss=loss, label_mask=mask, aux_loss=None, **out)


# ----------------------------------------------------------------------------------------------------------------------
# GRPO matrix: GRPOTrainer._prepare_inputs (-> _generate_and_score_completions) then GRPOTrainer._compute_loss
# ----------------------------------------------------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
BETAS = [0.0, 0.04]
IS_MODES = ["off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
# Batch geometry shared by every matrix case.
G = 3  # num_generations
N_PROMPTS = 4
N = G * N_PROMPTS  # generation batch (rows scored together by _generate_and_score_completions)
SPG = 2  # steps_per_generation: the generation batch is split into SPG micro-batches
GAS = 3  # gradient_accumulation_steps (!= SPG, so the two factors of the dapo normalizer stay visible)
NUM_ITERATIONS = 2  # so that old_per_token_logps is computed even without vLLM: GAS % (SPG * NUM_ITERATIONS) != 0
B = N // SPG  # per_device_train_batch_size = rows per _compute_loss call
C = 7  # completion width (max completion length in the batch)
MAX_COMPLETION_LENGTH = 10  # config value (dr_grpo normalizer); > C
V = 32
PAD, EOS = 0, 2
STEP = 2  # trainer._step when the micro-batch is drawn: first micro-batch of the 2nd iteration over the batch
EPS_LOW = 0.2
EPS_HIGH = {"cispo": 1.3}  # cispo's epsilon_high is the cap of the (detached) ratio itself
EPS_HIGH_DEFAULT = 0.28
CLIP_MAX_DEFAULT, CLIP_MIN_DEFAULT = 3.0, None  # TRL 1.16 defaults


def grpo_level(loss_type):
    # LUSPO is defined (and TRL warns otherwise) at sequence level; every other loss at TRL's default "token".
    return "sequence" if loss_type == "luspo" else "token"


def is_flags(is_mode):
    """(use_vllm, vllm_importance_sampling_correction, vllm_importance_sampling_mode passed to TRL)."""
    if is_mode == "off":
        return False, False, "sequence_mask"  # no vLLM at all (TRL default mode, unused)
    if is_mode == "off-vllm":
        return True, False, "sequence_mask"  # vLLM sampling log-probs present, correction disabled
    return True, True, is_mode


_VALIDATOR = {}


def tiny_model_dir():
    """A tiny random causal LM + word-level tokenizer saved to a temp folder (no download), for __init__ checks."""
    if "dir" in _VALIDATOR:
        return _VALIDATOR["dir"]
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"w{i}": i + 3 for i in range(V - 3)}}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = Qwen2Config(vocab_size=V, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(0)
    d = tempfile.mkdtemp(prefix="gen_online_tiny_")
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    _VALIDATOR["dir"] = d
    return d


class _ReachedVLLM(Exception):
    pass


def validate_grpo_config(cfg, geom=None):
    """Pass the case's config through TRL's GRPOConfig and GRPOTrainer.__init__; raise what TRL raises.

    `geom` overrides the batch geometry (keys: per_device_train_batch_size, num_generations, steps_per_generation,
    gradient_accumulation_steps, num_iterations, max_completion_length, generation_batch_size); default: the
    grpo_matrix geometry.

    `VLLMGeneration` (the vLLM client/engine set-up, which comes after every argument check in __init__) is replaced
    by a stub that stops __init__ there, so use_vllm=True configurations are checked without vLLM installed.
    """
    import trl.trainer.grpo_trainer as gt
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    mdir = tiny_model_dir()

    class _Stub:
        def __init__(self, *a, **k):
            raise _ReachedVLLM()

    def reward_0(prompts, completions, **kwargs):
        return [0.0] * len(prompts)

    geo = dict(per_device_train_batch_size=B, num_generations=G, steps_per_generation=SPG,
               gradient_accumulation_steps=GAS, num_iterations=NUM_ITERATIONS,
               max_completion_length=MAX_COMPLETION_LENGTH, generation_batch_size=N)
    geo.update(geom or {})
    n_rows = geo.pop("generation_batch_size")
    saved = gt.VLLMGeneration
    gt.VLLMGeneration = _Stub
    out_dir = tempfile.mkdtemp(prefix="gen_online_out_")
    try:
        args = GRPOConfig(
            output_dir=out_dir, report_to=[], bf16=False, use_cpu=True, seed=0, **geo,
            loss_type=cfg["loss_type"], beta=cfg["beta"],
            epsilon=cfg["epsilon_low"], epsilon_high=cfg["epsilon_high"],
            importance_sampling_level=cfg["importance_sampling_level"], use_vllm=cfg["use_vllm"],
            vllm_importance_sampling_correction=cfg["use_vllm_importance_sampling_correction"],
            vllm_importance_sampling_mode=cfg["vllm_importance_sampling_mode"],
            vllm_importance_sampling_clip_max=cfg["vllm_importance_sampling_clip_max"],
            vllm_importance_sampling_clip_min=cfg["vllm_importance_sampling_clip_min"],
            off_policy_mask_threshold=cfg["off_policy_mask_threshold"],
        )
        ds = Dataset.from_dict({"prompt": ["w1 w2"] * n_rows})
        try:
            GRPOTrainer(model=mdir, reward_funcs=[reward_0], args=args, train_dataset=ds)
        except _ReachedVLLM:
            pass
    finally:
        gt.VLLMGeneration = saved
        shutil.rmtree(out_dir, ignore_errors=True)
        torch.set_default_dtype(torch.float64)


def design_grpo_batch(rng, is_mode, clip_min, clip_max):
    """Random generation batch of N rows (G completions per prompt), all arrays rounded to 4 decimals."""
    # completion lengths: some truncated (full width, no EOS), some short, the rest end with EOS
    lens = rng.integers(4, C + 1, size=N)
    order = rng.permutation(N)
    truncated = np.zeros(N, dtype=bool)
    truncated[order[:3]] = True
    lens[order[:3]] = C
    lens[order[3:6]] = rng.integers(1, 4, size=3)
    comp = np.zeros((N, C), dtype=np.int64)
    for i in range(N):
        comp[i, : lens[i]] = rng.integers(3, V, size=lens[i])
        if not truncated[i]:
            comp[i, lens[i] - 1] = EOS
    mask = (np.arange(C)[None, :] < lens[:, None]).astype(np.int64)
    prompts = [list(rng.integers(3, V, size=int(rng.integers(2, 5)))) for _ in range(N_PROMPTS)]
    # rewards: multiples of 0.25 (exact in float32, as TRL stores them), never constant inside a group
    rewards = rng.integers(-4, 9, size=N) / 4.0
    for g in range(N_PROMPTS):
        while np.all(rewards[g * G : (g + 1) * G] == rewards[g * G]):
            rewards[g * G + 1] = rng.integers(-4, 9) / 4.0
    lp, ent = token_stats(rng, (N, C), V)
    on = mask.astype(bool)
    old = np.where(on, logp_like(lp), 0.0)
    entropies = np.where(on, r4(ent), 0.0)
    # vLLM sampling log-probs: old - diff, diff ~ N(0, 0.3) with spikes that push the IS ratio exp(diff) past the
    # bounds (> 3 above; < 0.5 below when a lower bound is configured)
    diff = rng.normal(0.0, 0.3, size=(N, C))
    for i in range(N):
        pos = np.flatnonzero(on[i])
        if rng.random() < 0.5:
            diff[i, rng.choice(pos)] = rng.uniform(1.2, 2.0)
        if clip_min is not None and rng.random() < 0.5:
            deep = pos[old[i, pos] < -1.7]
            if len(deep):
                diff[i, rng.choice(deep)] = -rng.uniform(0.8, 1.5)
    sampling = np.where(on, logp_like(old - diff), 0.0)
    policy = np.where(on, logp_like(old + rng.normal(0.0, 0.3, size=(N, C))), 0.0)
    ref = np.where(on, logp_like(policy + rng.normal(0.0, 0.3, size=(N, C))), 0.0)
    return dict(comp=comp, mask=mask, lens=lens, truncated=truncated, prompts=prompts, rewards=rewards, old=old,
                sampling=sampling, policy=policy, ref=ref, entropies=entropies)


def grpo_stage1(d, *, seed_t, loss_type, beta, is_mode, clip_min, clip_max, opm_threshold):
    """Runs TRL's GRPOTrainer._prepare_inputs on the N-row generation batch; returns (trainer, micro-batch, stage-1
    metrics, micro-batch row indices)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    use_vllm, correction, mode_passed = is_flags(is_mode)
    comp_rows = d["comp"]
    old_model = RowFusedLM(comp_rows, C, dict(log_probs=tt(d["old"])))
    old_model.train()
    ref_model = RowFusedLM(comp_rows, C, dict(log_probs=tt(d["ref"]))) if beta != 0.0 else None
    if ref_model is not None:
        ref_model.eval()
    prompt_ids_list = [list(map(int, d["prompts"][i // G])) for i in range(N)]
    completion_ids_list = [list(map(int, d["comp"][i, : d["lens"][i]])) for i in range(N)]
    completions = [f"completion {i}" for i in range(N)]
    sampling_list = ([list(map(float, d["sampling"][i, : d["lens"][i]])) for i in range(N)] if use_vllm else None)

    def _generate(prompts):
        return prompt_ids_list, completion_ids_list, None, completions, sampling_list, {}, None, None

    rewards = [float(r) for r in d["rewards"]]

    def reward_0(prompts, completions, completion_ids, **kwargs):
        return list(rewards)

    args = SimpleNamespace(
        per_device_train_batch_size=B, per_device_eval_batch_size=B, steps_per_generation=SPG,
        gradient_accumulation_steps=GAS, gradient_checkpointing_kwargs=None, report_to=[],
        use_bias_correction_kl=True, delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
        vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, entropy_target=0.2,
    )
    tr = bare(
        GRPOTrainer, model=old_model, ref_model=ref_model, _generate=_generate, environment_factories=None,
        tools=None, environments=None, beta=beta, num_iterations=NUM_ITERATIONS,
        multi_objective_aggregation="sum_then_normalize", scale_rewards="group", args=args,
        reward_funcs=[reward_0], reward_processing_classes=[None], reward_func_names=["reward_0"],
        reward_weights=torch.tensor([1.0], dtype=torch.float32), num_generations=G, num_generations_eval=G,
        _tokenizer=SimpleNamespace(pad_token_id=PAD), eos_token_ids=[EOS], pad_to_multiple_of=None,
        mask_truncated_completions=False,
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list), "images": []},
        _pending_extra_logs=defaultdict(list), _pending_metrics=defaultdict(list), log_multimodal=False,
        use_vllm=use_vllm, vllm_importance_sampling_correction=correction,
        vllm_importance_sampling_mode=mode_passed, vllm_importance_sampling_clip_max=clip_max,
        vllm_importance_sampling_clip_min=clip_min,
        _step=STEP, _buffered_inputs=None,
        # read by _compute_loss (what __init__ sets from GRPOConfig)
        loss_type=loss_type, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH.get(loss_type, EPS_HIGH_DEFAULT),
        importance_sampling_level=grpo_level(loss_type), top_entropy_quantile=1.0,
        off_policy_mask_threshold=opm_threshold, max_completion_length=MAX_COMPLETION_LENGTH,
        current_gradient_accumulation_steps=GAS, _entropy_bonus_enabled=False, entropy_coef=0.0,
        use_adaptive_entropy=False, aux_loss_enabled=False,
    )
    torch.manual_seed(seed_t)  # shuffle_sequence_dict draws a torch.randperm
    generation_batch = [{"prompt": f"prompt {i // G}"} for i in range(N)]
    micro = GRPOTrainer._prepare_inputs(tr, generation_batch)
    stage1_metrics = last_metrics(tr._metrics["train"], prefix="sampling/")
    rows = [old_model._index[tuple(int(t) for t in r.tolist())] for r in micro["completion_ids"]]
    all_adv = list(tr._logs["advantages"])  # TRL's advantages of all N rows, generation order
    return tr, micro, stage1_metrics, rows, all_adv


def opm_source(micro):
    """What TRL's off-policy mask compares the policy with: sampling log-probs if present, else old."""
    return micro.get("sampling_per_token_logps", micro.get("old_per_token_logps")).detach().numpy()


def pick_threshold(d, micro, rows):
    """A positive threshold between the two largest mean KLs of negative-advantage rows (so >= 1 row is dropped)."""
    m = micro["completion_mask"].numpy().astype(np.float64)
    kl = ((opm_source(micro) - d["policy"][rows]) * m).sum(1) / np.maximum(m.sum(1), 1.0)
    adv = micro["advantages"].numpy()
    neg = np.sort(kl[adv < 0])[::-1]
    if len(neg) == 0 or neg[0] < 0.02:
        return None
    lower = max(neg[1], 0.0) if len(neg) > 1 else 0.0
    thr = round((neg[0] + lower) / 2, 4)
    if not (lower < thr < neg[0]) or thr <= 0:
        return None
    return thr


_FAMILY = {}


def grpo_family(seed, is_mode, clip_min, clip_max):
    """Data shared by every case of one importance-sampling setting: drawn (with retries) until the IS bounds bind,
    the off-policy mask drops at least one sequence, and the micro-batch has a truncated and a short row."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    key = (is_mode, clip_min, clip_max)
    if key in _FAMILY:
        return _FAMILY[key]
    fam = f"grpo_matrix/{is_mode}/{clip_min}/{clip_max}"
    for attempt in range(200):
        rng = case_rng(seed, f"{fam}#{attempt}")
        d = design_grpo_batch(rng, is_mode, clip_min, clip_max)
        if len({tuple(r) for r in d["comp"].tolist()}) != N:
            continue
        seed_t = torch_seed(seed, f"{fam}#{attempt}")
        _, micro, _, rows, _ = grpo_stage1(d, seed_t=seed_t, loss_type="grpo", beta=0.0, is_mode=is_mode,
                                           clip_min=clip_min, clip_max=clip_max, opm_threshold=None)
        if not (d["truncated"][rows].any() and (d["lens"][rows] <= 3).any()):
            continue
        counts = is_binding(micro, is_mode, clip_min, clip_max)
        if counts is None:
            continue
        thr = pick_threshold(d, micro, rows)
        if thr is None:
            continue
        keep = GRPOTrainer.get_off_policy_mask(
            advantages=micro["advantages"].unsqueeze(1), per_token_logps=tt(d["policy"][rows]),
            sampling_per_token_logps=micro.get("sampling_per_token_logps", micro["old_per_token_logps"]),
            mask=micro["completion_mask"], off_policy_threshold=thr)
        n_drop = int((keep == 0).sum())
        if n_drop < 1 or n_drop == B:
            continue
        counts["off_policy_mask_threshold"] = thr
        counts["n_seq_dropped_by_off_policy_mask"] = n_drop
        counts["n_seq_negative_advantage"] = int((micro["advantages"] < 0).sum())
        counts["n_rows_truncated_no_eos"] = int(d["truncated"][rows].sum())
        counts["completion_lengths"] = [int(x) for x in d["lens"][rows]]
        counts["attempt"] = attempt
        _FAMILY[key] = (d, seed_t, rows, counts)
        return _FAMILY[key]
    raise SkipCase(f"could not draw binding data for {fam}")


def is_binding(micro, is_mode, clip_min, clip_max):
    """Counts (from TRL's ratio) of tokens/sequences where the IS bounds bind; None when they do not bind."""
    counts = {}
    if is_mode in ("off", "off-vllm"):
        return counts
    r = micro["importance_sampling_ratio"].detach().numpy()
    m = micro["completion_mask"].numpy().astype(bool)
    # the unbounded ratio is exp(sum or per-token (old - sampling)); used only to classify which bound bound
    diff = ((micro["old_per_token_logps"] - micro["sampling_per_token_logps"]) * micro["completion_mask"]).numpy()
    hi = clip_max if clip_max is not None else math.inf
    lo = clip_min if clip_min is not None else -math.inf
    if is_mode.startswith("token"):
        raw = np.exp(diff)[m]
        n_hi, n_lo = int((raw > hi).sum()), int((raw < lo).sum())
        counts.update(n_tokens_valid=int(m.sum()), n_tokens_above_clip_max=n_hi, n_tokens_below_clip_min=n_lo)
        if is_mode == "token_mask":
            counts["n_tokens_masked_to_zero"] = int((r[m] == 0).sum())
            ok = counts["n_tokens_masked_to_zero"] == n_hi + n_lo
        else:
            counts["n_tokens_truncated"] = int(((r[m] == hi) | (r[m] == lo)).sum())
            ok = counts["n_tokens_truncated"] >= n_hi + n_lo
    else:
        raw = np.exp(diff.sum(1))
        n_hi, n_lo = int((raw > hi).sum()), int((raw < lo).sum())
        counts.update(n_seq_above_clip_max=n_hi, n_seq_below_clip_min=n_lo)
        rr = r[:, 0]
        if is_mode == "sequence_mask":
            counts["n_seq_masked_to_zero"] = int((rr == 0).sum())
            ok = counts["n_seq_masked_to_zero"] == n_hi + n_lo
        else:
            counts["n_seq_truncated"] = int(((rr == hi) | (rr == lo)).sum())
            ok = counts["n_seq_truncated"] >= n_hi + n_lo
        if n_hi + n_lo == B:  # keep at least one sequence inside the bounds
            return None
    if n_hi < 1 or (clip_min is not None and n_lo < 1) or not ok:
        return None
    return counts


def run_grpo_matrix(W, seed, name, loss_type, beta, is_mode, opm, clip_min=CLIP_MIN_DEFAULT,
                    clip_max=CLIP_MAX_DEFAULT):
    from trl.trainer.grpo_trainer import GRPOTrainer

    d, seed_t, fam_rows, counts = grpo_family(seed, is_mode, clip_min, clip_max)
    thr = counts["off_policy_mask_threshold"] if opm else None
    use_vllm, correction, mode_passed = is_flags(is_mode)
    eps_high = EPS_HIGH.get(loss_type, EPS_HIGH_DEFAULT)
    config = dict(
        loss_type=loss_type, beta=beta, epsilon_low=EPS_LOW, epsilon_high=eps_high, delta=None,
        importance_sampling_level=grpo_level(loss_type), use_bias_correction_kl=True, top_entropy_quantile=1.0,
        off_policy_mask_threshold=thr, entropy_coef=0.0,
        use_vllm=use_vllm, use_vllm_importance_sampling_correction=correction,
        vllm_importance_sampling_mode=mode_passed,
        vllm_importance_sampling_clip_max=clip_max, vllm_importance_sampling_clip_min=clip_min,
        sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0,
        vespo_k_neg=3.0, vespo_lambda_neg=2.0, max_completion_length=MAX_COMPLETION_LENGTH, mode="train",
        current_gradient_accumulation_steps=GAS, gradient_accumulation_steps=GAS, steps_per_generation=SPG,
        num_iterations=NUM_ITERATIONS, per_device_train_batch_size=B, num_generations=G,
        generation_batch_size=N, num_processes=1, scale_rewards="group", step=STEP, dtype="float64",
    )
    # 1. TRL refuses the combination?  (raises -> recorded as not covered by W.run)
    validate_grpo_config(config)
    torch.set_default_dtype(torch.float64)
    # 2. generation batch -> micro-batch, by TRL
    tr, micro, stage1_metrics, rows, all_adv = grpo_stage1(
        d, seed_t=seed_t, loss_type=loss_type, beta=beta, is_mode=is_mode, clip_min=clip_min, clip_max=clip_max,
        opm_threshold=thr)
    assert rows == fam_rows, "micro-batch rows differ from the family's"
    # 3. the loss, by TRL, with the policy per-token log-probs as a leaf
    lp = tt(d["policy"][rows], grad=True)
    ent = tt(d["entropies"][rows])
    policy_model = RowFusedLM(d["comp"][rows], C, dict(log_probs=lp, entropy=ent))
    policy_model.train()
    tr.model = policy_model
    tr._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    loss = GRPOTrainer._compute_loss(tr, policy_model, micro)
    loss.backward()
    assert policy_model.calls == 1
    metrics = last_metrics(tr._metrics["train"])

    binding = {k: v for k, v in counts.items() if k != "off_policy_mask_threshold"}
    if not opm:
        binding.pop("n_seq_dropped_by_off_policy_mask", None)
    config["binding"] = binding
    g = micro.get
    ins = dict(
        per_token_logps=d["policy"][rows],
        completion_mask=micro["completion_mask"],
        advantages=micro["advantages"],
        entropies=d["entropies"][rows],
        num_items_in_batch=float(micro["num_items_in_batch"]),
        old_per_token_logps=g("old_per_token_logps"),
        ref_per_token_logps=g("ref_per_token_logps"),
        sampling_per_token_logps=g("sampling_per_token_logps"),
        importance_sampling_ratio=g("importance_sampling_ratio"),
    )
    assert np.array_equal(micro["old_per_token_logps"].numpy(), d["old"][rows])
    expected = dict(loss=float(loss), metrics=metrics, grad_per_token_logps=lp.grad)
    stage1 = dict(
        source=src("trl.trainer.grpo_trainer.GRPOTrainer._prepare_inputs"),
        inputs=dict(
            rewards=d["rewards"], completion_mask=d["mask"], old_per_token_logps=d["old"],
            sampling_per_token_logps=d["sampling"] if use_vllm else None,
        ),
        expected=dict(advantages=all_adv, num_items_in_batch=float(micro["num_items_in_batch"]),
                      micro_batch_rows=rows, metrics=stage1_metrics),
    )
    W.emit("grpo_matrix", name, src("trl.trainer.grpo_trainer.GRPOTrainer._compute_loss"), config, ins, expected,
           extra=dict(stage1=stage1))


def gen_grpo_matrix(W, seed):
    cases = []
    for loss_type in LOSS_TYPES:
        for beta in BETAS:
            for is_mode in IS_MODES:
                for opm in (False, True):
                    cases.append((f"{loss_type}_beta{beta}_is-{is_mode}_opm-{'on' if opm else 'off'}",
                                  dict(loss_type=loss_type, beta=beta, is_mode=is_mode, opm=opm)))
            # vLLM sampling log-probs present but no IS correction: only the off-policy mask reads them
            cases.append((f"{loss_type}_beta{beta}_is-off-vllm_opm-on",
                          dict(loss_type=loss_type, beta=beta, is_mode="off-vllm", opm=True)))
    # a lower bound as well (clip_min=0.5, clip_max=2.0): both sides bind
    for loss_type in ("grpo", "dapo"):
        for is_mode in IS_MODES[1:]:
            cases.append((f"{loss_type}_beta0.04_is-{is_mode}-min0.5-max2.0_opm-on",
                          dict(loss_type=loss_type, beta=0.04, is_mode=is_mode, opm=True, clip_min=0.5,
                               clip_max=2.0)))
    for name, kw in cases:
        W.run("grpo_matrix", name, lambda name=name, kw=kw: run_grpo_matrix(W, seed, name, **kw))


# ----------------------------------------------------------------------------------------------------------------------
# Online DPO: trl.experimental.online_dpo.OnlineDPOTrainer.training_step
# ----------------------------------------------------------------------------------------------------------------------

DPO_V = 16


class LogitsFromLogps(nn.Module):
    """Causal-LM stand-in returning `logits` [rows, T, V] built from per-token log-prob leaves.

    At the position predicting completion token j (T - C - 1 + j) the logits are `lp` for that token and
    `log((1 - exp(lp)) / (V - 1))` for the V-1 others, so log_softmax gives back exactly `lp` (logsumexp is
    identically 0) and d log_softmax[token] / d lp = 1 (the other logits' dependence cancels). Every other position
    is 0. Rows are recognised by their completion ids (the last C columns).
    """

    def __init__(self, completion_rows, logps):
        super().__init__()
        self._index = {tuple(int(t) for t in row): i for i, row in enumerate(completion_rows)}
        assert len(self._index) == len(completion_rows), "completion rows must be unique"
        self._logps = logps
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        C = self._logps.shape[1]
        rows = input_ids.shape[0]
        T = input_ids.shape[1]
        comp = input_ids[:, -C:]
        idx = torch.tensor([self._index[tuple(int(t) for t in r.tolist())] for r in comp])
        lp = self._logps[idx]  # [rows, C]
        other = torch.log(-torch.expm1(lp)) - math.log(DPO_V - 1)
        onehot = torch.nn.functional.one_hot(comp, DPO_V).bool()
        block = torch.where(onehot, lp.unsqueeze(-1), other.unsqueeze(-1))  # [rows, C, V]
        zeros_before = torch.zeros(rows, T - C - 1, DPO_V, dtype=lp.dtype)
        zeros_after = torch.zeros(rows, 1, DPO_V, dtype=lp.dtype)
        return SimpleNamespace(logits=torch.cat([zeros_before, block, zeros_after], dim=1))


def run_online_dpo(W, seed, name, loss_type="sigmoid", beta=0.1, missing_eos_penalty=None, Bp=4, Cc=6,
                   pattern="random", two_funcs=False, beta_list=None, epoch=0.0):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    from trl.experimental.utils import truncate_right

    rng = case_rng(seed, "online_dpo/" + name)
    out_dir = tempfile.mkdtemp(prefix="gen_online_out_")
    try:  # the config must be accepted by TRL
        OnlineDPOConfig(output_dir=out_dir, report_to=[], bf16=False, use_cpu=True, loss_type=loss_type,
                        beta=beta_list if beta_list is not None else [beta],
                        missing_eos_penalty=missing_eos_penalty,
                        reward_weights=[1.0, 0.5] if two_funcs else None)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        torch.set_default_dtype(torch.float64)

    R = 2 * Bp
    # prompts (left-padded, as TRL's processing class pads them) repeated twice: rows i and i + Bp share prompt i
    plen = rng.integers(2, 5, size=Bp)
    P = int(plen.max())
    prompt_ids = np.full((Bp, P), PAD, dtype=np.int64)
    prompt_mask = np.zeros((Bp, P), dtype=np.int64)
    for i in range(Bp):
        prompt_ids[i, P - plen[i]:] = rng.integers(3, DPO_V, size=plen[i])
        prompt_mask[i, P - plen[i]:] = 1
    # raw generations [R, Cc]: EOS somewhere (then junk after it, which truncate_right pads) or no EOS at all
    while True:
        gen = rng.integers(3, DPO_V, size=(R, Cc))
        has_eos = rng.random(R) < 0.6
        has_eos[rng.choice(R, size=2, replace=False)] = [True, False]
        for r in range(R):
            if has_eos[r]:
                gen[r, int(rng.integers(0, Cc))] = EOS
        comp_ids_t, comp_mask_t = truncate_right(torch.as_tensor(gen), [EOS], PAD)
        if len({tuple(x) for x in comp_ids_t.tolist()}) == R:
            break
    comp_ids = comp_ids_t.numpy()
    contain_eos = (comp_ids == EOS).any(1)
    # rewards (multiples of 0.25: exact in float32, TRL's reward storage dtype)
    r = rng.integers(-4, 9, size=R) / 4.0
    a, b = r[:Bp], r[Bp:]
    if pattern == "ties":  # pairs 0 and 2 tie exactly
        b[0], b[2] = a[0], a[2]
        a[1], b[1] = 0.5, 1.25
    elif pattern == "penalty_flip":
        # pair 0: first better by 0.5 but has no EOS -> the penalty flips the preference; pair 1: penalty makes a tie
        a[0], b[0] = 1.0, 0.5
        a[1], b[1] = 1.0, 0.0
    elif pattern == "random":
        for i in range(Bp):
            while a[i] == b[i]:
                b[i] = rng.integers(-4, 9) / 4.0
    if pattern == "penalty_flip":
        # force the EOS pattern the rewards above rely on: row 0 / row 1 without EOS, rows Bp and Bp+1 with EOS
        for rr, want in ((0, False), (1, False), (Bp, True), (Bp + 1, True)):
            if contain_eos[rr] != want:
                if want:
                    gen[rr, Cc - 1] = EOS
                else:
                    gen[rr, gen[rr] == EOS] = 3 + rr
        comp_ids_t, comp_mask_t = truncate_right(torch.as_tensor(gen), [EOS], PAD)
        comp_ids = comp_ids_t.numpy()
        contain_eos = (comp_ids == EOS).any(1)
        assert len({tuple(x) for x in comp_ids.tolist()}) == R
    rewards = np.concatenate([a, b])
    rewards2 = None
    if two_funcs:
        rewards2 = (rng.integers(-4, 5, size=R) / 4.0).tolist()
        rewards2[1] = None  # this function could not score row 1 (NaN, ignored by nansum)
    # per-token log-probs of every completion position, padding included (TRL's metrics read them unmasked)
    lp, _ = token_stats(rng, (R, Cc), DPO_V)
    policy = logp_like(lp)
    ref = logp_like(policy + rng.normal(0.0, 0.3, size=(R, Cc)))

    leaf = tt(policy, grad=True)
    model = LogitsFromLogps(comp_ids, leaf)
    ref_model = LogitsFromLogps(comp_ids, tt(ref))
    ref_model.eval()

    def _generate(model_, prompts, images=None):
        # TRL's _generate: prompt ids repeated twice, completions = generate(...)[:, prompt_len:], then truncate_right
        pi = torch.as_tensor(prompt_ids).repeat(2, 1)
        pm = torch.as_tensor(prompt_mask).repeat(2, 1)
        ci, cm = truncate_right(torch.as_tensor(gen), [EOS], PAD)
        return pi, pm, ci, cm, None

    def reward_a(prompts, completions, completion_ids, **kwargs):
        return [float(x) for x in rewards]

    def reward_b(prompts, completions, completion_ids, **kwargs):
        return list(rewards2)

    funcs = [reward_a, reward_b] if two_funcs else [reward_a]
    weights = [1.0, 0.5] if two_funcs else [1.0]
    args = SimpleNamespace(use_vllm=False, missing_eos_penalty=missing_eos_penalty, loss_type=loss_type,
                           torch_empty_cache_steps=None, optim="adamw_torch", n_gpu=1, gradient_accumulation_steps=1)
    processing_class = SimpleNamespace(batch_decode=lambda ids, skip_special_tokens=True: [
        " ".join(f"w{int(t)}" for t in row if int(t) not in (PAD, EOS)) for row in ids.tolist()])
    stats = defaultdict(list)
    tr = bare(
        OnlineDPOTrainer, args=args, _generate=_generate, eos_token_ids=[EOS], ref_model=ref_model,
        processing_class=processing_class, reward_funcs=funcs, reward_processing_classes=[None] * len(funcs),
        reward_weights=torch.tensor(weights, dtype=torch.float32), max_length=512, stats=stats,
        _beta=beta_list if beta_list is not None else beta, model=model,
        state=SimpleNamespace(global_step=0, epoch=epoch),
    )
    inputs = {"prompt": [f"prompt {i}" for i in range(Bp)]}
    loss = OnlineDPOTrainer.training_step(tr, model, inputs)
    assert model.calls == 1 and ref_model.calls == 1
    used_beta = float(stats["beta"][-1])
    config = dict(loss_type=loss_type, beta=used_beta, beta_list=beta_list, epoch=epoch,
                  missing_eos_penalty=missing_eos_penalty, reward_weights=weights, eos_token_ids=[EOS],
                  pad_token_id=PAD, vocab_size=DPO_V, max_length=512, gradient_accumulation_steps=1,
                  n_pairs=Bp, completion_width=Cc, temperature_in_logprob_forward=False, dtype="float64")
    ins = dict(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, generated_ids=gen, completion_ids=comp_ids,
        completion_mask=comp_mask_t.numpy(), rewards_per_func=([[float(x)] for x in rewards] if not two_funcs else
                                                               [[float(x), y] for x, y in zip(rewards, rewards2)]),
        policy_token_logps=policy, ref_token_logps=ref,
    )
    expected = dict(loss=float(loss), metrics=last_metrics(stats), grad_policy_token_logps=leaf.grad)
    W.emit("online_dpo", name, src("trl.experimental.online_dpo.online_dpo_trainer.OnlineDPOTrainer.training_step"),
           config, ins, expected)


def gen_online_dpo(W, seed):
    cases = []
    add = lambda name, **kw: cases.append((name, kw))  # noqa: E731
    for lt in ("sigmoid", "ipo"):
        for beta in (0.1, 0.5):
            add(f"{lt}_beta{beta}", loss_type=lt, beta=beta)
            add(f"{lt}_beta{beta}_eos_penalty1.0", loss_type=lt, beta=beta, missing_eos_penalty=1.0)
        add(f"{lt}_beta0.1_ties", loss_type=lt, beta=0.1, pattern="ties")
        add(f"{lt}_beta0.1_penalty_flip_and_tie", loss_type=lt, beta=0.1, missing_eos_penalty=1.0,
            pattern="penalty_flip")
    add("sigmoid_beta0.1_B8", loss_type="sigmoid", beta=0.1, Bp=8, Cc=5)
    add("sigmoid_beta0.1_two_funcs_weighted", loss_type="sigmoid", beta=0.1, two_funcs=True,
        missing_eos_penalty=0.5)
    # beta given as a per-epoch list: TRL indexes it with state.epoch
    add("sigmoid_beta_list_epoch_int1", loss_type="sigmoid", beta_list=[0.1, 0.3], epoch=1)
    add("sigmoid_beta_list_epoch_int5", loss_type="sigmoid", beta_list=[0.1, 0.3], epoch=5)
    add("sigmoid_beta_list_epoch_float1.5", loss_type="sigmoid", beta_list=[0.1, 0.3], epoch=1.5)
    for name, kw in cases:
        W.run("online_dpo", name, lambda name=name, kw=kw: run_online_dpo(W, seed, name, **kw))


# ----------------------------------------------------------------------------------------------------------------------
# GRPO one optimizer step: gradient_accumulation_steps = steps_per_generation = num_processes = 1
# ----------------------------------------------------------------------------------------------------------------------

S_G = 4  # num_generations
S_PROMPTS = 2
S_B = S_G * S_PROMPTS  # = generation batch = per_device_train_batch_size = rows of the one _compute_loss call
S_C = 7  # completion width
S_MAX_COMPLETION_LENGTH = 10  # > S_C: dr_grpo's B x max_completion_length normalizer differs from B x C
S_NUM_ITERATIONS = 2  # 1 % (1 * 2) != 0: TRL computes old_per_token_logps at generation time
S_STEPS = (0, 1)  # _prepare_inputs at _step 0 (generates, buffers) then at _step 1 (2nd iteration, reuses the buffer)
S_SPLITS = (1, 2, 4)  # micro-batch counts checked (contiguous, equal row counts)
S_GEOM = dict(per_device_train_batch_size=S_B, num_generations=S_G, steps_per_generation=1,
              gradient_accumulation_steps=1, num_iterations=S_NUM_ITERATIONS,
              max_completion_length=S_MAX_COMPLETION_LENGTH, generation_batch_size=S_B)
# What each loss type's TRL normalizer reduces to when gas = spg = num_processes = 1, as (kind, formula). `weight`
# is the factor turning TRL's loss on a micro-batch alone (gas = spg = 1, the whole batch's num_items_in_batch) into
# that micro-batch's share of the one-step loss.
S_NORMALIZERS = {
    "grpo": ("rows_of_row_means", "(1/B) sum_i [sum_t l_it m_it / max(n_i, 1)]"),
    "sapo": ("rows_of_row_means", "(1/B) sum_i [sum_t l_it m_it / max(n_i, 1)]"),
    "bnpo": ("tokens", "sum_it l_it m_it / max(sum_it m_it, 1)"),
    "dr_grpo": ("rows_x_max_completion_length", "sum_it l_it m_it / (B * max_completion_length)"),
    "dapo": ("num_items_in_batch", "sum_it l_it m_it / max(num_items_in_batch, 1)"),
    "cispo": ("num_items_in_batch", "sum_it l_it m_it / max(num_items_in_batch, 1)"),
    "vespo": ("num_items_in_batch", "sum_it l_it m_it / max(num_items_in_batch, 1)"),
    "luspo": ("rows", "(1/B) sum_it l_it m_it"),
}
# How each _compute_loss metric of the whole batch is recovered from the metrics of micro-batches
S_METRIC_COMBINE = {
    "kl": "tokens", "entropy": "tokens", "cispo_clip_ratio": "tokens", "vespo/phi_seq_mean": "rows",
    "clip_ratio/low_mean": "tokens", "clip_ratio/high_mean": "tokens", "clip_ratio/region_mean": "tokens",
    "clip_ratio/low_min": "min", "clip_ratio/high_max": "max",
}


def design_step_batch(rng):
    """Random S_B-row batch: a truncated row (full width, no EOS), a short row (<= 3 tokens), the rest EOS-terminated;
    policy = old + a per-row shift + per-token noise (so token- and sequence-level ratios leave the clip range)."""
    N_, C_ = S_B, S_C
    lens = rng.integers(4, C_ + 1, size=N_)
    order = rng.permutation(N_)
    truncated = np.zeros(N_, dtype=bool)
    truncated[order[:2]] = True
    lens[order[:2]] = C_
    lens[order[2:4]] = rng.integers(1, 4, size=2)
    comp = np.zeros((N_, C_), dtype=np.int64)
    for i in range(N_):
        comp[i, : lens[i]] = rng.integers(3, V, size=lens[i])
        if not truncated[i]:
            comp[i, lens[i] - 1] = EOS
    mask = (np.arange(C_)[None, :] < lens[:, None]).astype(np.int64)
    prompts = [list(rng.integers(3, V, size=int(rng.integers(2, 5)))) for _ in range(S_PROMPTS)]
    rewards = rng.integers(-4, 9, size=N_) / 4.0
    for g in range(S_PROMPTS):
        while np.all(rewards[g * S_G : (g + 1) * S_G] == rewards[g * S_G]):
            rewards[g * S_G + 1] = rng.integers(-4, 9) / 4.0
    lp, ent = token_stats(rng, (N_, C_), V)
    on = mask.astype(bool)
    old = np.where(on, logp_like(lp), 0.0)
    entropies = np.where(on, r4(ent), 0.0)
    shift = rng.normal(0.0, 0.25, size=(N_, 1))
    policy = np.where(on, logp_like(old + shift + rng.normal(0.0, 0.25, size=(N_, C_))), 0.0)
    ref = np.where(on, logp_like(policy + rng.normal(0.0, 0.3, size=(N_, C_))), 0.0)
    return dict(comp=comp, mask=mask, lens=lens, truncated=truncated, prompts=prompts, rewards=rewards, old=old,
                policy=policy, ref=ref, entropies=entropies)


def grpo_step_trainer(d, *, loss_type, beta, opm_threshold):
    """A bare GRPOTrainer with the one-step geometry (gas = spg = 1, num_iterations = 2), models answering from `d`."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    old_model = RowFusedLM(d["comp"], S_C, dict(log_probs=tt(d["old"])))
    old_model.train()
    ref_model = RowFusedLM(d["comp"], S_C, dict(log_probs=tt(d["ref"]))) if beta != 0.0 else None
    if ref_model is not None:
        ref_model.eval()
    prompt_ids_list = [list(map(int, d["prompts"][i // S_G])) for i in range(S_B)]
    completion_ids_list = [list(map(int, d["comp"][i, : d["lens"][i]])) for i in range(S_B)]
    completions = [f"completion {i}" for i in range(S_B)]

    def _generate(prompts):
        return prompt_ids_list, completion_ids_list, None, completions, None, {}, None, None

    rewards = [float(r) for r in d["rewards"]]

    def reward_0(prompts, completions, completion_ids, **kwargs):
        return list(rewards)

    args = SimpleNamespace(
        per_device_train_batch_size=S_B, per_device_eval_batch_size=S_B, steps_per_generation=1,
        gradient_accumulation_steps=1, gradient_checkpointing_kwargs=None, report_to=[],
        use_bias_correction_kl=True, delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
        vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, entropy_target=0.2,
    )
    return bare(
        GRPOTrainer, model=old_model, ref_model=ref_model, _generate=_generate, environment_factories=None,
        tools=None, environments=None, beta=beta, num_iterations=S_NUM_ITERATIONS,
        multi_objective_aggregation="sum_then_normalize", scale_rewards="group", args=args,
        reward_funcs=[reward_0], reward_processing_classes=[None], reward_func_names=["reward_0"],
        reward_weights=torch.tensor([1.0], dtype=torch.float32), num_generations=S_G, num_generations_eval=S_G,
        _tokenizer=SimpleNamespace(pad_token_id=PAD), eos_token_ids=[EOS], pad_to_multiple_of=None,
        mask_truncated_completions=False,
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list), "images": []},
        _pending_extra_logs=defaultdict(list), _pending_metrics=defaultdict(list), log_multimodal=False,
        use_vllm=False, vllm_importance_sampling_correction=False, vllm_importance_sampling_mode="sequence_mask",
        vllm_importance_sampling_clip_max=CLIP_MAX_DEFAULT, vllm_importance_sampling_clip_min=CLIP_MIN_DEFAULT,
        _step=S_STEPS[0], _buffered_inputs=None,
        loss_type=loss_type, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH.get(loss_type, EPS_HIGH_DEFAULT),
        importance_sampling_level=grpo_level(loss_type), top_entropy_quantile=1.0,
        off_policy_mask_threshold=opm_threshold, max_completion_length=S_MAX_COMPLETION_LENGTH,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False, entropy_coef=0.0,
        use_adaptive_entropy=False, aux_loss_enabled=False,
    )


def grpo_step_stage1(d, *, seed_t, loss_type, beta, opm_threshold):
    """TRL's _prepare_inputs at _step 0 (generation: advantages, old/ref log-probs, num_items_in_batch, shuffle,
    split into steps_per_generation = 1 part) then at _step 1 (2nd iteration: the same buffered batch)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    tr = grpo_step_trainer(d, loss_type=loss_type, beta=beta, opm_threshold=opm_threshold)
    old_model = tr.model
    torch.manual_seed(seed_t)  # shuffle_sequence_dict draws a torch.randperm
    generation_batch = [{"prompt": f"prompt {i // S_G}"} for i in range(S_B)]
    batches = []
    for step in S_STEPS:
        tr._step = step
        batches.append(GRPOTrainer._prepare_inputs(tr, generation_batch))
    assert all(b is batches[0] for b in batches), "the 2nd iteration must reuse the buffered batch"
    assert old_model.calls == 1, "old_per_token_logps computed once, at generation"
    batch = batches[-1]
    assert "old_per_token_logps" in batch, "TRL did not record old_per_token_logps"
    stage1_metrics = last_metrics(tr._metrics["train"], prefix="sampling/")
    rows = [old_model._index[tuple(int(t) for t in r.tolist())] for r in batch["completion_ids"]]
    assert sorted(rows) == list(range(S_B)), "the one micro-batch must hold every row"
    all_adv = list(tr._logs["advantages"])
    return tr, batch, stage1_metrics, rows, all_adv


def step_ref_per_token_loss(loss_type, beta, thr, lp, old, ref, adv, mask):
    """Verification only (never written): the per-token loss l [B, C] from the formulas documented in
    fixtures/README.md, for checking the normalizer formulas and the micro-batch split against TRL."""
    m = mask.to(lp.dtype)
    A = adv.unsqueeze(1)
    n = m.sum(-1, keepdim=True)
    lr = lp - old
    if grpo_level(loss_type) == "sequence":
        r = torch.exp((lr * m).sum(-1, keepdim=True) / n.clamp(min=1.0))
    else:
        r = torch.exp(lr)
    eps_high = EPS_HIGH.get(loss_type, EPS_HIGH_DEFAULT)
    if loss_type == "cispo":
        ptl = -torch.clamp(r, max=eps_high).detach() * A * lp
    elif loss_type == "sapo":
        tau = torch.where(A > 0, torch.tensor(1.0), torch.tensor(1.05))
        ptl = -(torch.sigmoid(tau * (r - 1)) * 4 / tau) * A
    elif loss_type == "vespo":
        with torch.no_grad():
            log_w = (torch.clamp(lr, -20.0, 20.0) * m).sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)
            pos = A >= 0
            k = torch.where(pos, torch.tensor(2.0), torch.tensor(3.0))
            lam = torch.where(pos, torch.tensor(3.0), torch.tensor(2.0))
            phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        ptl = -phi * A * lp
    else:
        ptl = -torch.minimum(r * A, torch.clamp(r, 1 - EPS_LOW, 1 + eps_high) * A)
    if thr is not None:
        seq_kl = ((old - lp.detach()) * m).sum(-1, keepdim=True) / n.clamp(min=1.0)
        ptl = ptl * ((A >= 0) | (seq_kl <= thr)).to(lp.dtype)
    if beta != 0.0:
        x = ref - lp
        ptl = ptl + beta * (torch.exp(x) - x - 1) * r
    return ptl.expand_as(lp) if ptl.shape != lp.shape else ptl


def step_ref_loss(loss_type, ptl, mask, n_rows, n_tokens, num_items):
    """The documented one-step normalizer of each loss type, applied to the masked per-token loss of some rows
    (n_rows, n_tokens, num_items: the WHOLE batch's counts, so micro-batch shares add up)."""
    m = mask.to(ptl.dtype)
    kind = S_NORMALIZERS[loss_type][0]
    if kind == "rows_of_row_means":
        return ((ptl * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / n_rows
    if kind == "tokens":
        return (ptl * m).sum() / max(n_tokens, 1.0)
    if kind == "rows_x_max_completion_length":
        return (ptl * m).sum() / (n_rows * S_MAX_COMPLETION_LENGTH)
    if kind == "num_items_in_batch":
        return (ptl * m).sum() / max(num_items, 1.0)
    if kind == "rows":
        return (ptl * m).sum() / n_rows
    raise ValueError(kind)


def step_micro_weight(loss_type, rows_m, tokens_m, n_rows, n_tokens):
    """Factor turning TRL's loss on a micro-batch alone (gas = spg = 1) into its share of the one-step loss."""
    kind = S_NORMALIZERS[loss_type][0]
    if kind in ("rows_of_row_means", "rows_x_max_completion_length", "rows"):
        return rows_m / n_rows
    if kind == "tokens":
        return tokens_m / n_tokens
    return 1.0  # num_items_in_batch is the whole batch's in every micro-batch


def step_trl_loss(d, micro, *, loss_type, beta, thr, gas=1, spg=1):
    """TRL's _compute_loss on (part of) the batch with a fresh policy leaf [S_B, C]; returns (loss, grad, metrics)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    tr = grpo_step_trainer(d, loss_type=loss_type, beta=beta, opm_threshold=thr)
    tr.current_gradient_accumulation_steps = gas
    tr.args.gradient_accumulation_steps = gas
    tr.args.steps_per_generation = spg
    lp = tt(d["policy"], grad=True)
    policy_model = RowFusedLM(d["comp"], S_C, dict(log_probs=lp, entropy=tt(d["entropies"])))
    policy_model.train()
    tr.model = policy_model
    loss = GRPOTrainer._compute_loss(tr, policy_model, micro)
    loss.backward()
    assert policy_model.calls == 1
    return float(loss), lp.grad.detach().clone(), last_metrics(tr._metrics["train"])


def close(a, b, rtol=1e-11, atol=1e-14):
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol))


_STEP_FAMILY = {}


def grpo_step_family(seed):
    """Data shared by every grpo_step case, drawn (with retries) so that token-level clipping binds on both sides,
    cispo's cap binds, luspo's sequence-level ratio is clipped for some rows but not all, and the off-policy mask
    drops at least one sequence (not every one)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    if "d" in _STEP_FAMILY:
        return _STEP_FAMILY["d"]
    fam = "grpo_step/family"
    for attempt in range(500):
        rng = case_rng(seed, f"{fam}#{attempt}")
        d = design_step_batch(rng)
        if len({tuple(r) for r in d["comp"].tolist()}) != S_B:
            continue
        seed_t = torch_seed(seed, f"{fam}#{attempt}")
        _, batch, _, rows, _ = grpo_step_stage1(d, seed_t=seed_t, loss_type="grpo", beta=0.0, opm_threshold=None)
        m = batch["completion_mask"].numpy().astype(bool)
        adv = batch["advantages"].numpy()[:, None]
        pol, old = d["policy"][rows], batch["old_per_token_logps"].numpy()
        assert np.array_equal(old, d["old"][rows])
        if np.array_equal(pol[m], old[m]):
            continue
        r = np.exp(pol - old)
        low = int(((r < 1 - EPS_LOW) & (adv < 0) & m).sum())
        high = int(((r > 1 + EPS_HIGH_DEFAULT) & (adv > 0) & m).sum())
        cis = int(((r > EPS_HIGH["cispo"]) & (adv > 0) & m).sum())
        n = m.sum(1)
        rs = np.exp(((pol - old) * m).sum(1) / np.maximum(n, 1))
        a1 = adv[:, 0]
        seq_clip = int((((rs < 1 - EPS_LOW) & (a1 < 0)) | ((rs > 1 + EPS_HIGH_DEFAULT) & (a1 > 0))).sum())
        if low < 1 or high < 1 or cis < 1 or not (1 <= seq_clip < S_B):
            continue
        thr = pick_threshold(d, batch, rows)
        if thr is None:
            continue
        keep = GRPOTrainer.get_off_policy_mask(
            advantages=batch["advantages"].unsqueeze(1), per_token_logps=tt(pol),
            sampling_per_token_logps=batch["old_per_token_logps"], mask=batch["completion_mask"],
            off_policy_threshold=thr)
        n_drop = int((keep == 0).sum())
        if n_drop < 1 or n_drop == S_B:
            continue
        counts = dict(
            n_tokens_valid=int(m.sum()), n_tokens_low_clipped=low, n_tokens_high_clipped=high,
            n_tokens_cispo_capped=cis, n_seq_clipped_sequence_level=seq_clip,
            n_seq_dropped_by_off_policy_mask=n_drop, n_seq_negative_advantage=int((a1 < 0).sum()),
            n_rows_truncated_no_eos=int(d["truncated"][rows].sum()), completion_lengths=[int(x) for x in n],
            attempt=attempt,
        )
        _STEP_FAMILY["d"] = (d, seed_t, rows, thr, counts)
        return _STEP_FAMILY["d"]
    raise SkipCase(f"could not draw binding data for {fam}")


def run_grpo_step(W, seed, name, loss_type, beta, opm):
    from trl.trainer.utils import split_tensor_dict

    d, seed_t, fam_rows, fam_thr, counts = grpo_step_family(seed)
    thr = fam_thr if opm else None
    eps_high = EPS_HIGH.get(loss_type, EPS_HIGH_DEFAULT)
    config = dict(
        loss_type=loss_type, beta=beta, epsilon_low=EPS_LOW, epsilon_high=eps_high, delta=None,
        importance_sampling_level=grpo_level(loss_type), use_bias_correction_kl=True, top_entropy_quantile=1.0,
        off_policy_mask_threshold=thr, entropy_coef=0.0,
        use_vllm=False, use_vllm_importance_sampling_correction=False, vllm_importance_sampling_mode="sequence_mask",
        vllm_importance_sampling_clip_max=CLIP_MAX_DEFAULT, vllm_importance_sampling_clip_min=CLIP_MIN_DEFAULT,
        sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0,
        vespo_k_neg=3.0, vespo_lambda_neg=2.0, max_completion_length=S_MAX_COMPLETION_LENGTH, mode="train",
        current_gradient_accumulation_steps=1, gradient_accumulation_steps=1, steps_per_generation=1,
        num_iterations=S_NUM_ITERATIONS, per_device_train_batch_size=S_B, num_generations=S_G,
        generation_batch_size=S_B, num_processes=1, scale_rewards="group", step=S_STEPS[-1], dtype="float64",
    )
    validate_grpo_config(config, geom=S_GEOM)
    torch.set_default_dtype(torch.float64)
    tr, batch, stage1_metrics, rows, all_adv = grpo_step_stage1(d, seed_t=seed_t, loss_type=loss_type, beta=beta,
                                                                opm_threshold=thr)
    assert rows == fam_rows
    # Reorder the data to the batch's (shuffled) row order, so row i of every recorded array is row i of TRL's batch
    db = {k: (v[rows] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == S_B else v) for k, v in d.items()}
    db["comp"] = d["comp"][rows]
    assert np.array_equal(batch["completion_ids"].numpy(), db["comp"])

    # 1. the loss of the one optimizer step, by TRL
    loss, grad, metrics = step_trl_loss(db, batch, loss_type=loss_type, beta=beta, thr=thr)

    mask_t = batch["completion_mask"]
    n_tokens = float(mask_t.sum())
    num_items = float(batch["num_items_in_batch"])
    assert num_items == n_tokens, "num_items_in_batch must be the batch's token count"
    ref_lp = tt(db["ref"]) if beta != 0.0 else None

    # 2. the documented normalizer formula, on an independent per-token loss, against TRL (loss and gradient)
    lp = tt(db["policy"], grad=True)
    ptl = step_ref_per_token_loss(loss_type, beta, thr, lp, batch["old_per_token_logps"], ref_lp,
                                batch["advantages"], mask_t)
    ref_loss = step_ref_loss(loss_type, ptl, mask_t, S_B, n_tokens, num_items)
    ref_loss.backward()
    assert close(float(ref_loss), loss), f"{name}: normalizer formula {S_NORMALIZERS[loss_type][1]} != TRL's loss"
    assert close(lp.grad.numpy(), grad.numpy()), f"{name}: reference gradient != TRL's"

    # 3. micro-batch splits: TRL on each part alone (gas = spg = 1), scaled by the part's share of the normalizer,
    #    adds up to the one-step loss and gradient; metrics combine by token / row weights or min / max.
    splits = {}
    for k in S_SPLITS:
        parts = split_tensor_dict(batch, k)
        tot_loss, tot_grad, parts_out = 0.0, torch.zeros_like(grad), []
        acc_loss_gas, acc_grad_gas = 0.0, torch.zeros_like(grad)
        for p_i, part in enumerate(parts):
            rows_m = part["completion_mask"].shape[0]
            tokens_m = float(part["completion_mask"].sum())
            l_m, g_m, met_m = step_trl_loss(db, part, loss_type=loss_type, beta=beta, thr=thr)
            w = step_micro_weight(loss_type, rows_m, tokens_m, S_B, n_tokens)
            tot_loss += w * l_m
            tot_grad += w * g_m
            # the same with the reference and the whole batch's counts (what a Rust loop does)
            lp_m = tt(db["policy"][p_i * rows_m:(p_i + 1) * rows_m], grad=True)
            l_ref = step_ref_per_token_loss(
                loss_type, beta, thr, lp_m, part["old_per_token_logps"],
                ref_lp[p_i * rows_m:(p_i + 1) * rows_m] if ref_lp is not None else None,
                part["advantages"], part["completion_mask"])
            share = step_ref_loss(loss_type, l_ref, part["completion_mask"], S_B, n_tokens, num_items)
            assert close(float(share), w * l_m), f"{name}: micro-batch share (k={k}) differs from TRL's"
            # TRL's own accumulation with gas = spg = k on equal-size parts
            l_g, g_g, _ = step_trl_loss(db, part, loss_type=loss_type, beta=beta, thr=thr, gas=k, spg=k)
            acc_loss_gas += l_g
            acc_grad_gas += g_g
            parts_out.append(dict(rows=[p_i * rows_m, (p_i + 1) * rows_m], n_tokens=int(tokens_m), loss_alone=l_m,
                                  weight=w, loss_share=w * l_m, metrics=met_m))
        assert close(tot_loss, loss), f"{name}: k={k} micro-batch shares do not add up to TRL's loss"
        assert close(tot_grad.numpy(), grad.numpy()), f"{name}: k={k} micro-batch gradients do not add up"
        trl_gas_matches = close(acc_loss_gas, loss) and close(acc_grad_gas.numpy(), grad.numpy())
        if loss_type != "bnpo" or k == 1:
            assert trl_gas_matches, f"{name}: TRL's gas=spg={k} accumulation should equal the one-step loss"
        # metrics
        for key, want in metrics.items():
            how = S_METRIC_COMBINE[key]
            if how == "rows" or (how == "tokens" and grpo_level(loss_type) == "sequence"
                                 and key.startswith("clip_ratio/")):
                how = "rows"  # sequence-level ratios: one value per sequence
            vals = [p["metrics"][key] for p in parts_out]
            if how == "tokens":
                got = sum(v * p["n_tokens"] for v, p in zip(vals, parts_out)) / n_tokens
            elif how == "rows":
                got = sum(v * (p["rows"][1] - p["rows"][0]) for v, p in zip(vals, parts_out)) / S_B
            elif how == "min":
                got = min(vals)
            else:
                got = max(vals)
            assert close(got, want, rtol=1e-6, atol=1e-9), f"{name}: metric {key} (k={k}) does not combine by {how}"
        splits[str(k)] = dict(micro_batches=parts_out, trl_gas_equals_one_step=trl_gas_matches,
                              trl_gas_loss=acc_loss_gas)
    combine = {}
    for key in metrics:
        how = S_METRIC_COMBINE[key]
        if grpo_level(loss_type) == "sequence" and key.startswith("clip_ratio/") and how == "tokens":
            how = "rows"
        combine[key] = how

    binding = dict(counts)
    if not opm:
        binding.pop("n_seq_dropped_by_off_policy_mask", None)
    config["binding"] = binding
    ins = dict(
        per_token_logps=db["policy"], completion_mask=mask_t, advantages=batch["advantages"],
        entropies=db["entropies"], num_items_in_batch=num_items, old_per_token_logps=batch["old_per_token_logps"],
        ref_per_token_logps=batch.get("ref_per_token_logps"), sampling_per_token_logps=None,
        importance_sampling_ratio=None,
    )
    if beta != 0.0:
        assert np.array_equal(batch["ref_per_token_logps"].numpy(), db["ref"])
    expected = dict(loss=loss, metrics=metrics, grad_per_token_logps=grad)
    kind, formula = S_NORMALIZERS[loss_type]
    one_step = dict(
        normalizer=dict(kind=kind, formula=formula, n_rows=S_B, n_tokens=n_tokens,
                        num_items_in_batch=num_items, max_completion_length=S_MAX_COMPLETION_LENGTH),
        metric_combine=combine, splits=splits,
    )
    stage1 = dict(
        source=src("trl.trainer.grpo_trainer.GRPOTrainer._prepare_inputs"),
        inputs=dict(rewards=d["rewards"], completion_mask=d["mask"], old_per_token_logps=d["old"]),
        expected=dict(advantages=all_adv, num_items_in_batch=num_items, micro_batch_rows=rows,
                      metrics=stage1_metrics),
    )
    W.emit("grpo_step", name, src("trl.trainer.grpo_trainer.GRPOTrainer._compute_loss"), config, ins, expected,
           extra=dict(stage1=stage1, one_step=one_step))


def gen_grpo_step(W, seed):
    cases = []
    for loss_type in LOSS_TYPES:
        for beta in BETAS:
            cases.append((f"{loss_type}_beta{beta}_opm-off", dict(loss_type=loss_type, beta=beta, opm=False)))
        cases.append((f"{loss_type}_beta0.04_opm-on", dict(loss_type=loss_type, beta=0.04, opm=True)))
    for name, kw in cases:
        W.run("grpo_step", name, lambda name=name, kw=kw: run_grpo_step(W, seed, name, **kw))


# ----------------------------------------------------------------------------------------------------------------------

GENERATORS = dict(grpo_matrix=gen_grpo_matrix, online_dpo=gen_online_dpo, grpo_step=gen_grpo_step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--out", default=os.path.join(REPO, "fixtures"))
    args = ap.parse_args()

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    for g in GROUPS:
        d = os.path.join(args.out, g)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):  # drop stale fixtures of this group
            if f.endswith(".json"):
                os.remove(os.path.join(d, f))
    W = Writer(args.out, args.seed)
    t0 = time.time()
    for g in GROUPS:
        t = time.time()
        GENERATORS[g](W, args.seed)
        print(f"{g:12s} {W.counts[g]:4d} cases  {time.time() - t:5.1f}s", file=sys.stderr)
    if "dir" in _VALIDATOR:
        shutil.rmtree(_VALIDATOR["dir"], ignore_errors=True)

    versions = {"trl": TRL_VERSION, "torch": TORCH_VERSION}
    for pkg in ("transformers", "accelerate", "datasets", "numpy"):
        versions[pkg] = importlib.metadata.version(pkg)
    versions["python"] = ".".join(map(str, sys.version_info[:3]))
    path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
    manifest.setdefault("groups", {})
    for g in GROUPS:
        manifest["groups"][g] = sorted(W.cases[g])
    prefixes = tuple(g + "/" for g in GROUPS)
    manifest["skipped"] = [s for s in manifest.get("skipped", []) if not s.startswith(prefixes)] + W.skipped
    gens = manifest.setdefault("generators", {})
    gens["scripts/gen_online_fixtures.py"] = dict(groups=GROUPS, seed=args.seed, default_dtype="float64",
                                                   versions=versions)
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    print(f"total {sum(W.counts[g] for g in GROUPS)} cases, {W.bytes / 1e6:.2f} MB, {time.time() - t0:.1f}s; "
          f"not covered {len(W.skipped)}", file=sys.stderr)


if __name__ == "__main__":
    main()
