"""Custom-op plumbing: fake (meta) implementations and autograd formulas for the C++ ops
(torch.ops.i2i_fast.*) and the Triton ops, and the per-backend call of each op."""
from __future__ import annotations

import contextlib
import threading

import torch

from . import _backend, reference

_TRITON = None
if _backend._triton_error is None:
    from .triton import instance_norm as _TRITON  # registers i2i_fast::triton_instance_norm_*


def onnx_exporting() -> bool:
    """True while torch.onnx.export traces a model, with either exporter. The exporters cannot
    translate i2i_fast's custom ops, so the ops then run their reference math (reference.py:
    aten ops that have standard ONNX equivalents). torch.onnx.is_in_onnx_export imports two
    modules per call (~3 us), so it is asked only under a tracer: torch.export's (the default
    exporter) or TorchScript's (dynamo=False); eager calls pay ~0.1 us. Under torch.compile the
    answer is False without a call dynamo cannot trace (torch._C._is_tracing)."""
    if torch.compiler.is_compiling():
        return torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export()
    return torch._C._is_tracing() and torch.onnx.is_in_onnx_export()


def select(device: torch.device) -> str:
    """The backend an op on `device` runs with: _backend.select's, or "reference" during an
    ONNX export."""
    return "reference" if onnx_exporting() else _backend.select(device)


def _fmt(x: torch.Tensor):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------- instance norm
def _in_fwd_fake(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad=0):
    n, c, h, w = x.shape
    sd = reference.stats_dtype(x)
    out = x.new_empty((n, c, h + 2 * pad, w + 2 * pad)).contiguous(memory_format=_fmt(x))
    return out, x.new_empty((n, c), dtype=sd), x.new_empty((n, c), dtype=sd)


def _in_bwd_fake(grad, x, mean, var, weight, bias, eps, act, slope, input_stats, pad=0):
    c = x.shape[1]
    # per-(n, c) affine (AdaIN) gets per-plane gradients, per-channel affine per-channel ones,
    # no affine empty ones
    k = next((t.numel() for t in (weight, bias) if t is not None and t.numel() != c), c)
    k = 0 if weight is None and bias is None else k
    sd = reference.stats_dtype(x)
    return torch.empty_like(x, memory_format=_fmt(x)), x.new_empty((k,), dtype=sd), x.new_empty((k,), dtype=sd)


def _in_setup(ctx, inputs, output):
    x, weight, bias, residual, running_mean, running_var, eps, act, slope, *pad = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var, weight, bias)
    ctx.cfg = (eps, act, slope, running_mean is None, residual is not None, pad[0] if pad else 0, len(inputs))
    ctx.mark_non_differentiable(mean, var)


def _in_backward_with(bwd, backend):
    def backward(ctx, gy, _gmean, _gvar):
        x, mean, var, weight, bias = ctx.saved_tensors
        eps, act, slope, input_stats, has_res, pad, n_in = ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # create_graph=True (double backward, e.g. WGAN-GP through a discriminator with
            # InstanceNorm): differentiate the reference formula so the result is itself
            # differentiable. Slower than the kernel, same math.
            gx, gw, gb = _in_double_backward(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad)
        else:
            gx, gw, gb = bwd(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad)
            gw = gw.view_as(weight).to(weight.dtype) if weight is not None else None
            gb = gb.view_as(bias).to(bias.dtype) if bias is not None else None
        # the residual is added before the pad: its gradient is the pad's backward of gy
        gres = (_PAD_OPS[backend][1](gy, [pad] * 4) if pad else gy) if has_res and need[3] else None
        return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None,
                gres) + (None,) * (n_in - 4)
    return backward


def _in_double_backward(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad):
    rm, rv = (None, None) if input_stats else (mean[0], var[0])
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    if not inputs:  # only the residual needs a gradient
        return None, None, None
    with torch.enable_grad():
        y, _, _ = reference.instance_norm_fwd(x, weight, bias, None, rm, rv, eps, act, slope, pad)
        grads = iter(torch.autograd.grad(y, inputs, gy, create_graph=True, allow_unused=True))
    out = [next(grads) if t is not None and t.requires_grad else None for t in (x, weight, bias)]
    return tuple(g if g is not None or t is None else torch.zeros_like(t)
                 for g, t in zip(out, (x, weight, bias)))


def _in_ref_grads(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad):
    """i2i_fast::instance_norm_ref_grads: the create_graph backward of the C++ node, an empty
    tensor where an input needs no gradient."""
    grads = _in_double_backward(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad)
    return [x.new_empty((0,)) if g is None else g for g in grads]


