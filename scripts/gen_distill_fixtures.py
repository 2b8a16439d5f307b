#!/usr/bin/env python3
"""Parity fixtures for TRL 1.16's distillation losses (folder ``distill/``, format: fixtures/README.md).

Two anchor functions, called directly on seeded random inputs:

* ``trl.trainer.distillation_trainer._chunked_divergence_loss`` (cases ``fused_*``): the fused two-head loss of
  ``DistillationTrainer``. It takes the student's and the teacher's last hidden states and LM heads (weight ``[V, H]``,
  optional bias), projects them tile by tile through ``trl.kernels.chunked_divergence.ChunkedDivergenceFunction``
  (float32 projection and accumulation whatever the input dtype), and reduces the per-token divergence over the
  completion mask. ``expected.loss``, ``expected.entropy_sum`` and ``expected.n_valid`` are the three values it
  returns; ``expected.grad_student_*`` come from ``loss.backward()`` (autograd through TRL's own
  ``ChunkedDivergenceFunction.backward``). The teacher's hidden states, weight and bias are passed with
  ``requires_grad=True`` and the script asserts that their ``.grad`` stays ``None`` (TRL returns no teacher gradient).
  On this CPU-only torch, ``_use_triton`` is false, so TRL takes its "non-compact" path: every position is projected,
  then ``masked_fill`` zeroes the masked positions (the CUDA/Triton path projects only the valid rows; same math).
  A few cases patch the module constants ``VOCAB_CHUNK_SIZE`` / ``TOKEN_CHUNK_SIZE`` (recorded in ``config``) so that
  the online-logsumexp merge across vocabulary tiles and the token chunking are exercised at tiny sizes.
* ``trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss`` (cases ``gkd_*``): GKD's static method on full
  logits ``[B, T, V]`` (or ``[N, V]``) with ``labels`` (``-100`` = ignored), every reduction it supports
  (``batchmean``, ``sum``, ``mean``, ``none``) and ``num_items_in_batch``. ``expected.loss`` is its return value;
  ``expected.grad_student_logits`` is the gradient of the loss (for ``reduction="none"``: of
  ``sum(grad_output * loss)``, with ``inputs.grad_output`` given). Computed in float64 by TRL.

Independent float64 cross-check (``expected.reference_fp64``): for every case the script also evaluates the written
formula (fixtures/distill/README.md) in float64 numpy with a hand-derived gradient, checks that gradient against float64
torch autograd on a separate straightforward implementation (relative 1e-12), and compares it with TRL's output:
TRL's fused path (float32 inside) must agree to 1e-4 (scaled), GKD (float64) to 1e-11. The observed differences are
written per case under the extra top-level key ``check`` (ignored by tests/parity) and summarised on stderr.

Inputs are multiples of 1/128 (hidden states, weights, biases, logits), so they are exact in float32 and the fused
path's float32 projection ``hidden @ weight.T + bias`` is exact too (asserted per case in ``check``): the only
difference between TRL's fused output and the float64 formula is TRL's float32 softmax/divergence arithmetic and the
float32 rounding of its outputs.

Usage:
    python scripts/gen_distill_fixtures.py [--seed N] [--out DIR] [--no-manifest]

Default seed 0, default DIR = this repository's fixtures/distill. Deterministic given the seed (one RNG per
(seed, case name)). Torch runs on one thread. Unless --no-manifest, updates DIR/../manifest.json: the ``distill`` group
(case names), ``skipped`` entries of this group, and ``generators["scripts/gen_distill_fixtures.py"]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import sys
import time
import warnings
import zlib
from collections import defaultdict

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import trl  # noqa: E402
from trl.experimental.gkd.gkd_trainer import GKDTrainer  # noqa: E402
from trl.kernels import chunked_divergence as CD  # noqa: E402
from trl.kernels.chunked_logprob import _use_triton  # noqa: E402
from trl.trainer import distillation_trainer as DT  # noqa: E402

TRL_VERSION = trl.__version__
TORCH_VERSION = torch.__version__.split("+")[0]
GROUP = "distill"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUSED_SOURCE = f"trl {TRL_VERSION} trl.trainer.distillation_trainer._chunked_divergence_loss"
GKD_SOURCE = f"trl {TRL_VERSION} trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss"
QUANTUM = 128.0  # inputs are multiples of 1/QUANTUM (exact in float32)

# Tolerances the script enforces (TRL vs the float64 formula); the crate's bounds are in fixtures/distill/README.md.
FUSED_RTOL, FUSED_ATOL_SCALED = 1e-4, 1e-5
GKD_RTOL, GKD_ATOL = 1e-11, 1e-13
AUTOGRAD_RTOL = 1e-12


class SkipCase(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------------
# Writer (same conventions as scripts/gen_online_fixtures.py)
# ----------------------------------------------------------------------------------------------------------------------


def case_rng(seed: int, name: str) -> np.random.Generator:
    """Independent RNG per (seed, name) so adding/removing cases never shifts the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# The JSON helpers of the online fixture generator (same conventions: float64 values, bools as 0/1,
# one key per line), shared rather than copied.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_online_fixtures import all_finite, dumps, to_list  # noqa: E402


