#!/usr/bin/env bash
# GPU check for maintainers: run on a machine with a GPU. Runs the log-prob benchmarks (and,
# unless QUICK=1, the device-parametrized tests) through wgpu over the GPU's Vulkan driver and
# through CUDA. CUDA needs network access for cubecl-llvm's build script (it downloads LLVM);
# where that fails the CUDA half is reported as "could not build" and the wgpu half still runs.
# Prints one summary table at the end: fused op vs bare GEMMs vs materialized logits, the
# ignored-rows ratio, the DPO step, the lean gather vs the naive path, per backend.
#
#   scripts/gpu-check.sh              # wgpu (Vulkan) + CUDA: tests + benchmarks
#   QUICK=1 scripts/gpu-check.sh      # benchmarks only
#   BACKENDS=wgpu scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
out=$(mktemp -d)
status() { if [ "$1" -eq 0 ]; then echo ok; else echo "FAILED ($1)"; fi; }

(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
  echo "no nvidia-smi") | tee "$out/gpu.txt"
(vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" | head -4) | tee "$out/vulkan.txt"

for backend in ${BACKENDS:-wgpu cuda}; do
  echo "== [$backend] build"
  if ! cargo build --release --features "$backend" --example logps_bench --example fused_bench \
      >"$out/$backend-build.log" 2>&1; then
    echo "could not build" >"$out/$backend-status.txt"
    tail -5 "$out/$backend-build.log"
    continue
  fi
  echo built >"$out/$backend-status.txt"
  if [ "${QUICK:-0}" != 1 ]; then
    echo "== [$backend] device-parametrized tests"
    BURN_RLHF_TEST_DEVICES=$backend BURN_RLHF_PROPTEST_CASES=4 cargo test --release \
      --features "$backend" --test parity --test logps --test losses \
      -- parity token_logps:: fused:: precision:: reward:: dpo_properties:: 2>&1 | tee "$out/$backend-tests.log"
    echo "${PIPESTATUS[0]}" >"$out/$backend-tests.rc"
  fi
  bin=target/release/examples
  echo "== [$backend] token log-probs (lean op vs log_softmax+gather), B=4 T=512 V=32000"
  "$bin/logps_bench" --device "$backend" 2>&1 | tee "$out/$backend-logps.log"
  echo "== [$backend] fused LM-head log-probs, N=2048 H=1024 V=32000 (+ ignored rows, DPO step)"
  "$bin/fused_bench" --device "$backend" --dpo-step 2>&1 | tee "$out/$backend-fused.log"
  echo "== [$backend] fused LM-head log-probs, V=128000"
  "$bin/fused_bench" --device "$backend" --v 128000 --skip-materialized 2>&1 |
    tee "$out/$backend-fused128k.log"
done

echo
echo "================ summary ================"
printf '%-28s %s\n' "GPU" "$(cat "$out/gpu.txt")"
printf '%-28s %s\n' "Vulkan" "$(tr '\n' ' ' <"$out/vulkan.txt")"
for backend in ${BACKENDS:-wgpu cuda}; do
  printf '%-28s %s\n' "[$backend]" "$(cat "$out/$backend-status.txt")"
  [ "$(cat "$out/$backend-status.txt")" = built ] || continue
  if [ -f "$out/$backend-tests.rc" ]; then
    printf '    %-24s %s  %s\n' "tests" "$(status "$(cat "$out/$backend-tests.rc")")" \
      "$(grep -h 'test result' "$out/$backend-tests.log" | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')"
  fi
  grep -hE '^(naive|lean)' "$out/$backend-logps.log" | sed 's/^/    /'
  grep -hE '^\((a|a-i|a.|b|c)\)|^fused|ignored|^DPO|^  (fused op|materialized)' \
    "$out/$backend-fused.log" "$out/$backend-fused128k.log" | sed 's/^/    /'
done
echo "(peak-memory columns count host heap only; on a GPU read the times, and device memory from nvidia-smi)"
