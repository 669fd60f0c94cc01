"""Two CPU module-level targets, timed as a user calls them (2 threads, fp32):

  in_relu   i2i_fast.InstanceNorm2d(256, activation="relu") vs
            nn.Sequential(nn.InstanceNorm2d(256), nn.ReLU()) on (1, 256, 64, 64):
            forward + ``y.backward(g)`` into a leaf x (x.grad set to None before each call, as
            an optimizer's zero_grad(set_to_none=True) leaves it), and the variants
            ``accumulate`` (x.grad kept: every call adds into it) and ``grad`` (torch.autograd.grad,
            no .grad at all)
  ugatit_d  the 8 lsgan terms of one U-GAT-IT discriminator update (logits (1,1,30,30), CAM
            (1,2), (1,1,6,6), (1,2), each real and fake): eager MSE-to-ones/zeros sum vs one
            i2i_fast.functional.gan_loss call, forward + backward (torch.autograd.grad of the 8
            predictions); variants ``checked`` (gan_loss's checked Python path, which every call
            took before its fast path) and ``two_calls`` (real terms, then fake terms)

The process first frees one 16 MiB tensor (warm_heap; --cold-heap skips it), as a network at
256x256 does: a fresh process's glibc thresholds make the isolated loop fault its 4 MiB blocks
in again on every call, which measures the allocator's state rather than the module.

Each round times eager then ours (order alternating between rounds) for a fixed number of
calls; the ratio of each round is eager / ours, and the report gives the median ratio and its
spread (min..max over rounds) besides the medians of the per-call times. Other processes on
the machine make single rounds noisy: the median of interleaved rounds is the figure.

    python benchmarks/cpu_module_targets.py [--rounds 21] [--calls N] [--target in_relu|ugatit_d|all]
    python benchmarks/cpu_module_targets.py --threads 1 --clock cpu     # CPU time, load-proof
    python benchmarks/cpu_module_targets.py --profile [--threads 1 --clock cpu]   # in_relu pieces
    python benchmarks/cpu_module_targets.py --cold-heap | --keep-heap   # allocator variants

The best round of each side (min over rounds) is printed too: on a loaded machine it is the
closest to an unloaded figure.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time

import torch
from torch import nn

import i2i_fast
from i2i_fast import functional as LF


def _in_relu_case(variant):
    torch.manual_seed(0)
    x = torch.randn(1, 256, 64, 64, requires_grad=True)
    g = torch.randn(1, 256, 64, 64)
    eager = nn.Sequential(nn.InstanceNorm2d(256), nn.ReLU())
    ours = i2i_fast.InstanceNorm2d(256, activation="relu")

    def make(m):
        if variant == "grad":

            def step():
                torch.autograd.grad(m(x), x, g)
        elif variant == "accumulate":

            def step():
                m(x).backward(g)
        else:

            def step():
                x.grad = None
                m(x).backward(g)

        return step

    def check():
        x.grad = None
        eager(x).backward(g)
        ge = x.grad
        x.grad = None
        ours(x).backward(g)
        torch.testing.assert_close(x.grad, ge, rtol=1e-4, atol=1e-4)
        x.grad = None

    return make(eager), make(ours), check, 20


def _ugatit_d_case(variant=None):
    torch.manual_seed(0)
    shapes = [(1, 1, 30, 30), (1, 2), (1, 1, 6, 6), (1, 2)]
    preds = [torch.randn(s, requires_grad=True) for s in shapes for _ in range(2)]  # real, fake per output
    targets = [True, False] * 4
    mse = nn.functional.mse_loss

    def eager_loss():
        return sum(mse(p, torch.ones_like(p) if t else torch.zeros_like(p)) for p, t in zip(preds, targets))

    def ours_loss():
        return LF.gan_loss(preds, targets, "lsgan")

    if variant == "checked":  # gan_loss's checked path (what every call took before the fast path)
        from i2i_fast import _backend, ops

        def ours_loss():  # noqa: F811
            ps, _ = LF._as_terms("pred", preds)
            ps = LF._common("pred", ps)
            params, ws, kind, red = LF._gan_plan("lsgan", len(ps), targets, 1.0, 0.0, True, "mean", None)
            return ops.loss.loss(_backend.select(ps[0].device), ps, [], params, ws, kind, red)[0]

    if variant == "two_calls":  # real terms, then fake terms: two fused calls and an add

        def ours_loss():  # noqa: F811
            return LF.gan_loss(preds[0::2], True, "lsgan") + LF.gan_loss(preds[1::2], False, "lsgan")

    def make(f):
        def step():
            torch.autograd.grad(f(), preds)

        return step

    def check():
        a, b = eager_loss(), ours_loss()
        torch.testing.assert_close(b, a)
        for u, v in zip(torch.autograd.grad(a, preds), torch.autograd.grad(b, preds)):
            torch.testing.assert_close(v, u)

    return make(eager_loss), make(ours_loss), check, 400


CASES = {"in_relu": _in_relu_case, "ugatit_d": _ugatit_d_case}


def measure(name, variant=None, rounds=21, calls=None, warmup=3, clock=time.perf_counter):
    eager, ours, check, n = CASES[name](variant)
    n = calls or n
    check()
    for _ in range(warmup):
        for f in (eager, ours):
            for _ in range(n):
                f()
    te, to, ratios = [], [], []
    faults = {"eager": 0, "ours": 0}
    for r in range(rounds):
        pair = {}
        for impl in ("eager", "ours") if r % 2 == 0 else ("ours", "eager"):
            f = eager if impl == "eager" else ours
            f0 = _minflt()
            t0 = clock()
            for _ in range(n):
                f()
            pair[impl] = (clock() - t0) / n
            faults[impl] += _minflt() - f0
        te.append(pair["eager"]), to.append(pair["ours"]), ratios.append(pair["eager"] / pair["ours"])
    return {
        "case": name + (f"[{variant}]" if variant else ""),
        "eager_us": statistics.median(te) * 1e6,
        "ours_us": statistics.median(to) * 1e6,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": rounds,
        "calls": n,
        "eager_best_us": min(te) * 1e6,
        "ours_best_us": min(to) * 1e6,
        "eager_faults": faults["eager"] / (rounds * n),
        "ours_faults": faults["ours"] / (rounds * n),
    }


def _minflt():
    """Minor page faults of the process so far (a fresh page of a new allocation = one fault,
    4 KiB zeroed by the kernel)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_heap():
    """Allocate and free one 16 MiB tensor, as any network at 256x256 does early on: glibc then
    raises its dynamic mmap threshold to 16 MiB (trim threshold 32 MiB), so 4 MiB activations
    are served from the heap and reused. A fresh process that only ever allocated 4 MiB blocks
    sits at the threshold's boundary, where the heap top is trimmed and faulted in again every
    iteration (2050 minor faults per call for the fused module alone, 0 after this warm-up)."""
    t = torch.empty(4 << 20)
    t.fill_(0)
    del t