if _backend._C is not None:  # autograd: a C++ node (csrc/instance_norm.cpp, Autograd key)
    torch.library.register_fake("i2i_fast::instance_norm_fwd")(_in_fwd_fake)
    torch.library.register_fake("i2i_fast::instance_norm_bwd")(_in_bwd_fake)
    torch.library.impl("i2i_fast::instance_norm_ref_grads", "CompositeImplicitAutograd")(_in_ref_grads)
if _TRITON is not None:
    torch.library.register_autograd("i2i_fast::triton_instance_norm_fwd",
                                    _in_backward_with(_TRITON.instance_norm_bwd, "triton"),
                                    setup_context=_in_setup)


def _function(fwd, setup, backward):
    """An autograd.Function around a custom op with the op's own autograd formula. The
    functional API calls this instead of the op's registered autograd kernel: same math, but
    torch.library's generic wrapper costs ~40 us per call, which dominates batch-1 layers."""
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = fwd(*args)
            setup(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)
    return Fn


_IN_FN = {}
if _backend._C is not None:  # the op itself: its autograd is C++
    _IN_FN["cpu"] = _IN_FN["cuda"] = torch.ops.i2i_fast.instance_norm_fwd.default
if _TRITON is not None:
    _IN_FN["triton"] = _function(torch.ops.i2i_fast.triton_instance_norm_fwd, _in_setup,
                                 _in_backward_with(_TRITON.instance_norm_bwd, "triton"))


def instance_norm_fwd(backend: str, *args):
    """Runs instance_norm_fwd(x, weight, bias, residual, running_mean, running_var, eps, act,
    slope, pad) -> (out, mean, var) on `backend`."""
    if backend == "reference":
        return reference.instance_norm_fwd(*args)
    if backend == "triton":
        return _IN_FN[backend].apply(*args)
    return _IN_FN[backend](*args)


# ---------------------------------------------------------------- reflection pad
_TRITON_PAD = None
if _backend._triton_error is None:
    from .triton import reflection_pad as _TRITON_PAD  # registers i2i_fast::triton_reflection_pad2d_*


def _pad_out_shape(x, pad):
    n, c, h, w = x.shape
    return (n, c, h + pad[2] + pad[3], w + pad[0] + pad[1])


def _pad_fwd_fake(x, pad):
    return x.new_empty(_pad_out_shape(x, pad)).contiguous(memory_format=_fmt(x))


def _pad_bwd_fake(grad, pad):
    n, c, ho, wo = grad.shape
    return grad.new_empty((n, c, ho - pad[2] - pad[3], wo - pad[0] - pad[1])).contiguous(memory_format=_fmt(grad))


def _pad_setup(ctx, inputs, output):
    ctx.pad = list(inputs[1])


def _pad_autograd(fwd, bwd):
    """(backward of fwd, backward of bwd): the two ops are each other's adjoints, so double
    backward (e.g. WGAN-GP through a padded discriminator) needs no other formula."""
    def backward_fwd(ctx, gy):
        return bwd(gy.contiguous(memory_format=_fmt(gy)), ctx.pad), None

    def backward_bwd(ctx, ggx):
        return fwd(ggx, ctx.pad), None
    return backward_fwd, backward_bwd


_PAD_OPS = {}  # backend -> (fwd, bwd)
if _backend._C is not None:
    _PAD_OPS["cpu"] = _PAD_OPS["cuda"] = (torch.ops.i2i_fast.reflection_pad2d_fwd.default,
                                          torch.ops.i2i_fast.reflection_pad2d_bwd.default)
    torch.library.register_fake("i2i_fast::reflection_pad2d_fwd")(_pad_fwd_fake)
    torch.library.register_fake("i2i_fast::reflection_pad2d_bwd")(_pad_bwd_fake)
if _TRITON_PAD is not None:
    _PAD_OPS["triton"] = (torch.ops.i2i_fast.triton_reflection_pad2d_fwd,
                          torch.ops.i2i_fast.triton_reflection_pad2d_bwd)
# the C++ ops' autograd is a C++ node (csrc/reflection_pad.cpp, Autograd key); Triton's:
if "triton" in _PAD_OPS:
    _bf, _bb = _pad_autograd(*_PAD_OPS["triton"])
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_fwd", _bf, setup_context=_pad_setup)
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_bwd", _bb, setup_context=_pad_setup)
    _PAD_FN = {"triton": _function(_PAD_OPS["triton"][0], _pad_setup, _bf)}
