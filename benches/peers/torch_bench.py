"""Peer baselines on this machine's CPU: torch naive gather, TRL fused chunked log-probs, torchtune GAE.

Run: <venv>/bin/python torch_bench.py [gather|fused|gae|all] [options]. Prints median ms per measurement.

Measurements (names for --only):
  gather: naive (torch log_softmax+gather fwd+bwd), trl (TRL selective_log_softmax fwd+bwd)
  fused:  trl (TRL ChunkedLogProbFunction fwd+bwd), gemm (the 4 GEMMs it does), materialized (logits + gather)
  gae:    torchtune (torchtune estimate_advantages)
Options: --only NAME[,NAME] runs those measurements only; --reps/--warm override the repetitions; --threads N
calls torch.set_num_threads(N); shapes: --b --t --v (gather), --n --h --v (fused), --gae-b --gae-t (gae).
--json: stdout gets one JSON object per line ({"bench", "name", "shape", "median_ms", "min_ms", "times_ms"},
first a {"torch", "threads"} header); the human-readable lines go to stderr.
"""
import argparse, json, os, statistics, sys, time
import torch

torch.manual_seed(0)
ARGS = None


def say(line):
    print(line, file=sys.stderr if ARGS.json else sys.stdout, flush=True)


def record(bench, name, shape, ts_ms):
    if ARGS.json:
        print(json.dumps(dict(bench=bench, name=name, shape=shape, median_ms=statistics.median(ts_ms),
                              min_ms=min(ts_ms), times_ms=[round(t, 3) for t in ts_ms])), flush=True)


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


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["gather", "fused", "gae", "all"])
    ap.add_argument("--only", type=lambda s: {x.strip() for x in s.split(",") if x.strip()}, default=None)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 5 gather/gae, 3 fused)")
    ap.add_argument("--warm", type=int, default=None, help="untimed warm-up runs (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--b", type=int, default=4); ap.add_argument("--t", type=int, default=512)
    ap.add_argument("--v", type=int, default=32000)
    ap.add_argument("--n", type=int, default=2048); ap.add_argument("--h", type=int, default=1024)
    ap.add_argument("--gae-b", type=int, default=64); ap.add_argument("--gae-t", type=int, default=1024)
    ARGS = ap.parse_args()
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    say(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if ARGS.json:
        print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads())), flush=True)
    for name in ["gather", "fused", "gae"]:
        if ARGS.what in (name, "all"):
            globals()[name]()


if __name__ == "__main__":
    main()
