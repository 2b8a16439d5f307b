#!/usr/bin/env python3
"""Parity fixtures for GRPO's importance-sampling / off-policy-mask matrix and for online DPO.

Writes two fixture folders (format: fixtures/README.md):

* ``grpo_matrix/``: TRL's ``GRPOTrainer._compute_loss`` for every loss type x beta x vLLM importance-sampling mode x
  off-policy sequence mask. The inputs of each call are produced by TRL's own pipeline: ``GRPOTrainer._prepare_inputs``
  (which runs ``_generate_and_score_completions``: advantages, the ``old``/``ref`` per-token log-probs, the vLLM
  importance-sampling ratio of the chosen mode, ``num_items_in_batch``; then shuffles and splits the generation batch
  into micro-batches), then ``_compute_loss`` on one micro-batch.
* ``online_dpo/``: TRL's ``OnlineDPOTrainer.training_step`` (experimental) for the ``sigmoid`` and ``ipo`` losses.

Every expected value comes from TRL's code. Nothing here re-implements a loss; what is replaced is listed in
fixtures/README.md (section "Online fixtures"): the models (fakes returning leaf tensors we control), ``_generate``
(returns fixed token ids, and fixed vLLM sampling log-probs for GRPO), the accelerator (single process) and the
reward functions (plain callables returning fixed rewards). The trainer instances are made with
``Class.__new__(Class)`` and given the attributes ``__init__`` would set from the config; every GRPO case's config is
additionally passed through the real ``GRPOConfig`` + ``GRPOTrainer.__init__`` (tiny random model saved to a temp
folder, vLLM client construction stubbed out), so that a combination TRL refuses is recorded as not covered.

Usage:
    python scripts/gen_online_fixtures.py [--seed N] [--out DIR]

Default seed 20261206, default DIR = this repository's fixtures/. Deterministic given the seed. Needs TRL 1.16
(torch, transformers, datasets come with it). Updates DIR/manifest.json (adds the two groups, keeps the rest).
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
GROUPS = ["grpo_matrix", "online_dpo"]
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


def validate_grpo_config(cfg):
    """Pass the case's config through TRL's GRPOConfig and GRPOTrainer.__init__; raise what TRL raises.

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

    saved = gt.VLLMGeneration
    gt.VLLMGeneration = _Stub
    out_dir = tempfile.mkdtemp(prefix="gen_online_out_")
    try:
        args = GRPOConfig(
            output_dir=out_dir, report_to=[], bf16=False, use_cpu=True, seed=0,
            per_device_train_batch_size=B, num_generations=G, steps_per_generation=SPG,
            gradient_accumulation_steps=GAS, num_iterations=NUM_ITERATIONS,
            max_completion_length=MAX_COMPLETION_LENGTH, loss_type=cfg["loss_type"], beta=cfg["beta"],
            epsilon=cfg["epsilon_low"], epsilon_high=cfg["epsilon_high"],
            importance_sampling_level=cfg["importance_sampling_level"], use_vllm=cfg["use_vllm"],
            vllm_importance_sampling_correction=cfg["use_vllm_importance_sampling_correction"],
            vllm_importance_sampling_mode=cfg["vllm_importance_sampling_mode"],
            vllm_importance_sampling_clip_max=cfg["vllm_importance_sampling_clip_max"],
            vllm_importance_sampling_clip_min=cfg["vllm_importance_sampling_clip_min"],
            off_policy_mask_threshold=cfg["off_policy_mask_threshold"],
        )
        ds = Dataset.from_dict({"prompt": ["w1 w2"] * N})
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

GENERATORS = dict(grpo_matrix=gen_grpo_matrix, online_dpo=gen_online_dpo)


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
