#!/usr/bin/env bash
# The README's performance tables, reproduced: the crate's table examples and the peers'
# benchmark (torch_bench.py: torch, TRL, torchtune) alternated in one run, two rounds, on the
# same CPU and thread count. Usage (from the repository root):
#   benches/peers/side_by_side.sh PYTHON [THREADS]
# PYTHON: a Python with the packages of benches/peers/requirements.txt (e.g. venv/bin/python).
# THREADS: torch's thread count, default the number of CPUs (the crate uses all of them).
set -euo pipefail
py=${1:?usage: side_by_side.sh PYTHON [THREADS]}
threads=${2:-$(nproc)}
here=$(dirname "$0")
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs," \
  "AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no); torch threads: $threads"
cargo build --release --features flex --example logps_bench --example fused_bench --example distill_bench
for round in 1 2; do
  echo "=== round $round"
  cargo run -q --release --features flex --example logps_bench
  "$py" "$here/torch_bench.py" gather --threads "$threads"
  cargo run -q --release --features flex --example fused_bench -- --dpo-step
  "$py" "$here/torch_bench.py" fused --threads "$threads"
  # Distillation at V = 128000 (about 25 s for the crate, 100 s for TRL with its warm-up run).
  for beta in 0.5 1.0; do
    cargo run -q --release --features flex --example distill_bench -- --beta "$beta"
    "$py" "$here/torch_bench.py" distill --only trl --threads "$threads" --beta "$beta"
  done
done