class Writer:
    def __init__(self, out: str):
        self.out = out
        self.cases = defaultdict(list)  # function -> names
        self.skipped = []
        self.bytes = 0
        self.stats = []  # (function, case, config, check)

    def emit(self, function, case, source, config, inputs, expected, check):
        config, inputs, expected, check = to_list(config), to_list(inputs), to_list(expected), to_list(check)
        if not (all_finite(config) and all_finite(inputs) and all_finite(expected) and all_finite(check)):
            raise SkipCase("non-finite value in config/inputs/expected")
        doc = {"source": source, "case": case, "config": config, "inputs": inputs, "expected": expected,
               "check": check}
        text = dumps(doc) + "\n"
        with open(os.path.join(self.out, case + ".json"), "w") as f:
            f.write(text)
        self.bytes += len(text)
        self.cases[function].append(case)
        self.stats.append((function, case, config, check))


# ----------------------------------------------------------------------------------------------------------------------
# The written formula, float64 (numpy), with the hand-derived gradient
# ----------------------------------------------------------------------------------------------------------------------


def q(x: np.ndarray) -> np.ndarray:
    """Round to a multiple of 1/QUANTUM (exact in float32 and in float64, short decimal repr)."""
    return np.round(np.asarray(x, dtype=np.float64) * QUANTUM) / QUANTUM + 0.0  # + 0.0: no -0.0


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def divergence_rows(lps: np.ndarray, lpt: np.ndarray, beta: float):
    """Per-row divergence D [n], elementwise terms e [n, V] (D = e.sum(-1)) and dD/dz_student [n, V].

    lps / lpt: student / teacher log-probabilities (after scale, soft-capping and temperature).
      beta == 0: D = KL(p_t || p_s) = sum_v p_t (log p_t - log p_s)            (forward KL)
                 dD/dz_s = p_s - p_t
      beta == 1: D = KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)            (reverse KL)
                 dD/dz_s = p_s (log p_s - log p_t - D)
      otherwise: log m = logaddexp(log p_s + log(1 - beta), log p_t + log(beta))   (m = (1-beta) p_s + beta p_t)
                 D = beta KL(p_t || m) + (1 - beta) KL(p_s || m)
                 dD/dz_s = (1 - beta) p_s (log p_s - log m - KL(p_s || m))
    """
    ps, pt = np.exp(lps), np.exp(lpt)
    if beta == 0.0:
        e = pt * (lpt - lps)
        d = e.sum(-1)
        g = ps - pt
    elif beta == 1.0:
        e = ps * (lps - lpt)
        d = e.sum(-1)
        g = ps * (lps - lpt - d[:, None])
    else:
        lm = np.logaddexp(lps + math.log1p(-beta), lpt + math.log(beta))
        kl_s_e = ps * (lps - lm)
        e = beta * pt * (lpt - lm) + (1 - beta) * kl_s_e
        d = e.sum(-1)
        kl_s = kl_s_e.sum(-1)
        g = (1 - beta) * ps * (lps - lm - kl_s[:, None])
    return d, e, g


def alternatives(lps: np.ndarray, lpt: np.ndarray, beta: float, row_weight: np.ndarray) -> dict:
    """Conventions the fixture rules out, reduced like the loss (sum_i row_weight_i * D_i); written to `check`."""
    ps, pt = np.exp(lps), np.exp(lpt)
    out = {"forward_kl_teacher_student": float((row_weight * (pt * (lpt - lps)).sum(-1)).sum()),
           "reverse_kl_student_teacher": float((row_weight * (ps * (lps - lpt)).sum(-1)).sum())}
    if 0.0 < beta < 1.0:
        lm = np.logaddexp(lps + math.log1p(-beta), lpt + math.log(beta))
        kl_t, kl_s = (pt * (lpt - lm)).sum(-1), (ps * (lps - lm)).sum(-1)
        # the weights attached the other way round (the formula proposed in trl#6780 / ms-swift#10213)
        out["jsd_kl_weights_swapped"] = float((row_weight * ((1 - beta) * kl_t + beta * kl_s)).sum())
        # the mixture weights attached the other way round (TRL's GKD before trl#3043: m = beta p_s + (1-beta) p_t)
        lm2 = np.logaddexp(lps + math.log(beta), lpt + math.log1p(-beta))
        out["jsd_mixture_swapped"] = float((row_weight * (beta * (pt * (lpt - lm2)).sum(-1)
                                                          + (1 - beta) * (ps * (lps - lm2)).sum(-1))).sum())
    return out


def transform(raw: np.ndarray, scale: float, softcap, temperature: float):
    """z = softcap(raw * scale) / T; returns z and dz/draw (elementwise)."""
    y = raw * scale
    if softcap is not None:
        th = np.tanh(y / softcap)
        z = softcap * th
        dz = (1 - th * th) * scale
    else:
        z = y
        dz = np.full_like(y, scale)
    return z / temperature, dz / temperature


