"""Peer baselines on this machine's CPU: torch naive gather, TRL fused chunked log-probs, torchtune GAE,
TRL chunked distillation divergence.

Run: <venv>/bin/python torch_bench.py [gather|fused|gae|distill|all] [options]. Prints median ms per measurement.

Measurements (names for --only):
  gather:  naive (torch log_softmax+gather fwd+bwd), trl (TRL selective_log_softmax fwd+bwd)
  fused:   trl (TRL ChunkedLogProbFunction fwd+bwd), gemm (the 4 GEMMs it does), materialized (logits + gather)
  gae:     torchtune (torchtune estimate_advantages)
  distill: trl (TRL 1.16 trl.trainer.distillation_trainer._chunked_divergence_loss fwd+bwd), materialized
           (student and teacher logits `hidden @ weight.T`, log_softmax and the same generalized JSD in torch ops,
           fwd+bwd). Student hidden [1, N, H] and student lm_head weight [V, H] require grad; the teacher's
           ([1, N, H], [V, H]) do not; no biases, temperature 1.0, completion_mask all ones [1, N], mean over
           the valid positions (num_items_in_batch None). beta 0 = forward KL(teacher || student), 1 = reverse
           KL, in between the generalized JSD with mixture (1 - beta) p_student + beta p_teacher (TRL's).
Options: --only NAME[,NAME] runs those measurements only; --reps/--warm override the repetitions; --threads N
calls torch.set_num_threads(N); shapes: --b --t --v (gather), --n --h --v (fused), --gae-b --gae-t (gae),
--n --h --distill-v and --beta (distill: H is both the student's and the teacher's width).
distill defaults to 1 timed rep (V=128000 is slow on few cores) and also reports the peak extra resident
memory of one fwd+bwd (--no-mem skips it): that run is the warm-up, made after malloc_trim(0) and a reset of
the kernel's RSS high-water mark (writing 5 to /proc/self/clear_refs, Linux >= 4.0), as VmHWM minus VmRSS just
before the run (/proc/self/status). It counts resident pages only (what is allocated and touched), includes
the gradients (student hidden and weight, fp32) and anything the run leaves alive, and lazy one-time
initialization (thread pools) of the first run; memory glibc or torch keeps cached from before the reset and
reuses is not seen (malloc_trim returns glibc's free heap pages first, so this is small). Without clear_refs
the memory is not reported.
--json: stdout gets one JSON object per line ({"bench", "name", "shape", "median_ms", "min_ms", "times_ms"},
plus "peak_extra_mib" for distill with memory, first a {"torch", "threads"} header); the human-readable lines
go to stderr.
"""
import argparse, json, math, os, statistics, sys, time
import torch

torch.manual_seed(0)
ARGS = None


def say(line):
    print(line, file=sys.stderr if ARGS.json else sys.stdout, flush=True)


def record(bench, name, shape, ts_ms, **extra):
    if ARGS.json:
        print(json.dumps(dict(bench=bench, name=name, shape=shape, median_ms=statistics.median(ts_ms),
                              min_ms=min(ts_ms), times_ms=[round(t, 3) for t in ts_ms], **extra)), flush=True)


def med(fn, reps=5, warm=1):
    reps = ARGS.reps or reps
    warm = ARGS.warm if ARGS.warm is not None else warm
    for _ in range(warm): fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    return ts


def wanted(name):
    return ARGS.only is None or name in ARGS.only