else:
    _PAD_FN = {}


def reflection_pad2d(backend: str, x: torch.Tensor, pad: list) -> torch.Tensor:
    """Runs reflection_pad2d_fwd(x, pad) on `backend` (pad = [left, right, top, bottom])."""
    if backend == "reference":
        return reference.reflection_pad2d_fwd(x, pad)
    if backend != "triton" or torch.compiler.is_compiling():
        # the op with its registered autograd (C++ for cpu/cuda); under compile also for
        # Triton: dynamo mis-traces the autograd.Function wrapper when x does not require grad
        return _PAD_OPS[backend][0](x, list(pad))
    return _PAD_FN[backend].apply(x, list(pad))


# ---------------------------------------------------------------- reflection pad + conv
# Strategy "border": conv2d(reflect_pad(x)) = conv2d(zero_pad(x)) on every output whose window
# lies inside x; only the outputs within reach of the padding ring differ. So the forward runs
# aten's convolution with zero padding p (cuDNN / mkldnn, no padded copy) and recomputes the
# border outputs from thin reflect-padded strips (<= 4 small convolutions). The backward is
# aten's zero-padded convolution_backward plus, per strip, the correction of the ring:
#   dW += wgrad(ring part of the strip, grad of the strip's outputs)
#   dx += reflection_pad2d_bwd(ring part of dgrad(grad of the strip's outputs))
# (the ring part of the strip: the padded positions that are not x itself, i.e. where reflect
# and zero padding differ). Every piece is a deterministic gather or an aten convolution run
# with cudnn.deterministic. Path "pad" materializes the padded input instead (i2i_fast pad
# kernel + one aten convolution; deterministic gather pad backward). padding == 0: "conv".
# Default path: "pad" on every device (pad_conv_path says why); "border" only when forced.
PAD_CONV_PATHS = ("border", "pad")
PAD_CONV_DEFAULT = "pad"
_pad_conv_forced = [None]


@contextlib.contextmanager
def pad_conv_force(path):
    """Force reflection_pad_conv2d's path ("border" or "pad"; None = automatic) in a block."""
    if path is not None and path not in PAD_CONV_PATHS:
        raise ValueError(f"path must be one of {PAD_CONV_PATHS} or None, got {path!r}")
    prev, _pad_conv_forced[0] = _pad_conv_forced[0], path
    try:
        yield
    finally:
        _pad_conv_forced[0] = prev