def fused_reference(c, inp):
    """Float64 value and gradients of _chunked_divergence_loss from the written formula."""
    Hs, Ht = inp["student_hidden"].shape[-1], inp["teacher_hidden"].shape[-1]
    hs = inp["student_hidden"].reshape(-1, Hs)
    ht = inp["teacher_hidden"].reshape(-1, Ht)
    ws, wt, bs, bt = inp["student_weight"], inp["teacher_weight"], inp["student_bias"], inp["teacher_bias"]
    raw_s = hs @ ws.T + (0.0 if bs is None else bs)
    raw_t = ht @ wt.T + (0.0 if bt is None else bt)
    zs, dzs = transform(raw_s, c["student_logit_scale"], c["student_final_logit_softcapping"], c["temperature"])
    zt, _ = transform(raw_t, c["teacher_logit_scale"], c["teacher_final_logit_softcapping"], c["temperature"])
    lps, lpt = log_softmax(zs), log_softmax(zt)
    d, _, g = divergence_rows(lps, lpt, c["beta"])
    ent = -(np.exp(lps) * lps).sum(-1)
    valid = inp["completion_mask"].reshape(-1) != 0
    n_valid = int(valid.sum())
    nib = inp["num_items_in_batch"]
    denom = float(nib) if nib is not None else float(max(n_valid, 1))
    d_m = np.where(valid, d, 0.0)
    ent_m = np.where(valid, ent, 0.0)
    loss = d_m.sum() / denom
    G = g * dzs * (valid.astype(np.float64) / denom)[:, None]  # d loss / d raw student logits [N, V]
    shape = inp["completion_mask"].shape
    return {
        "loss": loss,
        "entropy_sum": ent_m.sum(),
        "per_token_divergence": d_m.reshape(shape),
        "per_token_entropy": ent_m.reshape(shape),
        "grad_student_hidden": (G @ ws).reshape(inp["student_hidden"].shape),
        "grad_student_weight": G.T @ hs,
        "grad_student_bias": None if bs is None else G.sum(0),
    }, {"raw_s": raw_s, "raw_t": raw_t, "n_valid": n_valid,
        "alternatives": alternatives(lps, lpt, c["beta"], valid.astype(np.float64) / denom)}


def elementwise_torch(ls, lt, b):
    """The elementwise terms written out in torch (log-probabilities in, mixture as a plain weighted sum)."""
    if b == 0.0:
        return lt.exp() * (lt - ls)
    if b == 1.0:
        return ls.exp() * (ls - lt)
    lm = torch.logaddexp(ls + math.log(1 - b), lt + math.log(b))
    return b * lt.exp() * (lt - lm) + (1 - b) * ls.exp() * (ls - lm)


def fused_autograd_check(c, inp):
    """Gradient of the same formula by float64 torch autograd on a straightforward implementation."""
    t = {k: (None if v is None else torch.tensor(v, dtype=torch.float64)) for k, v in inp.items()
         if k != "num_items_in_batch"}
    hs = t["student_hidden"].clone().requires_grad_(True)
    ws = t["student_weight"].clone().requires_grad_(True)
    bs = None if t["student_bias"] is None else t["student_bias"].clone().requires_grad_(True)

    def tr(z, scale, cap):
        z = z * scale
        if cap is not None:
            z = cap * torch.tanh(z / cap)
        return z / c["temperature"]

    zs = hs @ ws.T + (0 if bs is None else bs)
    zt = t["teacher_hidden"] @ t["teacher_weight"].T + (0 if t["teacher_bias"] is None else t["teacher_bias"])
    ls = torch.log_softmax(tr(zs, c["student_logit_scale"], c["student_final_logit_softcapping"]), -1)
    lt = torch.log_softmax(tr(zt, c["teacher_logit_scale"], c["teacher_final_logit_softcapping"]), -1)
    d = elementwise_torch(ls, lt, c["beta"]).sum(-1)
    mask = t["completion_mask"] != 0
    nib = inp["num_items_in_batch"]
    denom = float(nib) if nib is not None else max(int(mask.sum()), 1)
    loss = (d * mask).sum() / denom
    loss.backward()
    return {"loss": loss.item(), "grad_student_hidden": hs.grad.numpy(), "grad_student_weight": ws.grad.numpy(),
            "grad_student_bias": None if bs is None else bs.grad.numpy()}


def gkd_reference(c, inp):
    """Float64 value (and, for scalar reductions, the gradient) of generalized_jsd_loss from the written formula."""
    s, t, labels = inp["student_logits"], inp["teacher_logits"], inp["labels"]
    V = s.shape[-1]
    lps, lpt = log_softmax(s.reshape(-1, V) / c["temperature"]), log_softmax(t.reshape(-1, V) / c["temperature"])
    _, e, g = divergence_rows(lps, lpt, c["beta"])
    g = g / c["temperature"]  # d z / d logits = 1 / T
    valid = np.ones(e.shape[0], bool) if labels is None else (labels.reshape(-1) != -100)
    n_valid = int(valid.sum())
    total = e[valid].sum()
    nib, red = inp["num_items_in_batch"], c["reduction"]
    if nib is not None:
        w = 1.0 / float(nib)
    elif red == "batchmean":
        w = 1.0 / (max(n_valid, 1) if labels is not None else max(s.shape[0], 1))
    elif red == "sum":
        w = 1.0
    elif red == "mean":
        w = 1.0 / (n_valid * V)  # jsd[mask].mean(): over the kept rows *and* the vocabulary
    else:
        w = None
    if w is None:  # "none": the elementwise terms of the kept rows; gradient by autograd (gkd_autograd)
        out = e[valid] if labels is not None else e.reshape(s.shape)
        return {"loss": out, "grad_student_logits": None}, None
    grad = np.where(valid[:, None], g * w, 0.0).reshape(s.shape)
    return {"loss": total * w, "grad_student_logits": grad}, alternatives(lps, lpt, c["beta"], valid * w)


