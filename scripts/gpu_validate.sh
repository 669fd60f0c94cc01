#!/usr/bin/env bash
# Validates i2i_fast on a lent GPU in ONE call (docs/gpu_validation.md):
#
#   bash scripts/gpu_validate.sh                      # results: $OUT/gpu_results.tar.gz + $OUT/summary.md
#
# Steps in priority order, each under its own timeout; unused time is carried forward (step i
# may run until the sum of the allotments of steps 1..i, scaled to the budget), and a failing
# step never stops the next:
#   build        setup.py build_ext --inplace, I2I_FAST_CUDA=1, MAX_JOBS=nproc,
#                TORCH_CUDA_ARCH_LIST = the visible GPU's compute capability only
#   import       import i2i_fast, i2i_fast.backends(), CUDA kernels present, torch sees the GPU
#   tests        pytest -m cuda (the CUDA-only tests; the CPU/interpreter suites are CI's job),
#                no -x, junit.xml; pytest-xdist / pytest-timeout when installed
#   memcheck     compute-sanitizer memcheck of a short script at small shapes (every kernel family),
#   racecheck    then racecheck and synccheck of the reduction kernels; skipped with the reason
#   synccheck    when the tool is missing or refuses the device
#   bench        core ops fp32 + bf16 vs eager: norm family, pad, every ReflectionPadConv2d path
#                (pad, border, out_pad), losses with launch counts (scripts/gpu_validate.py bench)
#   steps        whole training steps at the papers' sizes: CycleGAN and U-GAT-IT light (eager,
#                converted, then the compile variants), then the other families as time allows
#   determinism  two converted CycleGAN runs under use_deterministic_algorithms(True): bitwise
#                equal weights; the eager original is expected to raise (recorded)
# Everything lands in ONE archive $OUT/gpu_results.tar.gz plus $OUT/summary.md (2 files), both
# rewritten after every step, so a call killed from outside still returns what was done.
# Without a GPU (or GPU_VALIDATE_DRY_RUN=1) it is a dry run: every GPU step "skip: no GPU", the
# import step runs, the archive and summary are made (meta.json says dry_run: true, and
# scripts/ingest_gpu_results.py refuses it except with --check).
#
# Settings (environment): OUT (default ./gpu_out), GPU_VALIDATE_BUDGET_S (default 480: 8 min),
# GPU_VALIDATE_DRY_RUN (auto|0|1), GPU_VALIDATE_STEPS (comma list: run only these),
# GPU_VALIDATE_BENCH_COMPILE=1 (also time torch.compile in the bench step), GPU_VALIDATE_COMMIT
# (recorded when the checkout has no .git), PYTHON (default python3).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${GPU_VALIDATE_BUDGET_S:-480}"
START=$(date +%s)
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_validate.XXXXXX")" || exit 1
W="$STAGE/gpu_results"
mkdir -p "$W/logs"
trap 'rm -rf "$STAGE"' EXIT
HELPER=("$PY" "$ROOT/scripts/gpu_validate.py")
ONLY=",${GPU_VALIDATE_STEPS:-},"

# dry run: no GPU visible to nvidia-smi (or forced)
DRY="${GPU_VALIDATE_DRY_RUN:-auto}"
if [[ "$DRY" == auto ]]; then
  if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then DRY=0; else DRY=1; fi
fi
[[ "$DRY" == 1 ]] || DRY=0
if (( DRY )); then
  echo '{"available": false, "reason": "dry run: no GPU"}' > "$W/gpu.json"
else
  timeout 60 "${HELPER[@]}" gpuinfo > "$W/gpu.json" 2> "$W/logs/gpuinfo.log" \
    || echo '{"available": false, "reason": "gpuinfo failed (logs/gpuinfo.log)"}' > "$W/gpu.json"
fi
ARCH="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("compute_cap") or "")' "$W/gpu.json" 2>/dev/null)}"

