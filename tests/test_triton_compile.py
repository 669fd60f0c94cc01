"""Every Triton kernel compiles for sm_90 (H100/H200) with the specializations the ops launch.

CI has no GPU, and the interpreter (TRITON_INTERPRET=1) runs Python semantics that accept code
the compiler rejects, so passing the other tests does not prove the Triton backend builds. Here
the ops run through the triton backend with the interpreter's launcher replaced by a recorder
(kernel, arguments, constexprs, num_warps: nothing executes), every combination of the
epilogue, dtype, layout, kind and parameter options; the arguments get Triton's own launch
specialization (an int equal to 1 becomes a constexpr, divisibility by 16 an attribute, block
sizes and plane splits as on an H100, also at the GPU shapes of docs/benchmarks.md); tests/triton_aot.py then
compiles each distinct specialization to a cubin in a process without the interpreter. fp16 and
bf16 launches are recorded too (never executed, so the CPU interpreter's dtype support does not
matter)."""

import inspect
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_compiler_facts import cf, check_facts_table

import i2i_fast
from i2i_fast import functional as F

HERE = Path(__file__).resolve().parent


def _recording():
    if os.environ.get("TRITON_INTERPRET") != "1" or not i2i_fast.backends()["triton"][0]:
        pytest.skip("records launches under TRITON_INTERPRET=1 (no GPU runs here)")
    if torch.cuda.is_available():
        pytest.skip("a GPU compiles every kernel when it launches")
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction


def _workload():
    """Every Triton op, forward and backward, over the options that change a kernel's
    constexprs or argument specialization."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dt=torch.float32, grad=True):
        return torch.randn(shape, generator=g, dtype=dt).requires_grad_(grad)

    def run(y, *inputs):
        ins = [t for t in inputs if t is not None and t.requires_grad]
        torch.autograd.grad(y, ins, torch.ones_like(y), allow_unused=True)

    halves = (torch.float16, torch.bfloat16)  # launched, never executed: fine on CPU here
    for dt, cl in itertools.product((torch.float32, torch.float64) + halves, (False, True)):
        x = rnd(2, 3, 5, 4, dt=dt)
        if cl:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        res = rnd(2, 3, 5, 4, dt=dt)
        rho = torch.rand(1, 3, 1, 1, generator=g, dtype=dt).requires_grad_()
        gc, bc = rnd(3, dt=dt), rnd(3, dt=dt)
        gn, bn = rnd(2, 3, dt=dt), rnd(2, 3, dt=dt)
        for act, pad, r in itertools.product((None, "relu", "leaky_relu", "tanh"), (0, 1), (None, res)):
            kw = dict(activation=act, residual=r, out_pad=pad)
            run(F.iln(x, rho, gc.reshape(1, 3, 1, 1), bc.reshape(1, 3, 1, 1), **kw), x, rho, gc, bc, r)
            run(F.adalin(x, rho, gn, bn, **kw), x, rho, gn, bn, r)
            run(F.layer_norm(x, gc, bc, **kw), x, gc, bc, r)
            run(F.layer_norm(x, **kw), x, r)
            run(F.batch_norm(x, None, None, gc, bc, True, **kw), x, gc, bc, r)
            run(F.batch_norm(x, None, None, None, None, True, **kw), x, r)
            run(F.adain(x, gn.reshape(-1), bn.reshape(-1), **kw), x, gn, bn, r)
            run(F.instance_norm(x, weight=gc, bias=bc, **kw), x, gc, bc, r)
            run(F.instance_norm(x, **kw), x, r)
            rm, rv = torch.zeros(3, dtype=dt), torch.ones(3, dtype=dt)
            run(F.instance_norm(x, rm, rv, gc, bc, use_input_stats=False, **kw), x, gc, bc, r)
        for count in (None, torch.zeros((), dtype=torch.long)):  # training: the running statistics updated
            rm, rv = torch.zeros(3, dtype=dt), torch.ones(3, dtype=dt)
            run(F.batch_norm(x, rm, rv, gc, bc, True, num_batches_tracked=count), x, gc, bc)
            run(F.instance_norm(x, rm, rv, gc, bc), x, gc, bc)
        run(F.reflection_pad2d(x, 1), x)
        run(F.reflection_pad2d(x, (1, 2, 0, 3)), x)
        run(F.reflection_pad2d(x, 1, activation="relu"), x)
        run(F.reflection_pad2d(x, (1, 2, 0, 3), activation="leaky_relu"), x)
        w, u, v = rnd(8, 12, dt=dt), torch.randn(8, dtype=dt), torch.randn(12, dtype=dt)
        run(F.spectral_norm_weight(w, u, v), w)
    for dt in (torch.float32, torch.float64) + halves:
        preds = [rnd(1, 1, 6, 6, dt=dt), rnd(1, 1, 3, 3, dt=dt), rnd(2, 1, dt=dt)]
        for mode in ("lsgan", "vanilla", "hinge", "wgangp", "nonsaturating"):
            for real in (True, False):
                run(F.gan_loss(preds, real, mode), *preds)
                run(F.gan_loss(preds[0], real, mode, for_discriminator=False), preds[0])
        a, b = rnd(1, 3, 8, 8, dt=dt), rnd(1, 3, 8, 8, dt=dt)
        run(F.l1_loss([(a, b), (b, a)], weights=[1.0, 10.0]), a, b)
        run(F.l1_loss((a, b)), a, b)
        run(F.bce_with_logits((rnd(4, 5, dt=dt), torch.rand(4, 5, generator=g, dtype=dt))), preds[0])
        big = rnd(1, 3, 160, 160, dt=dt)  # past one program's partials
        run(F.l1_loss((big, big.detach() * 0.5)), big)
    many = [rnd(1, 1, 4, 4) for _ in range(10)]  # more terms than one launch takes
    run(F.gan_loss(many, True, "lsgan"), *many)


def _gpu_shapes_workload():
    """The norms at the GPU shapes of docs/benchmarks.md (nothing executes, so no cost but the allocation),
    to record the block sizes and plane splits an H100 launch would get."""
    for shape, dt in itertools.product(
        [(1, 256, 64, 64), (1, 64, 256, 256), (16, 256, 32, 32)], (torch.float32, torch.bfloat16)
    ):
        n, c = shape[:2]
        x = torch.empty(shape, dtype=dt).requires_grad_()
        gc, bc = (torch.ones(c, requires_grad=True) for _ in range(2))
        gn, bn = (torch.ones(n, c, dtype=dt, requires_grad=True) for _ in range(2))
        rho = torch.ones(1, c, 1, 1, requires_grad=True)
        ys = [
            F.iln(x, rho, gc.reshape(1, c, 1, 1), bc.reshape(1, c, 1, 1), activation="relu", out_pad=1),
            F.adalin(x, rho, gn, bn, residual=x.detach()),
            F.instance_norm(x, weight=gc, bias=bc, activation="relu"),
            F.layer_norm(x, gc, bc, activation="relu"),
            F.batch_norm(x, None, None, gc, bc, True, activation="leaky_relu"),
        ]
        for y in ys:
            torch.autograd.grad(y, [x], torch.empty_like(y))


def _spec(fn, args, kwargs):
    """The launch as Triton specializes it: signature types, constexpr values, num_warps."""
    import triton.language as tl
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    kwargs.pop("num_stages", None)
    params = inspect.signature(fn.fn).parameters
    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    sig, consts, attrs = {}, {}, []
    for i, (name, p) in enumerate(params.items()):
        v = bound.arguments[name]
        if "constexpr" in str(p.annotation):
            sig[name] = "constexpr"
            consts[name] = {"tl": v.name if hasattr(v, "name") else str(v)} if isinstance(v, tl.dtype) else v
            continue
        t, key = native_specialize_impl(BaseBackend, v, False, True, True)
        sig[name] = t
        if t == "constexpr":
            consts[name] = v
        elif isinstance(key, str) and key:
            attrs.append([i, key])  # "D": divisible by 16 (pointer alignment, sizes, strides)
    return {
        "module": fn.fn.__module__,
        "kernel": fn.fn.__name__,
        "signature": sig,
        "constexprs": consts,
        "attrs": attrs,
        "num_warps": num_warps,
    }


def test_every_triton_kernel_compiles_for_sm90(monkeypatch, tmp_path):
    interp = _recording()
    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        if not warmup:
            launches.append(_spec(self, args, kwargs))

    monkeypatch.setattr(interp, "run", record)
    from i2i_fast.triton import instance_norm as tin
    from i2i_fast.triton import reflection_pad as tpad

    for m in (tin, tpad):  # the GPU's block sizes, not the interpreter's
        monkeypatch.setattr(m, "triton_interpret", lambda: False)
    with i2i_fast.use_backend("triton"):
        _workload()
        # again with planes split over several programs (how batch-1 large maps run on a GPU)
        monkeypatch.setattr(tin, "INTERPRETER_SMS", 8)
        monkeypatch.setattr(tin, "MIN_CHUNK", 4)
        _workload()
        monkeypatch.setattr(tin, "INTERPRETER_SMS", 132)  # an H100's SMs, the default chunking
        monkeypatch.setattr(tin, "MIN_CHUNK", 4096)
        _gpu_shapes_workload()

    # every launch kernel of i2i_fast/triton was reached by the workload
    from i2i_fast.triton import instance_norm, loss, plane_norm, reflection_pad, spectral_norm

    defined = {
        (m.__name__, name)
        for m in (instance_norm, loss, plane_norm, reflection_pad, spectral_norm)
        for name, obj in vars(m).items()
        if name.endswith("_kernel") and isinstance(obj, interp)
    }
    reached = {(s["module"], s["kernel"]) for s in launches}
    assert defined and not defined - reached, f"kernels the workload never launches: {sorted(defined - reached)}"

    specs = list({json.dumps(s, sort_keys=True): s for s in launches}.values())
    # a Python float argument is an fp32 kernel scalar: in fp64 kernels it would round eps, a
    # slope, a label or a weight (the interpreter keeps it fp64, so only the signature shows it)
    fp64_with_fp32_scalar = {
        (s["kernel"], k)
        for s in specs
        if s["constexprs"].get("ACC") == {"tl": "fp64"}
        for k, t in s["signature"].items()
        if t == "fp32"
    }
    assert not fp64_with_fp32_scalar, fp64_with_fp32_scalar
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "triton_aot.py"),
            str(tmp_path / "specs.json"),
            "90",
            "--facts",
            str(tmp_path / "facts.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode == 3:
        pytest.skip(out.strip().splitlines()[-1])
    assert proc.returncode == 0, out[-6000:]
    assert f"compiled {len(specs)}/{len(specs)}" in out
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert cf.check_triton_budgets(facts) == []
    check_facts_table("triton", cf.triton_section(facts))


def test_every_triton_op_runs_on_its_tensors_gpu():
    """Triton launches on the current device, so every triton_op takes a device guard
    (i2i_fast.triton.on_device) for tensors on another GPU; the guard keeps the op's schema."""
    import re

    from i2i_fast import triton as tri

    src = Path(tri.__file__).parent
    ops = 0
    for f in sorted(src.glob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"^@triton_op\((.*)\)\n(.*)\n", text, flags=re.M):
            ops += 1
            assert m.group(2) == "@on_device", f"{f.name}: {m.group(1)} has no device guard"
    assert ops >= 14
    calls = []

    @tri.on_device
    def op(x: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return x

    assert str(inspect.signature(op)) == "(x: torch.Tensor, k: int) -> torch.Tensor"
    op(torch.zeros(1), 3)  # CPU: no guard, runs as is
    assert calls == [3]
    x, y = torch.zeros(1), torch.ones(1)  # the loss ops take lists of tensors
    assert tri.first_tensor(([x, y], [y], 2)) is x and tri.first_tensor((3, y)) is y
    assert tri.first_tensor(([], 1.0)) is None


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_triton_ops_on_second_gpu():
    if not i2i_fast.backends()["triton"][0]:
        pytest.skip("triton not available")
    x = torch.randn(2, 3, 9, 8, device="cuda:1", requires_grad=True)
    rho, g, b = (
        torch.rand(1, 3, 1, 1, device="cuda:1"),
        torch.rand(2, 3, device="cuda:1"),
        torch.randn(2, 3, device="cuda:1"),
    )
    with i2i_fast.use_backend("triton"):
        ys = [
            F.adalin(x, rho, g, b, activation="relu", out_pad=1),
            F.instance_norm(x),
            F.reflection_pad2d(x, 2),
            F.gan_loss(x, True, "lsgan"),
        ]
        for y in ys:
            torch.autograd.grad(y, x, torch.ones_like(y))
    with i2i_fast.use_backend("reference"):
        want = F.adalin(x, rho, g, b, activation="relu", out_pad=1)
    torch.testing.assert_close(ys[0], want, rtol=1e-4, atol=1e-4)