def gkd_autograd(c, inp):
    """Float64 torch autograd on a straightforward implementation of the same formula and reduction."""
    s = torch.tensor(inp["student_logits"], requires_grad=True)
    t = torch.tensor(inp["teacher_logits"])
    e = elementwise_torch(torch.log_softmax(s / c["temperature"], -1), torch.log_softmax(t / c["temperature"], -1),
                          c["beta"])
    labels = inp["labels"]
    if labels is not None:
        e = e[torch.tensor(labels) != -100]
    nib, red = inp["num_items_in_batch"], c["reduction"]
    if nib is not None:
        out = e.sum() / float(nib)
    elif red == "batchmean":
        out = e.sum() / (max(int((torch.tensor(labels) != -100).sum()), 1) if labels is not None
                         else max(e.shape[0], 1))
    elif red == "sum":
        out = e.sum()
    elif red == "mean":
        out = e.mean()
    else:
        out = e
    if out.dim() == 0:
        out.backward()
    else:
        (out * torch.tensor(inp["grad_output"])).sum().backward()
    return {"loss": out.detach().numpy(), "grad_student_logits": s.grad.numpy()}


# ----------------------------------------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------------------------------------


def arr(x):
    return None if x is None else np.asarray(x.detach().cpu().to(torch.float64) if isinstance(x, torch.Tensor) else x,
                                             dtype=np.float64)


def max_rel(a, ref):
    """(max elementwise |a - ref| / |ref| over |ref| > 0, max |a - ref| / max(1e-300, max |ref|))."""
    a, ref = arr(a), arr(ref)
    diff = np.abs(a - ref)
    nz = np.abs(ref) > 0
    elem = float((diff[nz] / np.abs(ref[nz])).max()) if nz.any() else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    scaled = float(diff.max() / scale) if scale > 0 else float(diff.max()) if diff.size else 0.0
    return elem, scaled, float(diff.max()) if diff.size else 0.0


def assert_close(what, a, ref, rtol, atol, scaled):
    a, ref = arr(a), arr(ref)
    assert a.shape == ref.shape, f"{what}: shape {a.shape} vs {ref.shape}"
    at = atol * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0) if scaled else atol
    bad = np.abs(a - ref) > at + rtol * np.abs(ref)
    if bad.any():
        i = np.unravel_index(np.argmax(np.abs(a - ref) - rtol * np.abs(ref)), a.shape)
        raise AssertionError(f"{what}: {a[i]!r} vs {ref[i]!r} at {i} (rtol {rtol}, atol {at})")


def direction(beta: float) -> dict:
    if beta == 0.0:
        return {"divergence": "forward_kl", "kl_direction": "KL(teacher||student)",
                "formula": "sum_v p_t (log p_t - log p_s)"}
    if beta == 1.0:
        return {"divergence": "reverse_kl", "kl_direction": "KL(student||teacher)",
                "formula": "sum_v p_s (log p_s - log p_t)"}
    return {"divergence": "generalized_jsd",
            "kl_direction": "beta*KL(teacher||m) + (1-beta)*KL(student||m), m = (1-beta)*p_s + beta*p_t",
            "formula": "beta sum_v p_t (log p_t - log m) + (1 - beta) sum_v p_s (log p_s - log m)"}


def rule_out(name, beta, trl_loss, alts):
    """Each alternative convention's value, and whether TRL's loss is distinguishable from it (rel diff > 1e-3).

    Asserts that TRL's beta 0 is not the reverse KL and TRL's beta 1 not the forward KL (whenever they differ)."""
    out = {}
    for k, v in alts.items():
        scale = max(abs(v), abs(trl_loss))
        out[k] = {"value": v, "distinguishable_from_trl": bool(scale > 0 and abs(v - trl_loss) > 1e-3 * scale)}
    fk, rk = alts["forward_kl_teacher_student"], alts["reverse_kl_student_teacher"]
    if abs(fk - rk) > 1e-3 * max(abs(fk), abs(rk)):
        if beta == 0.0:
            assert out["reverse_kl_student_teacher"]["distinguishable_from_trl"], name
            assert abs(trl_loss - fk) <= 1e-4 * abs(fk) + 1e-6, name
        if beta == 1.0:
            assert out["forward_kl_teacher_student"]["distinguishable_from_trl"], name
            assert abs(trl_loss - rk) <= 1e-4 * abs(rk) + 1e-6, name
    return out


@contextlib.contextmanager
def chunk_sizes(vocab_chunk, token_chunk):
    old = CD.VOCAB_CHUNK_SIZE, CD.TOKEN_CHUNK_SIZE
    CD.VOCAB_CHUNK_SIZE, CD.TOKEN_CHUNK_SIZE = vocab_chunk, token_chunk
    try:
        yield
    finally:
        CD.VOCAB_CHUNK_SIZE, CD.TOKEN_CHUNK_SIZE = old


# ----------------------------------------------------------------------------------------------------------------------
# _chunked_divergence_loss cases
# ----------------------------------------------------------------------------------------------------------------------


def make_mask(rng, B, K, kind):
    if kind == "all_valid":
        return np.ones((B, K), np.int64)
    if kind == "all_masked":
        return np.zeros((B, K), np.int64)
    # completion masks: each row 1 up to its length, then padding; at least one padded position overall
    lengths = rng.integers(1, K + 1, size=B)
    if (lengths == K).all():
        lengths[-1] = K - 1
    return (np.arange(K)[None, :] < lengths[:, None]).astype(np.int64)