def gather():
    B, T, V = ARGS.b, ARGS.t, ARGS.v
    shape = dict(B=B, T=T, V=V)
    logits = torch.randn(B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    if wanted("naive"):
        def run():
            lp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            lp.sum().backward(); logits.grad = None
        ts = med(run)
        say(f"torch naive log_softmax+gather fwd+bwd B={B} T={T} V={V}: median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        record("gather", "naive", shape, ts)
    if wanted("trl"):
        from trl.trainer.utils import selective_log_softmax
        def run2():
            lp = selective_log_softmax(logits, labels); lp.sum().backward(); logits.grad = None
        ts = med(run2)
        say(f"trl selective_log_softmax fwd+bwd: median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        record("gather", "trl", shape, ts)


def fused():
    N, H, V = ARGS.n, ARGS.h, ARGS.v
    shape = dict(N=N, H=H, V=V)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) * 0.02).requires_grad_()
    targets = torch.randint(0, V, (N,))
    if wanted("trl"):
        from trl.kernels import ChunkedLogProbFunction
        def run():
            lp, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 4096, None, 1.0, ())
            lp.sum().backward(); hidden.grad = None; weight.grad = None
        ts = med(run, reps=3)
        say(f"trl ChunkedLogProbFunction fwd+bwd N={N} H={H} V={V}: median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        record("fused", "trl", shape, ts)
    if wanted("gemm"):
        def gemms():
            with torch.no_grad():
                z = hidden @ weight.t(); z2 = hidden @ weight.t()
                gh = z2 @ weight; gw = z2.t() @ hidden
        ts = med(gemms, reps=3)
        say(f"torch 4 GEMMs (fwd, recompute, dh, dW): median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        record("fused", "gemm", shape, ts)
    if wanted("materialized"):
        def naive():
            logits = hidden @ weight.t()
            lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            lp.sum().backward(); hidden.grad = None; weight.grad = None
        ts = med(naive, reps=3)
        say(f"torch materialized logits + log_softmax+gather fwd+bwd: median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        record("fused", "materialized", shape, ts)


def torchtune_rlhf():
    """torchtune.rlhf without running torchtune/__init__.py (which hard-requires torchao and
    imports the whole model stack; the rlhf functions need only torch)."""
    import importlib, importlib.util, types
    spec = importlib.util.find_spec("torchtune")
    if spec is None:
        sys.exit("torchtune is not installed: pip install --no-deps torchtune==0.6.1")
    if "torchtune" not in sys.modules:
        root = list(spec.submodule_search_locations)
        pkg = types.ModuleType("torchtune")
        pkg.__path__ = root
        sys.modules["torchtune"] = pkg
        data = types.ModuleType("torchtune.data")
        data.__path__ = [os.path.join(root[0], "data")]
        sys.modules["torchtune.data"] = data
        common = importlib.import_module("torchtune.data._common")
        data.CROSS_ENTROPY_IGNORE_IDX = common.CROSS_ENTROPY_IGNORE_IDX
        pkg.data = data
    return importlib.import_module("torchtune.rlhf")


def gae():
    if not wanted("torchtune"):
        return
    estimate_advantages = torchtune_rlhf().estimate_advantages
    B, T = ARGS.gae_b, ARGS.gae_t
    values = torch.randn(B, T); rewards = torch.randn(B, T); masks = torch.ones(B, T, dtype=torch.bool)
    ts = med(lambda: estimate_advantages(values, rewards, 1.0, 0.95, masks))
    say(f"torchtune estimate_advantages B={B} T={T}: median {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
    record("gae", "torchtune", dict(B=B, T=T), ts)


def proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_extra_mib(fn):
    """Runs fn once; returns the peak resident memory above the resident memory just before, in MiB, or None
    where the high-water mark cannot be reset (see the docstring for what it counts)."""
    import ctypes, gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = proc_status_kib("VmRSS")
        if proc_status_kib("VmHWM") > before + 1024:  # the reset did not take
            raise OSError("VmHWM not reset")
    except (OSError, AttributeError):  # no glibc, no clear_refs, or the reset did not take
        fn()
        return None
    fn()
    return (proc_status_kib("VmHWM") - before) / 1024


def gjsd_materialized(s_logits, t_logits, beta, temperature, mask):
    """TRL's per-token divergence (ChunkedDivergenceFunction) over materialized [N, V] logits, mean over valid."""
    log_ps = torch.log_softmax(s_logits / temperature, -1)
    log_pt = torch.log_softmax(t_logits / temperature, -1)
    if beta == 0.0:
        per_token = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    elif beta == 1.0:
        per_token = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    else:
        log_m = torch.logaddexp(log_ps + math.log(1 - beta), log_pt + math.log(beta))
        per_token = (beta * log_pt.exp() * (log_pt - log_m) + (1 - beta) * log_ps.exp() * (log_ps - log_m)).sum(-1)
    valid = mask.reshape(-1) != 0
    return per_token.masked_fill(~valid, 0).sum() / valid.sum().clamp(min=1)


def distill():
    N, H, V, beta = ARGS.n, ARGS.h, ARGS.distill_v, ARGS.beta
    shape = dict(N=N, H=H, V=V, beta=beta)
    s_hidden = torch.randn(1, N, H, requires_grad=True)
    s_weight = (torch.randn(V, H) * 0.02).requires_grad_()
    t_hidden = torch.randn(1, N, H)
    t_weight = torch.randn(V, H) * 0.02
    mask = torch.ones(1, N, dtype=torch.long)
    out = {}

    def measure(name, what, fn):
        mem = None
        if ARGS.no_mem:
            ts = med(fn, reps=1)
        else:
            mem = peak_extra_mib(fn)  # also the warm-up run
            ts = med(fn, reps=1, warm=0)
        extra = "" if mem is None else f", peak extra RSS {mem:.0f} MiB"
        say(f"{what} N={N} H={H} V={V} beta={beta}: median {statistics.median(ts):.1f} ms (min {min(ts):.1f}), "
            f"loss {out['loss']:.6f}{extra}")
        record("distill", name, shape, ts, **({} if mem is None else dict(peak_extra_mib=round(mem, 1))))

    if wanted("trl"):
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
        def run():
            loss, _entropy_sum, _n_valid = _chunked_divergence_loss(
                s_hidden, t_hidden, s_weight, t_weight, mask, beta, num_items_in_batch=None, temperature=1.0)
            loss.backward(); out["loss"] = loss.item(); s_hidden.grad = None; s_weight.grad = None
        measure("trl", "trl _chunked_divergence_loss fwd+bwd", run)
    if wanted("materialized"):
        def naive():
            s_logits = s_hidden.reshape(N, H) @ s_weight.t()
            t_logits = t_hidden.reshape(N, H) @ t_weight.t()
            loss = gjsd_materialized(s_logits, t_logits, beta, 1.0, mask)
            loss.backward(); out["loss"] = loss.item(); s_hidden.grad = None; s_weight.grad = None
        measure("materialized", "torch materialized logits + log_softmax + generalized JSD fwd+bwd", naive)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["gather", "fused", "gae", "distill", "all"])
    ap.add_argument("--only", type=lambda s: {x.strip() for x in s.split(",") if x.strip()}, default=None)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 5 gather/gae, 3 fused, 1 distill)")
    ap.add_argument("--warm", type=int, default=None, help="untimed warm-up runs (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--b", type=int, default=4); ap.add_argument("--t", type=int, default=512)
    ap.add_argument("--v", type=int, default=32000)
    ap.add_argument("--n", type=int, default=2048); ap.add_argument("--h", type=int, default=1024)
    ap.add_argument("--gae-b", type=int, default=64); ap.add_argument("--gae-t", type=int, default=1024)
    ap.add_argument("--distill-v", type=int, default=128000, help="vocabulary of distill (default 128000)")
    ap.add_argument("--beta", type=float, default=0.5, help="distill: TRL's beta in [0, 1] (default 0.5)")
    ap.add_argument("--no-mem", action="store_true", help="distill: skip the peak-memory run (a plain warm-up)")
    ARGS = ap.parse_args()
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    say(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if ARGS.json:
        print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads())), flush=True)
    for name in ["gather", "fused", "gae", "distill"]:
        if ARGS.what in (name, "all"):
            globals()[name]()


if __name__ == "__main__":
    main()