def _cdiv(a, b):
    return -(-a // b)


def _axis_bands(n, k, p, s):
    """Along one axis (input size n, kernel k, padding p, stride s): (n_out, lo, hi) where the
    outputs [lo, hi) read no padding and [0, lo), [hi, n_out) do."""
    n_out = (n + 2 * p - k) // s + 1
    lo = min(_cdiv(p, s), n_out)
    hi = max(min(_cdiv(p + n - k + 1, s), n_out), lo)
    return n_out, lo, hi


def pad_conv_path(h, w, kh, kw, p, s, device_type="cuda") -> str:
    """The path reflection_pad_conv2d takes for an (h, w) input on a device type:
    "conv" (padding 0); "pad" (padded copy by the i2i_fast pad kernel + one aten conv, its
    backward the gather pad backward: the default on every device); "border" (zero-padded aten
    conv + up to 4 strip convolutions and their corrections, no padded copy) only when forced
    with pad_conv_force("border"). Why "pad" on CUDA too: it is the path with the fewest
    launches (2 forward), while "border" adds up to 4 strips of several launches each; at batch
    1 on a fast GPU a launch costs more than the padded copy it avoids. Not measured on a GPU
    yet: revisit with scripts/gpu_validate.sh's path timings. On CPU the strips' small oneDNN
    calls measured slower than the copy. The layer after a norm can also read the norm's
    out_pad output with padding 0 (convert does that): no pad launch at all."""
    if p == 0:
        return "conv"
    if _pad_conv_forced[0] is not None:
        return _pad_conv_forced[0]
    return PAD_CONV_DEFAULT


def _axis_slice(r0, r1, n, p):
    """Padded range [r0, r1) of an axis of size n padded by p on both sides, read as the reflect
    pad of x[a:e] by (before, after) cropped from `crop`: (a, e, before, after, crop)."""
    before, after = max(0, p - r0), max(0, r1 - p - n)
    a = 0 if before > 0 else r0 - p
    e = n if after > 0 else r1 - p
    if before > 0:
        e = max(e, min(n, before + 1))  # the pad must be smaller than the slice
    if after > 0:
        a = min(a, n - 1 - after)
    return a, e, before, after, r0 - (a + p - before)


def _strips(h, w, kh, kw, p, s):
    """The border output regions (o0, o1, q0, q1) with their padded input windows."""
    ho, lo_h, hi_h = _axis_bands(h, kh, p, s)
    wo, lo_w, hi_w = _axis_bands(w, kw, p, s)
    regions = [(0, lo_h, 0, wo), (hi_h, ho, 0, wo), (lo_h, hi_h, 0, lo_w), (lo_h, hi_h, hi_w, wo)]
    return [r for r in regions if r[1] > r[0] and r[3] > r[2]]


def _pad_kernels(device):
    """(fwd, bwd) pad ops for tensors on `device`: the C++ kernels (CPU; CUDA when built),
    else the Triton ones."""
    if device.type == "cuda" and not (_backend._C is not None and _backend._C.WITH_CUDA):
        if "triton" not in _PAD_OPS:
            raise RuntimeError("i2i_fast reflection_pad_conv2d on CUDA needs the CUDA kernels or triton")
        return _PAD_OPS["triton"]
    return torch.ops.i2i_fast.reflection_pad2d_fwd, torch.ops.i2i_fast.reflection_pad2d_bwd


class _Strip:
    """One border region: its outputs, the reflect-padded input window read as a pad of a slice
    of x, and the mask of the ring (padded positions that are not x)."""

    def __init__(self, region, h, w, kh, kw, p, s):
        self.o0, self.o1, self.q0, self.q1 = region
        r0, r1 = self.o0 * s, (self.o1 - 1) * s + kh
        c0, c1 = self.q0 * s, (self.q1 - 1) * s + kw
        self.rows = _axis_slice(r0, r1, h, p)
        self.cols = _axis_slice(c0, c1, w, p)
        self.r, self.c = (r0, r1), (c0, c1)
        self.h, self.w, self.p = h, w, p
        a, e, bt, bb, _ = self.rows
        ca, ce, bl, br, _ = self.cols
        self.pad = [bl, br, bt, bb]
        self.full = (bt + e - a + bb, bl + ce - ca + br)

    def ring(self, device):
        rr = torch.arange(*self.r, device=device)
        cc = torch.arange(*self.c, device=device)
        p = self.p
        return (((rr < p) | (rr >= p + self.h))[:, None] | ((cc < p) | (cc >= p + self.w))[None, :])

    def input(self, x):
        a, e, _, _, cr = self.rows
        ca, ce, _, _, cc = self.cols
        xp = _pad_kernels(x.device)[0](x[:, :, a:e, ca:ce], self.pad)
        return xp[:, :, cr:cr + self.r[1] - self.r[0], cc:cc + self.c[1] - self.c[0]]

    def fold(self, gx, g_strip):
        """gx += the gradient of x through input(x), for g_strip the gradient of the window."""
        a, e, _, _, cr = self.rows
        ca, ce, _, _, cc = self.cols
        lr, lc = self.r[1] - self.r[0], self.c[1] - self.c[0]
        full = torch.nn.functional.pad(g_strip, (cc, self.full[1] - cc - lc, cr, self.full[0] - cr - lr))
        gx[:, :, a:e, ca:ce] += _pad_kernels(gx.device)[1](full.contiguous(), self.pad)


class _CudnnDeterministic:
    """cuDNN's weight-gradient algorithm follows a process-wide flag only (no per-call argument
    reaches it), so it is held True while any of this op's weight gradients runs on CUDA. A
    counter under a lock keeps overlapping calls (autograd runs CUDA backward on its own
    device threads) from restoring it early: the value the first caller found is restored by
    the last one to leave. Everything else passes determinism per call (_conv, _conv_dx)."""
    _lock = threading.Lock()
    _depth = 0
    _saved = False

    def __init__(self, device):
        self.on = device.type == "cuda"

    def __enter__(self):
        if self.on:
            cls = type(self)
            with cls._lock:
                if cls._depth == 0:
                    cls._saved = torch.backends.cudnn.deterministic
                    torch.backends.cudnn.deterministic = True
                cls._depth += 1

    def __exit__(self, *exc):
        if self.on:
            cls = type(self)
            with cls._lock:
                cls._depth -= 1
                if cls._depth == 0:
                    torch.backends.cudnn.deterministic = cls._saved


def _conv(x, weight, bias, s, p):
    """aten convolution with cuDNN's deterministic algorithms asked for in this call only."""
    cudnn = torch.backends.cudnn
    return torch.ops.aten._convolution(x, weight, bias, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                       cudnn.benchmark, True, cudnn.enabled, cudnn.allow_tf32)


def _conv_dx(grad, x, weight, s, p):
    """Input gradient of _conv: the transposed convolution, deterministic in this call."""
    cudnn = torch.backends.cudnn
    extra = [x.shape[d] - ((grad.shape[d] - 1) * s - 2 * p + weight.shape[d]) for d in (2, 3)]
    return torch.ops.aten._convolution(grad, weight, None, [s, s], [p, p], [1, 1], True, extra, 1,
                                       cudnn.benchmark, True, cudnn.enabled, cudnn.allow_tf32)


def _conv_bwd(grad, x, weight, bias_sizes, s, p, need_x, need_w, need_b):
    """(grad x, grad weight, grad bias) of _conv; only the weight and bias gradients need the
    process-wide flag (_CudnnDeterministic)."""
    gx = _conv_dx(grad, x, weight, s, p) if need_x else None
    gw = gb = None
    if need_w or need_b:
        with _CudnnDeterministic(x.device):
            _, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [s, s], [p, p], [1, 1], False, [0, 0], 1, [False, need_w, need_b])
    return gx, gw, gb