def fused_case(W, seed, name, *, beta, temperature=1.0, reduction="local_mean", B=2, K=4, Hs=8, Ht=None, V=16,
               student_bias=False, teacher_bias=False, s_scale=1.0, t_scale=1.0, s_cap=None, t_cap=None,
               mask="padded", hidden_std=1.0, nib_kind="tensor", identical=False, vocab_chunk=None,
               token_chunk=None):
    rng = case_rng(seed, name)
    Ht = Hs if Ht is None else Ht
    hs = q(rng.normal(size=(B, K, Hs)) * hidden_std)
    ws = q(rng.normal(size=(V, Hs)) * 0.6)
    bs = q(rng.normal(size=V) * 0.5) if student_bias else None
    if identical:
        ht, wt, bt = hs.copy(), ws.copy(), (None if bs is None else bs.copy())
    else:
        ht = q(rng.normal(size=(B, K, Ht)) * hidden_std)
        wt = q(rng.normal(size=(V, Ht)) * 0.6)
        bt = q(rng.normal(size=V) * 0.5) if teacher_bias else None
    cm = make_mask(rng, B, K, mask)
    n_valid = int(cm.sum())
    if reduction == "num_items_in_batch":
        # the generation batch's token count (all micro-batches / processes): larger than the local count
        nib_value = 2 * n_valid + 3
        nib = torch.tensor(float(nib_value)) if nib_kind == "tensor" else int(nib_value)
    else:
        nib_value, nib = None, None
    config = {"B": B, "K": K, "H_student": Hs, "H_teacher": Ht, "V": V, "beta": beta, **direction(beta),
              "temperature": temperature, "student_logit_scale": s_scale, "teacher_logit_scale": t_scale,
              "student_final_logit_softcapping": s_cap, "teacher_final_logit_softcapping": t_cap,
              "has_student_bias": student_bias, "has_teacher_bias": teacher_bias, "reduction": reduction,
              "num_items_in_batch_type": None if nib is None else ("tensor" if nib_kind == "tensor" else "int")}
    inputs = {"student_hidden": hs, "teacher_hidden": ht, "student_weight": ws, "teacher_weight": wt,
              "student_bias": bs, "teacher_bias": bt, "completion_mask": cm, "num_items_in_batch": nib_value}

    # --- TRL ---
    t_hs = torch.tensor(hs, requires_grad=True)
    t_ws = torch.tensor(ws, requires_grad=True)
    t_bs = None if bs is None else torch.tensor(bs, requires_grad=True)
    t_ht = torch.tensor(ht, requires_grad=True)
    t_wt = torch.tensor(wt, requires_grad=True)
    t_bt = None if bt is None else torch.tensor(bt, requires_grad=True)
    vc = CD.VOCAB_CHUNK_SIZE if vocab_chunk is None else vocab_chunk
    tc = CD.TOKEN_CHUNK_SIZE if token_chunk is None else token_chunk
    with chunk_sizes(vc, tc):
        loss, ent_sum, n_v = DT._chunked_divergence_loss(
            t_hs, t_ht, t_ws, t_wt, torch.tensor(cm), beta, num_items_in_batch=nib,
            student_lm_head_bias=t_bs, teacher_lm_head_bias=t_bt,
            student_logit_scale=s_scale, teacher_logit_scale=t_scale,
            student_final_logit_softcapping=s_cap, teacher_final_logit_softcapping=t_cap,
            temperature=temperature)
        loss.backward()
    assert t_ht.grad is None and t_wt.grad is None and (t_bt is None or t_bt.grad is None), "teacher got a gradient"
    assert int(n_v) == n_valid
    config.update({"internal_dtype": "float32", "input_dtype": "float64", "loss_dtype": str(loss.dtype)[6:],
                   "vocab_chunk_size": vc, "token_chunk_size": tc,
                   "chunk_sizes_patched": vocab_chunk is not None or token_chunk is not None,
                   "trl_path": "triton_compact" if _use_triton(t_hs.device) else "torch_tiles_masked_fill",
                   "teacher_receives_grad": False})
    expected = {"loss": loss, "entropy_sum": ent_sum, "n_valid": int(n_v), "grad_student_hidden": t_hs.grad,
                "grad_student_weight": t_ws.grad, "grad_student_bias": None if t_bs is None else t_bs.grad}

    # --- float64 formula, autograd cross-check, comparison with TRL ---
    ref, aux = fused_reference(config, inputs)
    ag = fused_autograd_check(config, inputs)
    for k in ("loss", "grad_student_hidden", "grad_student_weight", "grad_student_bias"):
        if ref[k] is not None:
            assert_close(f"{name}: autograd {k}", ag[k], ref[k], AUTOGRAD_RTOL, 1e-13, True)
    exact = bool(np.array_equal((torch.tensor(hs.reshape(-1, Hs)).float() @ torch.tensor(ws).float().T
                                 + (0 if bs is None else torch.tensor(bs).float())).double().numpy(), aux["raw_s"])
                 and np.array_equal((torch.tensor(ht.reshape(-1, Ht)).float() @ torch.tensor(wt).float().T
                                     + (0 if bt is None else torch.tensor(bt).float())).double().numpy(),
                                    aux["raw_t"]))
    check = {"projection_exact_in_float32": exact,
             "max_abs_student_logit": float(np.abs(aux["raw_s"]).max()),
             "max_abs_teacher_logit": float(np.abs(aux["raw_t"]).max())}
    rel = {}
    for k in ("loss", "entropy_sum", "grad_student_hidden", "grad_student_weight", "grad_student_bias"):
        if ref[k] is None:
            continue
        assert_close(f"{name}: TRL vs fp64 {k}", expected[k], ref[k], FUSED_RTOL, FUSED_ATOL_SCALED, True)
        e, s, a = max_rel(expected[k], ref[k])
        rel[k] = {"max_rel_elementwise": e, "max_abs_over_max_ref": s, "max_abs_diff": a}
    check["trl_vs_reference_fp64"] = rel
    check["other_conventions"] = rule_out(name, beta, float(loss), aux["alternatives"])
    check["autograd_vs_formula_max_abs_over_max_ref"] = max(
        max_rel(ag[k], ref[k])[1] for k in ("loss", "grad_student_hidden", "grad_student_weight"))
    expected["reference_fp64"] = ref
    W.emit("_chunked_divergence_loss", name, FUSED_SOURCE, config, inputs, expected, check)


