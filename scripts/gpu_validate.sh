#!/usr/bin/env bash
# One command for a lent GPU machine (torch + triton + pytest-benchmark + nvidia-ml-py
# preinstalled, no network): build, import, tests, compute-sanitizer memcheck, benchmarks,
# main job. Every step runs under `timeout`, logs to $OUT/<step>.log and appends its exit
# code to $OUT/steps.txt; a failing step does not stop the next one. The whole run stays
# within GPU_VALIDATE_BUDGET_S seconds (default 560, i.e. under 10 minutes).
#
#   OUT=/some/dir bash scripts/gpu_validate.sh      # default OUT=./gpu_out
#   GPU_VALIDATE_PART=tests|bench|triton|all (default all): with many suites the whole run may not
#   fit one 10-minute call; run "tests" and "bench" as two calls (each builds first); "triton"
#   times the norm family on the Triton backend (I2I_FAST_BACKEND=triton) vs eager and compile.
#   GPU_VALIDATE_OPS=<comma list of i2i_fast.bench ops> (default: all): the main job's subset;
#   GPU_VALIDATE_PYTEST_BENCH=0 skips `pytest benchmarks/` (the same cases again).
# A step past its time gets SIGINT first: bench and pytest then still write what they measured.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
BUDGET="${GPU_VALIDATE_BUDGET_S:-560}"
START=$(date +%s)
STEPS="$OUT/steps.txt"
: > "$STEPS"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PART="${GPU_VALIDATE_PART:-all}"

# step NAME MAX_SECONDS CMD... : runs CMD with timeout min(MAX_SECONDS, time left).
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 15 ))
  local t=$(( cap < left ? cap : left ))
  if (( t < 10 )); then
    printf '%-10s rc=skip (out of time)\n' "$name" | tee -a "$STEPS"
    return
  fi
  echo "=== $name (timeout ${t}s): $*"
  local t0=$(date +%s)
  timeout -s INT --kill-after=20 "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local note=""
  (( rc == 124 || rc == 130 || rc == 137 )) && note=" TIMEOUT"
  printf '%-10s rc=%-3s %4ss%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$note" | tee -a "$STEPS"
  tail -n 12 "$OUT/$name.log"
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null
  nvidia-smi 2>&1 | head -20
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
  command -v nvcc && nvcc --version | tail -2
} > "$OUT/env.txt" 2>&1

# I2I_FAST_CUDA=1: a missing toolkit fails the build loudly instead of skipping the kernels
step build 300 env I2I_FAST_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
step import 60 "$PY" -c 'import i2i_fast, i2i_fast._C as c; print(i2i_fast.backends()); assert c.WITH_CUDA, "built without CUDA kernels"'
if [[ "$PART" == tests || "$PART" == all ]]; then
# every failure is worth seeing on a first GPU run: no -x
step tests 300 env -u I2I_FAST_BACKEND "$PY" -m pytest tests/ -q --maxfail=40 --junitxml="$OUT/junit.xml"

# memcheck: fused instance norm fwd+bwd on CUDA; NCHW and channels_last, odd sizes, batch 1
# with a large map (split-plane path), fp32 and bf16, affine + residual, running stats.
cat > "$OUT/memcheck_in.py" <<'EOF'
import itertools
import torch
import i2i_fast
from i2i_fast import functional as F

