#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds loupe (nvcc fatbins included), runs the CUDA kernel check
# and the GPU tests (the kernel check on the device, and every module's tests that honour
# -Dloupe.gpu=true: the fixture suite (logits, hooks, gradients, Jacobians, generation), whose tests run
# on the backends of loupe.engine.TestBackends: cpu, emulated and, here, cuda), then the JMH GPU
# benchmarks if any exist, and prints a short table.
# Usage: bench/gpu-check.sh   (from anywhere; needs nvcc, g++, mvn)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export LOUPE_GPU=1
log="$root/target/gpu-check"; mkdir -p "$log"
rows=()
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }

gpu="$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null | head -1)"
row "GPU" "${gpu:-none found by nvidia-smi}"
row "nvcc" "$(nvcc --version 2>/dev/null | tail -1 || echo 'not on PATH')"

start=$(date +%s)
if mvn -B -q install -DskipTests > "$log/build.txt" 2>&1; then
  row "build (mvn install -DskipTests)" "ok in $(( $(date +%s) - start )) s; $(cat kernels/target/cuda/build-time.txt 2>/dev/null || echo 'no nvcc step')"
else
  row "build" "FAILED (see $log/build.txt)"; printf '%s\n' "${rows[@]}"; exit 1
fi
spills="$(grep -h 'spill' kernels/target/cuda/ptxas-report.txt 2>/dev/null | grep -v ' 0 bytes spill stores, 0 bytes spill loads' | wc -l)"
row "ptxas (kernels/target/cuda)" "$spills function(s) with register spills"

summarize() {  # surefire reports of one module -> "run N, failed N, skipped N"
  awk -F'[,:]' '/Tests run:/ {r+=$2; f+=$4; e+=$6; s+=$8} END {printf "run %d, failed %d, skipped %d", r, f+e, s}' "$1"/target/surefire-reports/*.txt 2>/dev/null
}
mvn -B -pl kernels test -Dloupe.gpu=true -Dtest='Cuda*' -Dsurefire.failIfNoSpecifiedTests=false > "$log/kernels-tests.txt" 2>&1
row "kernels: Cuda* tests on GPU" "$(summarize kernels)"
# the GPU check's own lines: from "kernel check on CudaBackend[cuda..." to its summary line
awk '/^kernel check on CudaBackend\[cuda/ {on=1} on {print} on && /^[0-9]+ kernels, / {on=0}' "$log/kernels-tests.txt" > "$log/kernel-check-cuda.txt"
check="$(grep -E '^[0-9]+ kernels, ' "$log/kernel-check-cuda.txt" | tail -1)"
row "kernel check (cuda vs cpu)" "${check:-not run (see $log/kernels-tests.txt)}"
worst="$(awk '{for(i=1;i<=NF;i++) if($i=="err") print $(i+1), $1}' "$log/kernel-check-cuda.txt" | sort -g | tail -1)"
row "worst relative error (kernel)" "${worst:-n/a}"

failed=0
for m in engine interp; do
  [[ -d "$m" ]] || continue
  mvn -B -pl "$m" test -Dloupe.gpu=true > "$log/$m-tests.txt" 2>&1 || failed=1
  row "$m tests with -Dloupe.gpu=true" "$(summarize "$m")"
done
# The fixture tests print one line per case and backend, "cuda <case>: ... err <x>" (or "worst <x>"),
# and "skipped CUDA variants: <reason>" when the cuda variants did not run.
fixture_rows="$(cat "$log"/engine-tests.txt "$log"/interp-tests.txt 2>/dev/null | grep -E '^cuda ')"
skip_reason="$(cat "$log"/engine-tests.txt "$log"/interp-tests.txt 2>/dev/null | grep -m1 '^skipped CUDA variants' )"
if [[ -n "$fixture_rows" ]]; then
  worst="$(awk '{for(i=1;i<NF;i++) if($i=="err" || $i=="worst") {v=$(i+1); gsub(/[;,]/,"",v); if (v ~ /^[0-9.]+(e[-+]?[0-9]+)?$/ && v+0 > w) {w=v+0; c=$2}}} END {if (w != "") printf "%.3g (%s)", w, c}' <<<"$fixture_rows")"
  row "fixture suite on cuda" "$(wc -l <<<"$fixture_rows") case(s) printed; worst max rel err ${worst:-n/a}"
else
  row "fixture suite on cuda" "not run: ${skip_reason:-no cuda lines in $log/engine-tests.txt}"
fi

if [[ -f bench/target/loupe-bench.jar ]]; then
  cp="bench/target/loupe-bench.jar:bench/target/lib/*"
  jvm=(--add-modules jdk.incubator.vector --enable-native-access=ALL-UNNAMED)
  benches="$(java "${jvm[@]}" -cp "$cp" org.openjdk.jmh.Main -l 2>/dev/null | grep -iE 'gpu|cuda' || true)"
  if [[ -n "$benches" ]]; then
    java "${jvm[@]}" -cp "$cp" org.openjdk.jmh.Main '(?i).*(gpu|cuda).*' -f 1 -wi 2 -i 3 -rf csv -rff "$log/jmh-gpu.csv" > "$log/jmh.txt" 2>&1
    row "JMH GPU benchmarks" "$(tail -n +2 "$log/jmh-gpu.csv" 2>/dev/null | awk -F, '{printf "%s=%s %s; ", $1, $5, $7}')"
  else
    row "JMH GPU benchmarks" "none defined yet"
  fi
fi

echo
echo "loupe GPU check ($(date -u +%Y-%m-%dT%H:%MZ)); logs in $log"
printf '%s\n' "${rows[@]}"
grep -q 'failed 0' <<<"$(summarize kernels)" || exit 1
exit "$failed"