def gen_fused(W, seed):
    betas = [0.0, 0.1, 0.5, 1.0]
    # grid: beta x temperature x reduction (no bias, padded completion masks)
    for beta in betas:
        for T in (1.0, 0.7, 2.0):
            for red in ("local_mean", "num_items_in_batch"):
                tag = "mean" if red == "local_mean" else "nib"
                fused_case(W, seed, f"fused_beta{beta}_T{T}_{tag}", beta=beta, temperature=T, reduction=red,
                           B=2 + int(T == 2.0), K=4, Hs=8, V=16 + 4 * betas.index(beta))
    # biases
    for beta in betas:
        fused_case(W, seed, f"fused_beta{beta}_bias", beta=beta, student_bias=True, teacher_bias=True, B=3, K=3,
                   Hs=6, V=20)
    fused_case(W, seed, "fused_beta0.5_student_bias_only", beta=0.5, student_bias=True, temperature=0.7, B=2, K=5,
               Hs=4, V=12, reduction="num_items_in_batch")
    fused_case(W, seed, "fused_beta1.0_teacher_bias_only", beta=1.0, teacher_bias=True, temperature=2.0, B=2, K=3,
               Hs=8, V=9)
    # logit scale + final-logit soft-capping on both models (different per model), with biases
    for beta in betas:
        fused_case(W, seed, f"fused_beta{beta}_scale_softcap", beta=beta, temperature=0.7, student_bias=True,
                   teacher_bias=True, s_scale=0.5, s_cap=3.0, t_scale=1.5, t_cap=5.0, hidden_std=2.0, B=2, K=4,
                   Hs=8, V=24, reduction="num_items_in_batch" if beta in (0.1, 1.0) else "local_mean")
    fused_case(W, seed, "fused_beta0.0_student_softcap_only", beta=0.0, s_cap=2.0, hidden_std=2.0, B=2, K=4, Hs=8,
               V=16)
    fused_case(W, seed, "fused_beta1.0_teacher_scale_only", beta=1.0, t_scale=0.25, temperature=1.3, B=2, K=4,
               Hs=8, V=16)
    # teacher wider than the student (only the vocabulary must match)
    fused_case(W, seed, "fused_beta0.5_teacher_wider", beta=0.5, Hs=4, Ht=16, V=20, B=2, K=4, teacher_bias=True)
    fused_case(W, seed, "fused_beta0.0_teacher_wider", beta=0.0, Hs=6, Ht=12, V=11, B=3, K=2,
               reduction="num_items_in_batch")
    # masks
    fused_case(W, seed, "fused_beta0.1_all_valid", beta=0.1, mask="all_valid", B=2, K=3, V=7, Hs=4)
    fused_case(W, seed, "fused_beta0.5_all_masked_mean", beta=0.5, mask="all_masked", B=2, K=3, V=10, Hs=4)
    fused_case(W, seed, "fused_beta1.0_all_masked_nib", beta=1.0, mask="all_masked", B=2, K=3, V=10, Hs=4,
               reduction="num_items_in_batch")
    fused_case(W, seed, "fused_beta0.0_nib_int", beta=0.0, reduction="num_items_in_batch", nib_kind="int", B=2,
               K=4, V=16)
    # large logits (|z| up to ~30-60)
    for beta in (0.0, 0.5, 1.0):
        fused_case(W, seed, f"fused_beta{beta}_large_logits", beta=beta, hidden_std=6.0, student_bias=True,
                   teacher_bias=True, B=2, K=4, Hs=8, V=24)
    # betas next to the endpoints (the JSD tends to beta*forward KL / (1-beta)*reverse KL there)
    fused_case(W, seed, "fused_beta0.001", beta=0.001, B=2, K=4, V=16)
    fused_case(W, seed, "fused_beta0.999", beta=0.999, B=2, K=4, V=16)
    # identical student and teacher: divergence and gradients 0 (TRL: float32 round-off)
    fused_case(W, seed, "fused_beta0.0_identical", beta=0.0, identical=True, student_bias=True, B=2, K=3, V=12)
    fused_case(W, seed, "fused_beta0.5_identical", beta=0.5, identical=True, B=2, K=3, V=12)
    # several vocabulary tiles (online logsumexp merge) and token chunks, V not a multiple of the tile
    for beta in (0.0, 0.5, 1.0):
        fused_case(W, seed, f"fused_beta{beta}_tiled_v8_t4", beta=beta, vocab_chunk=8, token_chunk=4,
                   temperature=0.8, student_bias=True, teacher_bias=True, s_cap=4.0, t_cap=4.0, B=3, K=4, Hs=8,
                   V=37, reduction="num_items_in_batch" if beta == 0.5 else "local_mean")


# ----------------------------------------------------------------------------------------------------------------------
# generalized_jsd_loss cases
# ----------------------------------------------------------------------------------------------------------------------