print(i2i_fast.backends())
torch.manual_seed(0)
cases = [  # shape, channels_last, affine+residual, running stats (eval)
    ((2, 3, 7, 9), False, False, False),
    ((1, 64, 256, 256), False, False, False),   # batch 1, large map: split path, vectorized
    ((1, 32, 97, 101), False, True, False),     # split path, odd H*W (scalar loads)
    ((2, 96, 33, 31), True, False, False),      # channels_last, C not a multiple of 32
    ((1, 64, 128, 128), True, True, False),     # channels_last, split path
    ((2, 40, 17, 19), False, True, True),       # running statistics (eval)
]
for shape, cl, affine, eval_stats in cases:
    for dtype in (torch.float32, torch.bfloat16):
        c = shape[1]
        x = torch.randn(shape, device="cuda", dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.rand(c, device="cuda", dtype=dtype, requires_grad=True) if affine else None
        b = torch.randn(c, device="cuda", dtype=dtype, requires_grad=True) if affine else None
        res = torch.randn_like(x) if affine else None
        rm = torch.randn(c, device="cuda") if eval_stats else None
        rv = torch.rand(c, device="cuda") + 0.5 if eval_stats else None
        y = F.instance_norm(x, rm, rv, w, b, use_input_stats=not eval_stats,
                            activation="relu", residual=res)
        y.backward(torch.randn_like(y))
        torch.cuda.synchronize()
        ref = torch.relu(torch.nn.functional.instance_norm(
            x.detach().float(), rm, rv, None if w is None else w.detach().float(),
            None if b is None else b.detach().float(), use_input_stats=not eval_stats))
        if res is not None:
            ref = ref + res.float()
        print(f"{str(shape):18} cl={cl:d} affine={affine:d} eval={eval_stats:d} {str(dtype):15} "
              f"max|y-ref|={(y.float() - ref).abs().max().item():.2e} "
              f"grad finite={bool(x.grad.isfinite().all())}", flush=True)
# the other kernels, CUDA and Triton: norm family (split reductions, out_pad gather, Triton's
# coefficient kernel), batch norm, pad, losses
for backend, shape in itertools.product(("cuda", "triton"), ((1, 64, 256, 256), (16, 256, 32, 32), (2, 5, 7, 9))):
    x = torch.randn(shape, device="cuda", requires_grad=True)
    n, c = shape[:2]
    rho = torch.rand(1, c, 1, 1, device="cuda", requires_grad=True)
    g = torch.rand(n, c, device="cuda", requires_grad=True)
    b = torch.randn(n, c, device="cuda", requires_grad=True)
    with i2i_fast.use_backend(backend):
        for y in (F.adalin(x, rho, g, b, activation="relu", out_pad=1), F.layer_norm(x, g[0], b[0], out_pad=2),
                  F.instance_norm(x, activation="leaky_relu"), F.reflection_pad2d(x, (1, 2, 3, 1)),
                  F.batch_norm(x, None, None, g[0], b[0], True, activation="relu")):
            y.backward(torch.randn_like(y))
    torch.cuda.synchronize()
    print(backend, shape, "norm family / pad grads finite:", bool(x.grad.isfinite().all()), flush=True)
preds = [torch.randn(s, device="cuda", requires_grad=True) for s in ((1, 1, 30, 30), (1, 1, 6, 6), (1, 2))]
F.gan_loss(preds, True, "lsgan").backward()
torch.cuda.synchronize()
print("losses grads finite:", all(bool(p.grad.isfinite().all()) for p in preds))
print("memcheck snippet done")
EOF
SANITIZER="$(command -v compute-sanitizer || true)"
for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do  # often not on PATH
  [[ -z "$SANITIZER" && -n "$d" && -x "$d/bin/compute-sanitizer" ]] && SANITIZER="$d/bin/compute-sanitizer"
done
if [[ -n "$SANITIZER" ]]; then
  # no caching allocator: every tensor is its own cudaMalloc, so out-of-bounds accesses show
  step memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
    --error-exitcode 86 --print-limit 20 "$PY" "$OUT/memcheck_in.py"
else
  printf '%-10s rc=skip (compute-sanitizer not on PATH)\n' memcheck | tee -a "$STEPS"
fi

fi  # tests

if [[ "$PART" == triton || "$PART" == all ]]; then
step bench_triton 240 env I2I_FAST_BACKEND=triton "$PY" -m i2i_fast.bench --out "$OUT/bench_triton" \
  --ops instance_norm,iln,adalin,layer_norm,batch_norm
fi

if [[ "$PART" == bench || "$PART" == all ]]; then
step bench_main 420 "$PY" -m i2i_fast.bench --out "$OUT/bench_main" ${GPU_VALIDATE_OPS:+--ops "$GPU_VALIDATE_OPS"}
step saved 120 "$PY" -m i2i_fast.bench_steps --device cuda --saved  # $OUT/saved.log
if [[ "${GPU_VALIDATE_PYTEST_BENCH:-1}" != 0 ]]; then
step bench 240 env I2I_FAST_BENCH_STEPS_COMPILE=0 "$PY" -m pytest benchmarks/ --benchmark-only -q \
  --benchmark-json="$OUT/bench.json"
fi
fi

# results not already written under $OUT
[[ -d bench_results ]] && cp -r bench_results "$OUT/bench_results_default"
ls -la "$OUT" > "$OUT/files.txt" 2>&1
echo "=== steps ($(( $(date +%s) - START ))s total), results in $OUT"
cat "$STEPS"
! grep -qv ' rc=0 \| rc=skip' "$STEPS"