def keep_heap():
    """glibc malloc: never trim the heap top and serve blocks up to 32 MiB from the heap
    (mallopt M_TRIM_THRESHOLD / M_MMAP_THRESHOLD, as MALLOC_TRIM_THRESHOLD_ /
    MALLOC_MMAP_THRESHOLD_ would), so freed activations are reused instead of handed back to
    the OS and faulted in again. Returns True when glibc accepted both."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))


def _best(f, n, reps, clock):
    for _ in range(2):
        f()
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        for _ in range(n):
            f()
        best = min(best, (clock() - t0) / n)
    return best * 1e6


def profile_in_relu(clock=time.perf_counter, n=10, reps=15):
    """Where the module-level forward+backward of InstanceNorm2d(256, activation="relu") on
    (1, 256, 64, 64) goes, as differences of timed pieces (best of `reps` rounds of n calls, in
    us), ours and eager side by side. Returns {row: (eager_us, ours_us)}."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 64, 64, requires_grad=True)
    g = torch.randn(1, 256, 64, 64)
    xd = x.detach()
    eager = nn.Sequential(nn.InstanceNorm2d(256), nn.ReLU())
    ours = i2i_fast.InstanceNorm2d(256, activation="relu")
    op_f, op_b = torch.ops.i2i_fast.instance_norm_fwd.default, torch.ops.i2i_fast.instance_norm_bwd.default
    with torch.no_grad():
        y0, mean, var = op_f(xd, None, None, None, None, None, 1e-5, 1, 0.2)
        ye = torch.nn.functional.instance_norm(xd)
        re = torch.relu(ye)
        gr = torch.ops.aten.threshold_backward(g, re, 0)
    t = lambda f: _best(f, n, reps, clock)  # noqa: E731
    rows = {}
    with torch.no_grad():
        rows["kernels forward (no grad)"] = (
            t(lambda: torch.relu(torch.nn.functional.instance_norm(xd))),
            t(lambda: op_f(xd, None, None, None, None, None, 1e-5, 1, 0.2)),
        )
        # eager's backward kernels: relu's threshold_backward + the batch-norm backward of instance norm
        xe = xd.reshape(1, 256, 4096)
        rows["kernels backward"] = (
            t(lambda: torch.ops.aten.threshold_backward(g, re, 0))
            + t(
                lambda: torch.ops.aten.native_batch_norm_backward(
                    gr.reshape(1, 256, 4096),
                    xe,
                    None,
                    None,
                    None,
                    mean.reshape(256),
                    torch.rsqrt(var.reshape(256) + 1e-5),
                    True,
                    1e-5,
                    [True, False, False],
                )
            ),
            t(lambda: op_b(g, xd, mean, var, None, None, 1e-5, 1, 0.2, True)),
        )
    rows["module forward (grad mode)"] = (t(lambda: eager(x)), t(lambda: ours(x)))
    ye, yo = eager(x), ours(x)
    rows["backward only (autograd.grad, retained graph)"] = (
        t(lambda: torch.autograd.grad(ye, x, g, retain_graph=True)),
        t(lambda: torch.autograd.grad(yo, x, g, retain_graph=True)),
    )
    ye = yo = None  # the two graphs freed before the next rows

    def step(m, mode):
        def f():
            if mode == "set_to_none":
                x.grad = None
                m(x).backward(g)
            elif mode == "accumulate":
                m(x).backward(g)
            else:
                torch.autograd.grad(m(x), x, g)

        return f

    for mode in ("grad", "set_to_none", "accumulate"):
        rows[f"forward+backward [{mode}]"] = (t(step(eager, mode)), t(step(ours, mode)))
    x.grad = None
    gx = torch.empty_like(xd)
    rows["x.grad += g (the accumulate pass)"] = (t(lambda: gx.add_(g)),) * 2
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=None, help="calls per round (default: 20 in_relu, 400 ugatit_d)")
    ap.add_argument("--target", default="all", choices=["all", "in_relu", "ugatit_d"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-heap", action="store_true", help="glibc: no heap trimming (see keep_heap)")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this thread's CPU time (time.thread_time; use with --threads 1), which "
        "other processes' load does not inflate as it does wall time",
    )
    ap.add_argument(
        "--checked-loss",
        action="store_true",
        help="gan_loss without its eager fast path (the checked Python path), for comparison",
    )
    ap.add_argument("--profile", action="store_true", help="in_relu: time its pieces (profile_in_relu)")
    ap.add_argument(
        "--cold-heap",
        action="store_true",
        help="skip warm_heap(): glibc's thresholds as a process that never freed a block over 4 MiB",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.keep_heap and not keep_heap():
        raise SystemExit("mallopt failed (not glibc?)")
    if not a.cold_heap:
        warm_heap()
    if a.checked_loss:
        LF._gan_loss_fast = lambda *args, **kw: None
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    if a.clock == "cpu" and a.threads != 1:
        raise SystemExit("--clock cpu measures the calling thread only: use --threads 1")
    if a.profile:
        print(f"profile, {torch.get_num_threads()} threads, {a.clock} clock, best of 15 rounds of 10 calls (us)")
        print(f"{'':<48} {'eager':>9} {'ours':>9} {'eager/ours':>10}")
        for k, (e, o) in profile_in_relu(clock).items():
            print(f"{k:<48} {e:9.0f} {o:9.0f} {e / o:9.2f}x")
        return
    jobs = []
    if a.target in ("all", "in_relu"):
        jobs += [("in_relu", v) for v in ("set_to_none", "accumulate", "grad")]
    if a.target in ("all", "ugatit_d"):
        jobs += [("ugatit_d", None), ("ugatit_d", "checked"), ("ugatit_d", "two_calls")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {a.rounds} interleaved rounds"
        + (", glibc heap kept (no trim)" if a.keep_heap else "")
        + (", cold heap" if a.cold_heap else "")
        + (", gan_loss checked path" if a.checked_loss else "")
        + f", {a.clock} clock"
    )
    for name, v in jobs:
        r = measure(name, v, a.rounds, calls=a.calls and (a.calls if name == "in_relu" else 20 * a.calls), clock=clock)
        print(
            f"{r['case']:<24} eager {r['eager_us']:9.1f} us  ours {r['ours_us']:9.1f} us  "
            f"eager/ours median {r['ratio_median']:.2f}x (rounds {r['ratio_min']:.2f}..{r['ratio_max']:.2f})  "
            f"page faults/call eager {r['eager_faults']:.0f} ours {r['ours_faults']:.0f}; best rounds "
            f"{r['eager_best_us']:.0f} / {r['ours_best_us']:.0f} us = {r['eager_best_us'] / r['ours_best_us']:.2f}x"
        )


if __name__ == "__main__":
    main()