def _conv_out_shape(x, weight, p, s):
    n, _, h, w = x.shape
    co, _, kh, kw = weight.shape
    return (n, co, (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1)


def _pad_conv_impl(x, weight, bias, padding, stride):
    p, s = int(padding), int(stride)
    kh, kw = weight.shape[2:]
    h, w = x.shape[2:]
    path = pad_conv_path(h, w, kh, kw, p, s, x.device.type)
    if path == "pad":
        y = _conv(_pad_kernels(x.device)[0](x, [p] * 4), weight, bias, s, 0)
        return y.contiguous(memory_format=_fmt(x))
    y = _conv(x, weight, bias, s, p)
    if path == "border":
        for region in _strips(h, w, kh, kw, p, s):
            st = _Strip(region, h, w, kh, kw, p, s)
            y[:, :, st.o0:st.o1, st.q0:st.q1] = _conv(st.input(x), weight, bias, s, 0)
    return y.contiguous(memory_format=_fmt(x))


def _pad_conv_bwd_impl(grad, x, weight, padding, stride, mask):
    p, s = int(padding), int(stride)
    need_x, need_w, need_b = (bool(m) for m in mask)
    kh, kw = weight.shape[2:]
    h, w = x.shape[2:]
    path = pad_conv_path(h, w, kh, kw, p, s, x.device.type)
    bias_sizes = [weight.shape[0]] if need_b else None
    grad = grad.contiguous(memory_format=_fmt(x))
    if path == "pad":
        xp = _pad_kernels(x.device)[0](x, [p] * 4)
        gxp, gw, gb = _conv_bwd(grad, xp, weight, bias_sizes, s, 0, need_x, need_w, need_b)
        gx = _pad_kernels(x.device)[1](gxp, [p] * 4) if need_x else None
    else:
        gx, gw, gb = _conv_bwd(grad, x, weight, bias_sizes, s, p, need_x, need_w, need_b)
        if path == "border" and (need_x or need_w):
            # the strip corrections are added in fp32 (fp64 for fp64) and rounded once: in
            # fp16/bf16 each addition in the tensor's dtype would round the border again
            acc = torch.promote_types(x.dtype, torch.float32)
            gx_acc = gx.to(acc) if need_x else None
            gw_acc = gw.to(acc) if need_w else None
            w_acc = weight.to(acc)
            for region in _strips(h, w, kh, kw, p, s):
                st = _Strip(region, h, w, kh, kw, p, s)
                ring = st.ring(x.device)
                ring_in = torch.where(ring, st.input(x), 0).to(acc)
                gs = grad[:, :, st.o0:st.o1, st.q0:st.q1].to(acc)
                gi, gws, _ = _conv_bwd(gs, ring_in, w_acc, None, s, 0, need_x, need_w, False)
                if need_w:
                    gw_acc += gws
                if need_x:
                    st.fold(gx_acc, torch.where(ring, gi, 0))
            gx = gx_acc.to(x.dtype) if need_x else None
            gw = gw_acc.to(weight.dtype) if need_w else None
    return (gx if need_x else x.new_empty((0,)), gw if need_w else weight.new_empty((0,)),
            gb if need_b else weight.new_empty((0,)))


def _pad_conv_fake(x, weight, bias, padding, stride):
    return x.new_empty(_conv_out_shape(x, weight, int(padding), int(stride))).contiguous(memory_format=_fmt(x))


def _pad_conv_bwd_fake(grad, x, weight, padding, stride, mask):
    return (torch.empty_like(x, memory_format=_fmt(x)) if mask[0] else x.new_empty((0,)),
            torch.empty_like(weight) if mask[1] else weight.new_empty((0,)),
            weight.new_empty((weight.shape[0],)) if mask[2] else weight.new_empty((0,)))


def _pad_conv_setup(ctx, inputs, output):
    x, weight, bias, padding, stride = inputs
    ctx.save_for_backward(x, weight)
    ctx.cfg = (int(padding), int(stride), bias is not None)


def _pad_conv_backward(ctx, gy):
    x, weight = ctx.saved_tensors
    p, s, has_bias = ctx.cfg
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[1]), bool(has_bias and need[2])]
    if torch.is_grad_enabled():
        # create_graph=True: differentiate the unfused math (correct, slower, not fused)
        return _pad_conv_double_backward(gy, x, weight, has_bias, p, s, mask)
    gx, gw, gb = torch.ops.i2i_fast.reflection_pad_conv2d_bwd(gy, x, weight, p, s, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None)