COMMIT="$(git rev-parse HEAD 2>/dev/null || echo "${GPU_VALIDATE_COMMIT:-unknown}")"
DIRTY=false
[[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && DIRTY=true
"$PY" - "$W/run.json" <<EOF
import json, platform, sys
json.dump({"dry_run": bool($DRY), "start_epoch": $START, "budget_s": $BUDGET,
           "started_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$COMMIT", "dirty": $( $DIRTY && echo True || echo False ),
           "host": "$(uname -srm) $(nproc) cores", "python": "python " + platform.python_version(),
           "arch_list": "$ARCH"}, open(sys.argv[1], "w"), indent=1)
EOF
{
  echo "start $(date -u +%FT%TZ)  commit $COMMIT  dirty=$DIRTY  dry_run=$DRY  budget=${BUDGET}s"
  uname -a; echo "nproc $(nproc)"
  nvidia-smi 2>&1 | head -20
  command -v nvcc >/dev/null && nvcc --version | tail -2
  SAN="$(command -v compute-sanitizer || true)"; echo "compute-sanitizer: ${SAN:-not on PATH}"
} > "$W/env.txt" 2>&1
printf 'step\tresult\trc\tseconds\ttimeout_s\tnote\n' > "$W/steps.tsv"

# The archive and summary are rewritten after every step (a call killed from outside keeps them).
# Logs are capped (first 200 + last 4000 lines) so the archive stays small.
pack() {
  local f
  for f in "$W"/logs/*.log; do
    [[ -f "$f" ]] || continue
    if (( $(wc -l < "$f") > 4400 )); then
      { head -n 200 "$f"; echo "[... $(( $(wc -l < "$f") - 4200 )) lines cut ...]"; tail -n 4000 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
    fi
  done
  "${HELPER[@]}" summarize "$W" >> "$W/logs/summarize.log" 2>&1
  tar -czf "$OUT/gpu_results.tar.gz.tmp" -C "$STAGE" gpu_results && mv "$OUT/gpu_results.tar.gz.tmp" "$OUT/gpu_results.tar.gz"
  cp "$W/summary.md" "$OUT/summary.md.tmp" 2>/dev/null && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
}

record() {  # record NAME RESULT RC SECONDS TIMEOUT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >> "$W/steps.tsv"
  printf '%-12s %-10s rc=%-4s %4ss (timeout %ss) %s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}"
  pack
}

# allotments in seconds of a 480 s budget (scaled to BUDGET); the last 10 s stay for packing
declare -A ALLOT=([build]=150 [import]=15 [tests]=100 [memcheck]=45 [racecheck]=20 [synccheck]=15
                  [bench]=60 [steps]=45 [determinism]=20)
ORDER=(build import tests memcheck racecheck synccheck bench steps determinism)
CUM=0
declare -A DEADLINE
for s in "${ORDER[@]}"; do
  CUM=$(( CUM + ALLOT[$s] ))
  DEADLINE[$s]=$(( START + CUM * BUDGET / 480 ))
done
# nothing runs without the build: it may overrun its allotment up to 300 s (of 480), the later
# steps then share what is left
DEADLINE[build]=$(( START + 300 * BUDGET / 480 ))

wanted() { [[ "$ONLY" == ",," || "$ONLY" == *",$1,"* ]]; }

# run_step NAME CMD... : CMD under timeout until NAME's deadline (SIGINT first: the drivers and
# pytest then write what they have; KILL 10 s later); output to logs/NAME.log.
LAST_RC=0 LAST_S=0 LAST_T=0
run_step() {
  local name=$1; shift
  local t=$(( DEADLINE[$name] - $(date +%s) ))
  if ! wanted "$name"; then record "$name" skip - 0 0 "not in GPU_VALIDATE_STEPS"; LAST_RC=skip; return; fi
  if (( t < 5 )); then record "$name" skip - 0 "$t" "out of time"; LAST_RC=skip; return; fi
  echo "=== $name (timeout ${t}s): $*"
  local t0=$(date +%s)
  timeout -s INT --kill-after=10 "$t" "$@" > "$W/logs/$name.log" 2>&1
  local rc=$? res=ok note=""
  (( rc != 0 )) && res=fail
  (( rc == 124 || rc == 130 || rc == 137 )) && { res=timeout; note="stopped at its time limit"; }
  LAST_RC=$rc LAST_S=$(( $(date +%s) - t0 )) LAST_T=$t
  tail -n 5 "$W/logs/$name.log"
  record "$name" "$res" "$rc" "$LAST_S" "$t" "$note"
}

gpu_step() {  # gpu_step NAME CMD... : a step that needs the GPU (skipped in a dry run)
  if (( DRY )); then record "$1" skip - 0 0 "no GPU"; LAST_RC=skip; return; fi
  run_step "$@"
}

# 1. build, import, backends
gpu_step build env I2I_FAST_CUDA=1 MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="$ARCH" \
  "$PY" setup.py build_ext --inplace
if (( DRY )); then
  run_step import "$PY" -c 'import torch, i2i_fast; print("torch", torch.__version__, "cuda", torch.version.cuda); print(i2i_fast.backends())'
else
  run_step import "$PY" -c '
import torch, i2i_fast, i2i_fast._C as C
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
print(i2i_fast.backends())
assert C.WITH_CUDA, "built without CUDA kernels"
assert torch.cuda.is_available(), "torch sees no GPU"'
fi

# 2. CUDA-marked tests only
PYTEST_X=()
"$PY" -c 'import xdist' 2>/dev/null && PYTEST_X+=(-n "${GPU_VALIDATE_TEST_WORKERS:-8}")
"$PY" -c 'import pytest_timeout' 2>/dev/null && PYTEST_X+=(--timeout 120)
gpu_step tests env -u I2I_FAST_BACKEND "$PY" -m pytest tests/ -m cuda -q -rfE -p no:cacheprovider \
  --junitxml="$W/junit.xml" "${PYTEST_X[@]}"

# 3. compute-sanitizer: memcheck, then racecheck and synccheck
SAN="$(command -v compute-sanitizer || true)"
for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do  # often not on PATH
  [[ -z "$SAN" && -n "$d" && -x "$d/bin/compute-sanitizer" ]] && SAN="$d/bin/compute-sanitizer"
done
REFUSED=""
for tool in memcheck racecheck synccheck; do
  if (( DRY )); then record "$tool" skip - 0 0 "no GPU"; continue; fi
  if [[ -z "$SAN" ]]; then record "$tool" skip - 0 0 "compute-sanitizer not found"; continue; fi
  if [[ -n "$REFUSED" ]]; then record "$tool" skip - 0 0 "$REFUSED"; continue; fi
  # memcheck without the caching allocator (any value of the variable switches caching off):
  # every tensor its own cudaMalloc, so overruns show
  pre=(env -u PYTORCH_NO_CUDA_MEMORY_CACHING) extra=()
  [[ $tool == memcheck ]] && pre=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1) extra=(--leak-check no)
  run_step "$tool" "${pre[@]}" "$SAN" --tool "$tool" "${extra[@]}" --error-exitcode 86 --print-limit 20 \
    "${HELPER[@]}" sanitize --tool "$tool"
  [[ "$LAST_RC" == skip ]] && continue
  # a refusal (seen on gVisor machines: "Device not supported", then error 999) can still exit
  # 0: check the log, not only the exit code; a run that did not reach the end is no pass
  # (the tool's own lines start with "=========": a warning of the program cannot match)
  pat='^=+ .*(device not supported|no supported devices|not supported on this|unable to find injection|failed to initialize)'
  if grep -qiE "$pat" "$W/logs/$tool.log"; then
    REFUSED="compute-sanitizer refused the device: $(grep -iE -m1 "$pat" "$W/logs/$tool.log" | tr -d '\t|' | cut -c1-120)"
    sed -i '$d' "$W/steps.tsv"  # re-record this step as skipped, with the reason
    record "$tool" skip "$LAST_RC" "$LAST_S" "$LAST_T" "$REFUSED"
  elif [[ "$LAST_RC" == 0 ]] && ! grep -q 'sanitize workload done' "$W/logs/$tool.log"; then
    sed -i '$d' "$W/steps.tsv"
    record "$tool" fail 0 "$LAST_S" "$LAST_T" "exit 0 but the workload did not finish"
  fi
done

# 4. core benchmarks, 5. whole training steps, 6. determinism
BENCH_X=()
[[ "${GPU_VALIDATE_BENCH_COMPILE:-0}" == 1 ]] && BENCH_X+=(--compile)
gpu_step bench "${HELPER[@]}" bench --out "$W" --deadline "$(( DEADLINE[bench] - 3 ))" "${BENCH_X[@]}"
gpu_step steps "${HELPER[@]}" steps --out "$W" --deadline "$(( DEADLINE[steps] - 3 ))"
gpu_step determinism env CUBLAS_WORKSPACE_CONFIG=:4096:8 "${HELPER[@]}" determinism --out "$W"

pack
echo "=== done in $(( $(date +%s) - START ))s: $OUT/gpu_results.tar.gz, $OUT/summary.md"
cat "$OUT/summary.md" | head -n 40
awk -F'\t' 'NR > 1 && $2 != "ok" && $2 != "skip" {bad = 1} END {exit bad}' "$W/steps.tsv"
