#!/usr/bin/env bash
# GPU check for maintainers: run on a machine with an NVIDIA GPU, the CUDA driver, and network
# access for cubecl-llvm's build script (it downloads LLVM; CI machines cannot, which is why CI
# only type-checks CUDA with DOCS_RS=1). Prints one summary table at the end.
#
#   scripts/gpu-check.sh            # test suite on CUDA + log-prob benchmarks on CUDA
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
out=$(mktemp -d)
status() { if [ "$1" -eq 0 ]; then echo ok; else echo "FAILED ($1)"; fi; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

echo "== test suite on CUDA (same bodies as flex/wgpu; f32 tolerances where f64 is unsupported)"
BURN_RLHF_TEST_DEVICES=cuda cargo test --release --features cuda 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== token log-probs (lean op vs log_softmax+gather), B=4 T=512 V=32000"
cargo run --release --features cuda --example logprobs_bench -- --device cuda 2>&1 | tee "$out/logprobs.log"
logprobs_rc=${PIPESTATUS[0]}

echo "== fused LM-head log-probs, N=2048 H=1024 V=32000 and V=128000"
cargo run --release --features cuda --example fused_bench -- --device cuda 2>&1 | tee "$out/fused.log"
fused_rc=${PIPESTATUS[0]}
cargo run --release --features cuda --example fused_bench -- --device cuda --v 128000 --skip-materialized 2>&1 | tee "$out/fused128k.log"

echo
echo "================ summary ================"
printf '%-34s %s\n' "GPU" "$(cat "$out/gpu.txt")"
printf '%-34s %s  %s\n' "test suite on cuda" "$(status "$tests_rc")" "$(grep -h 'test result' "$out/tests.log" | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')"
printf '%-34s %s\n' "logprobs bench" "$(status "$logprobs_rc")"
grep -hE '^(naive|lean)' "$out/logprobs.log" | sed 's/^/    /'
printf '%-34s %s\n' "fused bench" "$(status "$fused_rc")"
grep -hE '^\((a|b|c)\)|^fused' "$out/fused.log" "$out/fused128k.log" | sed 's/^/    /'
echo "(peak-memory columns count host heap only; on CUDA read time, and device memory from nvidia-smi)"