def _pad_conv_double_backward(gy, x, weight, has_bias, p, s, mask):
    with torch.enable_grad():
        xp = reflection_pad2d(_backend.select(x.device), x, [p] * 4) if p else x
        bias = weight.new_zeros(weight.shape[0], requires_grad=True) if has_bias else None
        y = torch.nn.functional.conv2d(xp, weight, bias, s)
        wanted = [t for t, m in zip((x, weight, bias), mask) if m]
        grads = iter(torch.autograd.grad(y, wanted, gy, create_graph=True, allow_unused=True))
    return tuple(next(grads) if m else None for m in mask) + (None, None)


if _backend._C is not None:
    torch.library.impl("i2i_fast::reflection_pad_conv2d", ("cpu", "cuda"))(_pad_conv_impl)
    torch.library.impl("i2i_fast::reflection_pad_conv2d_bwd", ("cpu", "cuda"))(_pad_conv_bwd_impl)
    torch.library.register_fake("i2i_fast::reflection_pad_conv2d")(_pad_conv_fake)
    torch.library.register_fake("i2i_fast::reflection_pad_conv2d_bwd")(_pad_conv_bwd_fake)
    torch.library.register_autograd("i2i_fast::reflection_pad_conv2d", _pad_conv_backward,
                                    setup_context=_pad_conv_setup)
    _PAD_CONV_FN = _function(torch.ops.i2i_fast.reflection_pad_conv2d, _pad_conv_setup, _pad_conv_backward)


def reflection_pad_conv2d(backend: str, x, weight, bias, padding: int, stride: int):
    """conv2d(reflection_pad2d(x, padding), weight, bias, stride) on `backend`: the border path
    (aten conv + strips, i2i_fast pad kernels) for cpu/cuda/triton, the unfused math for
    reference or when the extension is missing."""
    if backend == "reference" or _backend._C is None:
        return reference.reflection_pad_conv2d(x, weight, bias, padding, stride)
    p, s = int(padding), int(stride)
    if x.device.type == "cpu" and pad_conv_path(x.shape[2], x.shape[3], weight.shape[2],
                                                weight.shape[3], p, s, "cpu") == "pad":
        # CPU "pad" path as a composition: i2i_fast's pad (gather backward) + aten conv2d, whose
        # autograd saves the padded input like eager's (CPU convolutions are deterministic).
        # Measured a few % faster than going through the custom op, which recomputes the pad in
        # its backward to hold only x.
        return torch.nn.functional.conv2d(reflection_pad2d(backend, x, [p] * 4), weight, bias, s)
    if torch.compiler.is_compiling():
        return torch.ops.i2i_fast.reflection_pad_conv2d(x, weight, bias, p, s)
    return _PAD_CONV_FN.apply(x, weight, bias, p, s)


# ---------------------------------------------------------------- losses
# loss_fwd(x[], y[], params, weights, kind, reduction, need_grad) -> (outs[], grads[]):
# forward computes the loss AND the gradient in one pass (one launch for all terms);
# loss_bwd only scales the saved gradients by grad_out (one launch).
_TRITON_LOSS = None
if _backend._triton_error is None:
    from .triton import losses as _TRITON_LOSS  # registers i2i_fast::triton_loss_*