def make_labels(rng, B, T, V, kind):
    if kind == "null":
        return None
    lab = rng.integers(0, V, size=(B, T)).astype(np.int64)
    if kind == "all_masked":
        return np.full((B, T), -100, np.int64)
    if kind == "all_valid":
        return lab
    # prompt prefix and right padding are -100
    for b in range(B):
        p = int(rng.integers(0, max(1, T // 2)))
        end = int(rng.integers(p + 1, T + 1))
        lab[b, :p] = -100
        lab[b, end:] = -100
    if (lab != -100).all():
        lab[-1, -1] = -100
    return lab


def gkd_case(W, seed, name, *, beta, temperature=1.0, reduction="batchmean", labels="padded", nib=False, B=2, T=4,
             V=16, logit_std=2.0, flat=False):
    rng = case_rng(seed, name)
    s = q(rng.normal(size=(B, T, V)) * logit_std)
    t = q(rng.normal(size=(B, T, V)) * logit_std)
    lab = make_labels(rng, B, T, V, labels)
    if flat:  # [N, V] logits with [N] labels, as GOLD's caller reshapes them
        s, t = s.reshape(B * T, V), t.reshape(B * T, V)
        lab = None if lab is None else lab.reshape(B * T)
    n_valid = int((lab != -100).sum()) if lab is not None else B * T
    nib_value = 2 * n_valid + 1 if nib else None
    config = {"shape": list(s.shape), "V": V, "beta": beta, **direction(beta), "temperature": temperature,
              "reduction": reduction, "has_labels": lab is not None,
              "num_items_in_batch_given": nib, "dtype": "float64", "teacher_requires_grad": False}
    # --- TRL ---
    ts = torch.tensor(s, requires_grad=True)
    tt = torch.tensor(t)  # GKDTrainer.compute_loss runs the teacher under no_grad
    out = GKDTrainer.generalized_jsd_loss(ts, tt, labels=None if lab is None else torch.tensor(lab), beta=beta,
                                          temperature=temperature, reduction=reduction,
                                          num_items_in_batch=None if nib_value is None
                                          else torch.tensor(float(nib_value)))
    inputs = {"student_logits": s, "teacher_logits": t, "labels": lab, "num_items_in_batch": nib_value}
    if out.dim() == 0:
        inputs["grad_output"] = None
        out.backward()
    else:
        go = q(rng.normal(size=tuple(out.shape)))
        inputs["grad_output"] = go
        (out * torch.tensor(go)).sum().backward()
    if not torch.isfinite(out).all():
        raise SkipCase(f"TRL returned {out.detach().tolist()} (reduction={reduction!r}, labels={labels})")
    config["output_shape"] = list(out.shape)
    expected = {"loss": out, "grad_student_logits": ts.grad}
    # --- float64 formula ---
    ref, alts = gkd_reference(config, inputs)
    ag = gkd_autograd(config, inputs)
    assert_close(f"{name}: autograd loss", ag["loss"], ref["loss"], AUTOGRAD_RTOL, 1e-13, True)
    if ref["grad_student_logits"] is None:  # reduction none: gradient from autograd on the formula
        ref["grad_student_logits"] = ag["grad_student_logits"]
        grad_src = "float64 autograd of sum(grad_output * elementwise formula)"
    else:
        assert_close(f"{name}: autograd grad", ag["grad_student_logits"], ref["grad_student_logits"], AUTOGRAD_RTOL,
                     1e-13, True)
        grad_src = "hand-derived (checked against float64 autograd)"
    check = {"reference_grad": grad_src}
    rel = {}
    for k in ("loss", "grad_student_logits"):
        assert_close(f"{name}: TRL vs fp64 {k}", expected[k], ref[k], GKD_RTOL, GKD_ATOL, True)
        e, sc, a = max_rel(expected[k], ref[k])
        rel[k] = {"max_rel_elementwise": e, "max_abs_over_max_ref": sc, "max_abs_diff": a}
    check["trl_vs_reference_fp64"] = rel
    if alts is not None:
        check["other_conventions"] = rule_out(name, config["beta"], float(out), alts)
    expected["reference_fp64"] = ref
    W.emit("generalized_jsd_loss", name, GKD_SOURCE, config, inputs, expected, check)


def gen_gkd(W, seed):
    betas = [0.0, 0.1, 0.5, 1.0]
    for beta in betas:
        for T in (1.0, 0.7, 2.0):
            gkd_case(W, seed, f"gkd_beta{beta}_T{T}_batchmean", beta=beta, temperature=T, B=2 + int(T == 0.7), T=4,
                     V=12 + 4 * betas.index(beta))
    for beta in betas:
        gkd_case(W, seed, f"gkd_beta{beta}_sum", beta=beta, reduction="sum", temperature=1.0, V=10)
        gkd_case(W, seed, f"gkd_beta{beta}_mean", beta=beta, reduction="mean", temperature=0.7, V=10)
        gkd_case(W, seed, f"gkd_beta{beta}_none", beta=beta, reduction="none", temperature=2.0, B=2, T=3, V=8)
        gkd_case(W, seed, f"gkd_beta{beta}_nib", beta=beta, nib=True, temperature=0.7, V=14)
    gkd_case(W, seed, "gkd_beta0.5_sum_nib_overrides", beta=0.5, reduction="sum", nib=True, V=10)
    # no labels: batchmean divides by logits.size(0) (= B for [B, T, V]), mean by B*T*V
    gkd_case(W, seed, "gkd_beta0.5_nolabels_batchmean", beta=0.5, labels="null", B=3, T=4, V=10)
    gkd_case(W, seed, "gkd_beta0.0_nolabels_batchmean", beta=0.0, labels="null", B=2, T=5, V=10, temperature=0.7)
    gkd_case(W, seed, "gkd_beta1.0_nolabels_mean", beta=1.0, labels="null", reduction="mean", B=2, T=3, V=9)
    gkd_case(W, seed, "gkd_beta0.1_nolabels_none", beta=0.1, labels="null", reduction="none", B=2, T=2, V=7)
    gkd_case(W, seed, "gkd_beta0.5_all_valid_batchmean", beta=0.5, labels="all_valid", B=2, T=3, V=12)
    # all positions ignored
    gkd_case(W, seed, "gkd_beta0.5_all_masked_batchmean", beta=0.5, labels="all_masked", B=2, T=3, V=8)
    gkd_case(W, seed, "gkd_beta1.0_all_masked_sum", beta=1.0, labels="all_masked", reduction="sum", B=2, T=3, V=8)
    try:
        gkd_case(W, seed, "gkd_beta0.5_all_masked_mean", beta=0.5, labels="all_masked", reduction="mean", B=2, T=3,
                 V=8)
    except SkipCase as e:
        W.skipped.append(f"{GROUP}/gkd_beta0.5_all_masked_mean: {e}")
    # next to the endpoints
    gkd_case(W, seed, "gkd_beta0.001_batchmean", beta=0.001, V=16)
    gkd_case(W, seed, "gkd_beta0.999_batchmean", beta=0.999, V=16)
    # flattened [N, V] logits with [N] labels
    gkd_case(W, seed, "gkd_beta0.5_flat_batchmean", beta=0.5, flat=True, B=3, T=3, V=11, temperature=0.7)
    gkd_case(W, seed, "gkd_beta0.1_flat_nolabels_batchmean", beta=0.1, flat=True, labels="null", B=2, T=3, V=9)
    # large logits
    gkd_case(W, seed, "gkd_beta0.5_large_logits", beta=0.5, logit_std=20.0, V=24)
    gkd_case(W, seed, "gkd_beta0.0_large_logits", beta=0.0, logit_std=20.0, V=24)
    gkd_case(W, seed, "gkd_beta1.0_large_logits", beta=1.0, logit_std=20.0, V=24)


# ----------------------------------------------------------------------------------------------------------------------


def summarise(W):
    """TRL vs the float64 formula, per function and array: the median and worst of each case's max elementwise
    relative difference (loss) / max |diff| / max |ref| (arrays). Cases whose reference is ~0 (identical student and
    teacher, everything masked) are left out of the relative figures and listed with their absolute differences."""
    lines = []
    for fn in ("_chunked_divergence_loss", "generalized_jsd_loss"):
        per = defaultdict(list)
        for f, case, config, check in W.stats:
            if f != fn:
                continue
            degenerate = "identical" in case or "all_masked" in case
            for k, v in check["trl_vs_reference_fp64"].items():
                metric = v["max_rel_elementwise"] if k in ("loss", "entropy_sum") else v["max_abs_over_max_ref"]
                if degenerate:
                    if k == "loss":
                        lines.append(f"{fn:26s} {case}: reference ~0, loss |TRL - fp64| = {v['max_abs_diff']:.2e}")
                    continue
                per[k].append((metric, case))
        for k, vals in per.items():
            vals.sort()
            what = "rel" if k in ("loss", "entropy_sum") else "max|diff|/max|ref|"
            lines.append(f"{fn:26s} {k:20s} {what:18s} median {vals[len(vals) // 2][0]:.2e}  max {vals[-1][0]:.2e}"
                         f" ({vals[-1][1]})")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "fixtures", GROUP))
    ap.add_argument("--no-manifest", action="store_true", help="do not update OUT/../manifest.json")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):  # drop stale cases
        if f.endswith(".json"):
            os.remove(os.path.join(args.out, f))
    W = Writer(args.out)
    t0 = time.time()
    gen_fused(W, args.seed)
    gen_gkd(W, args.seed)
    for fn, names in W.cases.items():
        print(f"{fn:26s} {len(names):4d} cases", file=sys.stderr)
    for line in summarise(W):
        print(line, file=sys.stderr)
    print(f"total {sum(len(v) for v in W.cases.values())} cases, {W.bytes / 1e6:.3f} MB, {time.time() - t0:.1f}s; "
          f"not covered {len(W.skipped)}: {W.skipped}", file=sys.stderr)

    if not args.no_manifest:
        versions = {"trl": TRL_VERSION, "torch": TORCH_VERSION}
        for pkg in ("transformers", "numpy"):
            versions[pkg] = importlib.metadata.version(pkg)
        versions["python"] = ".".join(map(str, sys.version_info[:3]))
        path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "manifest.json")
        manifest = {}
        if os.path.exists(path):
            with open(path) as f:
                manifest = json.load(f)
        manifest.setdefault("groups", {})[GROUP] = sorted(n for v in W.cases.values() for n in v)
        manifest["skipped"] = [s for s in manifest.get("skipped", []) if not s.startswith(GROUP + "/")] + W.skipped
        manifest.setdefault("generators", {})["scripts/gen_distill_fixtures.py"] = dict(
            groups=[GROUP], seed=args.seed, default_dtype="float64", versions=versions)
        with open(path, "w") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
        print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