def _loss_fwd_fake(x, y, params, weights, kind, reduction, need_grad):
    outs = [t.new_empty(t.shape) for t in x] if reduction == 0 else [x[0].new_empty(())]
    grads = [t.new_empty(t.shape) for t in x] if need_grad else []
    return outs, grads


def _loss_bwd_fake(grad_outs, saved, index, sign):
    return [saved[i].new_empty(saved[i].shape) for i in index]


def _loss_grad_plan(nx, has_y, need):
    """(index, sign) of the gradients loss_bwd must produce: x[t] gets +saved[t], y[t] (L1) gets
    -saved[t]; only the inputs that need a gradient."""
    index, sign = [], []
    for t in range(nx):
        if need[t]:
            index.append(t), sign.append(1.0)
    if has_y:
        for t in range(nx):
            if need[nx + t]:
                index.append(t), sign.append(-1.0)
    return index, sign


def _loss_backward_with(bwd):
    def backward(ctx, grad_outs, _grad_grads):
        nx, has_y = ctx.loss_cfg
        need = ctx.loss_need
        saved = list(ctx.saved_tensors)
        index, sign = _loss_grad_plan(nx, has_y, need)
        res = bwd([g for g in grad_outs], saved, index, sign) if index else []
        it = iter(res)
        gx = [next(it) if need[t] else None for t in range(nx)]
        gy = [next(it) if need[nx + t] else None for t in range(nx)] if has_y else []
        return gx, gy, None, None, None, None, None
    return backward


def _loss_setup(ctx, inputs, output):
    x, y, params, weights, kind, reduction, need_grad = inputs
    _, grads = output
    ctx.save_for_backward(*grads)
    ctx.loss_cfg = (len(x), bool(y))
    ctx.loss_need = [t.requires_grad for t in x] + ([t.requires_grad for t in y] if y else [])
    if not need_grad:
        ctx.loss_need = [False] * len(ctx.loss_need)
    ctx.mark_non_differentiable(*grads)


if _backend._C is not None:
    # the C++ op's autograd formula is a C++ node (csrc/losses.cpp, Autograd key)
    torch.library.register_fake("i2i_fast::loss_fwd")(_loss_fwd_fake)
    torch.library.register_fake("i2i_fast::loss_bwd")(_loss_bwd_fake)
if _TRITON_LOSS is not None:
    torch.library.register_autograd("i2i_fast::triton_loss_fwd",
                                    _loss_backward_with(_TRITON_LOSS.loss_bwd),
                                    setup_context=_loss_setup)


USE_CPP_AUTOGRAD = True  # False: the Python autograd.Function below (kept for comparison)
FAST_EAGER = True  # False: always call through the dispatcher (profilers then see every op)


def _below_autograd(op):
    """Eager calls of a C++ op from inside our autograd.Function skip the dispatcher's
    Autograd key (torch.library's Python autograd kernel costs ~20 us per call on CPU, more
    than the whole fused loss at batch 1) by redispatching straight to the backend key.
    Under torch.compile the plain op is traced instead."""
    keys = {"cpu": torch._C.DispatchKeySet(torch._C.DispatchKey.CPU),
            "cuda": torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)}

    def call(first, *args):
        if FAST_EAGER and not torch.compiler.is_compiling():
            ks = keys.get(first.device.type)
            if ks is not None:
                return op.redispatch(ks, *args)
        return op(*args)
    return call


def _loss_function(fwd, bwd, fast=False):
    """autograd.Function around loss_fwd (the lean path: no torch.library autograd wrapper).
    Tensors come flat: x[0..nx), then y. Backward scales the saved gradients (loss_bwd); under
    create_graph it differentiates the reference formula instead, so double backward works."""
    if fast:
        fwd_call, bwd_call = _below_autograd(fwd), _below_autograd(bwd)
        fwd = lambda x, *a: fwd_call(x[0], x, *a)  # noqa: E731
        bwd = lambda go, saved, *a: bwd_call(saved[0], go, saved, *a)  # noqa: E731

    class LossFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, nx, has_y, params, weights, kind, reduction, *tensors):
            x, y = list(tensors[:nx]), list(tensors[nx:]) if has_y else []
            need = [bool(n) for n in ctx.needs_input_grad[6:]]
            outs, grads = fwd(x, y, params, weights, kind, reduction, any(need))
            ctx.save_for_backward(*grads)
            # the inputs are only read again by a create_graph backward (double backward): kept
            # as plain references, which costs nothing per call (save_for_backward of every
            # term would add ~2 us per term to the batch-1 step)
            ctx.inputs = tensors
            ctx.cfg = (nx, has_y, params, weights, kind, reduction, need, len(grads))
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grad_outs):
            nx, has_y, params, weights, kind, reduction, need, ng = ctx.cfg
            grads, tensors = list(ctx.saved_tensors), ctx.inputs
            if torch.is_grad_enabled():  # create_graph=True: differentiable reference math
                inputs = [t for t, n in zip(tensors, need) if n]
                with torch.enable_grad():
                    x, y = list(tensors[:nx]), list(tensors[nx:]) if has_y else []
                    outs = reference.loss_value(x, y, params, weights, kind, reduction)
                    gs = iter(torch.autograd.grad(outs, inputs, list(grad_outs), create_graph=True,
                                                  allow_unused=True))
                res = [next(gs) if n else None for n in need]
                res = [torch.zeros_like(t) if n and r is None else r for r, n, t in zip(res, need, tensors)]
                return (None,) * 6 + tuple(res)
            index, sign = _loss_grad_plan(nx, has_y, need)
            res = iter(bwd(list(grad_outs), grads, index, sign) if index else [])
            return (None,) * 6 + tuple(next(res) if n else None for n in need)
    return LossFn


_LOSS_FN = {}
if _backend._C is not None:
    _LOSS_FN["cpu"] = _LOSS_FN["cuda"] = _loss_function(torch.ops.i2i_fast.loss_fwd.default,
                                                        torch.ops.i2i_fast.loss_bwd.default, fast=True)
if _TRITON_LOSS is not None:
    _LOSS_FN["triton"] = _loss_function(torch.ops.i2i_fast.triton_loss_fwd, torch.ops.i2i_fast.triton_loss_bwd)


def loss(backend: str, x, y, params, weights, kind, reduction):
    """Runs the fused loss on `backend`: list of outputs ([loss] or per-term for none)."""
    if backend == "reference":
        return reference.loss_value(list(x), list(y), list(params), list(weights), kind, reduction)
    if backend in ("cpu", "cuda") and USE_CPP_AUTOGRAD:
        # the C++ op with its C++ autograd node: no Python in forward or backward
        return torch.ops.i2i_fast.loss_fwd.default(x, y, params, weights, kind, reduction, False)[0]
    return list(_LOSS_FN[backend].apply(len(x), bool(y), list(params), list(weights), kind,
                                        reduction, *x, *y))


# ---------------------------------------------------------------- spectral norm
# sn_scale(W, u, v) -> (W / sigma, sigma), sigma = u . (W v); gradient for W only.
_TRITON_SN = None
if _backend._triton_error is None:
    from .triton import spectral_norm as _TRITON_SN  # registers i2i_fast::triton_sn_scale*


def _sn_fake(weight, u, v):
    return torch.empty_like(weight, memory_format=torch.contiguous_format), \
        weight.new_empty((), dtype=reference.stats_dtype(weight))


def _sn_bwd_fake(grad, weight, u, v, sigma):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


if _backend._C is not None:
    torch.library.register_fake("i2i_fast::sn_scale")(_sn_fake)
    torch.library.register_fake("i2i_fast::sn_scale_bwd")(_sn_bwd_fake)


class _SnTriton(torch.autograd.Function):
    """sn_scale on Triton (the C++ ops have a C++ autograd node)."""
    @staticmethod
    def forward(ctx, weight, u, v):
        out, sigma = torch.ops.i2i_fast.triton_sn_scale(weight, u, v)
        ctx.save_for_backward(weight, u, v, sigma)
        ctx.mark_non_differentiable(sigma)
        return out, sigma

    @staticmethod
    def backward(ctx, g, _gsigma):
        weight, u, v, sigma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops, fp32+
            w, uu, vv, gg = (t if t.dtype == torch.float64 else t.float() for t in (weight, u, v, g))
            sg = torch.dot(uu, torch.mv(w, vv))
            return (gg / sg - (gg * w).sum() / (sg * sg) * torch.outer(uu, vv)).to(weight.dtype), None, None
        return torch.ops.i2i_fast.triton_sn_scale_bwd(g, weight, u, v, sigma), None, None


def sn_scale(backend: str, weight, u, v):
    """(weight / sigma, sigma) of the (O, K) weight matrix on `backend`."""
    if backend == "reference":
        return reference.sn_scale(weight, u, v)
    if backend == "triton":
        return _SnTriton.apply(weight, u, v)
    return torch.ops.i2i_fast.sn_scale.default(weight, u, v)
