"""reflection_pad_conv2d: conv2d(reflection_pad2d(x, p), weight, bias, stride) without
materializing the padding where that pays. How:

Strategy "border": conv2d(reflect_pad(x)) = conv2d(zero_pad(x)) on every output whose window
lies inside x; only the outputs within reach of the padding ring differ. So the forward runs
aten's convolution with zero padding p (cuDNN / mkldnn, no padded copy) and recomputes the
border outputs from thin reflect-padded strips (<= 4 small convolutions). The backward is
aten's zero-padded convolution_backward plus, per strip, the correction of the ring:
  dW += wgrad(ring part of the strip, grad of the strip's outputs)
  dx += reflection_pad2d_bwd(ring part of dgrad(grad of the strip's outputs))
(the ring part of the strip: the padded positions that are not x itself, i.e. where reflect
and zero padding differ). Every piece is a deterministic gather or an aten convolution run
with cudnn.deterministic. Path "pad" materializes the padded input instead (i2i_fast pad
kernel + one aten convolution; deterministic gather pad backward). padding == 0: "conv".
Default path: "pad" on every device (pad_conv_path says why); "border" only when forced.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from .. import _backend, reference
from .common import function, memory_format
from .reflection_pad import kernels, reflection_pad2d

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
        return ((rr < p) | (rr >= p + self.h))[:, None] | ((cc < p) | (cc >= p + self.w))[None, :]

    def input(self, x):
        a, e, _, _, cr = self.rows
        ca, ce, _, _, cc = self.cols
        xp = kernels(x.device).fwd(x[:, :, a:e, ca:ce], self.pad)
        return xp[:, :, cr : cr + self.r[1] - self.r[0], cc : cc + self.c[1] - self.c[0]]

    def fold(self, gx, g_strip):
        """gx += the gradient of x through input(x), for g_strip the gradient of the window."""
        a, e, _, _, cr = self.rows
        ca, ce, _, _, cc = self.cols
        lr, lc = self.r[1] - self.r[0], self.c[1] - self.c[0]
        full = torch.nn.functional.pad(g_strip, (cc, self.full[1] - cc - lc, cr, self.full[0] - cr - lr))
        gx[:, :, a:e, ca:ce] += kernels(gx.device).bwd(full.contiguous(), self.pad)


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
    return torch.ops.aten._convolution(
        x,
        weight,
        bias,
        [s, s],
        [p, p],
        [1, 1],
        False,
        [0, 0],
        1,
        cudnn.benchmark,
        True,
        cudnn.enabled,
        cudnn.allow_tf32,
    )


def _conv_dx(grad, x, weight, s, p):
    """Input gradient of _conv: the transposed convolution, deterministic in this call."""
    cudnn = torch.backends.cudnn
    extra = [x.shape[d] - ((grad.shape[d] - 1) * s - 2 * p + weight.shape[d]) for d in (2, 3)]
    return torch.ops.aten._convolution(
        grad,
        weight,
        None,
        [s, s],
        [p, p],
        [1, 1],
        True,
        extra,
        1,
        cudnn.benchmark,
        True,
        cudnn.enabled,
        cudnn.allow_tf32,
    )


def _conv_bwd(grad, x, weight, bias_sizes, s, p, need_x, need_w, need_b):
    """(grad x, grad weight, grad bias) of _conv; only the weight and bias gradients need the
    process-wide flag (_CudnnDeterministic)."""
    gx = _conv_dx(grad, x, weight, s, p) if need_x else None
    gw = gb = None
    if need_w or need_b:
        with _CudnnDeterministic(x.device):
            _, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [s, s], [p, p], [1, 1], False, [0, 0], 1, [False, need_w, need_b]
            )
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
        y = _conv(kernels(x.device).fwd(x, [p] * 4), weight, bias, s, 0)
        return y.contiguous(memory_format=memory_format(x))
    y = _conv(x, weight, bias, s, p)
    if path == "border":
        for region in _strips(h, w, kh, kw, p, s):
            st = _Strip(region, h, w, kh, kw, p, s)
            y[:, :, st.o0 : st.o1, st.q0 : st.q1] = _conv(st.input(x), weight, bias, s, 0)
    return y.contiguous(memory_format=memory_format(x))


def _pad_conv_bwd_impl(grad, x, weight, padding, stride, mask):
    p, s = int(padding), int(stride)
    need_x, need_w, need_b = (bool(m) for m in mask)
    kh, kw = weight.shape[2:]
    h, w = x.shape[2:]
    path = pad_conv_path(h, w, kh, kw, p, s, x.device.type)
    bias_sizes = [weight.shape[0]] if need_b else None
    grad = grad.contiguous(memory_format=memory_format(x))
    if path == "pad":
        xp = kernels(x.device).fwd(x, [p] * 4)
        gxp, gw, gb = _conv_bwd(grad, xp, weight, bias_sizes, s, 0, need_x, need_w, need_b)
        gx = kernels(x.device).bwd(gxp, [p] * 4) if need_x else None
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
                gs = grad[:, :, st.o0 : st.o1, st.q0 : st.q1].to(acc)
                gi, gws, _ = _conv_bwd(gs, ring_in, w_acc, None, s, 0, need_x, need_w, False)
                if need_w:
                    gw_acc += gws
                if need_x:
                    st.fold(gx_acc, torch.where(ring, gi, 0))
            gx = gx_acc.to(x.dtype) if need_x else None
            gw = gw_acc.to(weight.dtype) if need_w else None
    return (
        gx if need_x else x.new_empty((0,)),
        gw if need_w else weight.new_empty((0,)),
        gb if need_b else weight.new_empty((0,)),
    )


def _pad_conv_fake(x, weight, bias, padding, stride):
    return x.new_empty(_conv_out_shape(x, weight, int(padding), int(stride))).contiguous(memory_format=memory_format(x))


def _pad_conv_bwd_fake(grad, x, weight, padding, stride, mask):
    return (
        torch.empty_like(x, memory_format=memory_format(x)) if mask[0] else x.new_empty((0,)),
        torch.empty_like(weight) if mask[1] else weight.new_empty((0,)),
        weight.new_empty((weight.shape[0],)) if mask[2] else weight.new_empty((0,)),
    )


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
    torch.library.register_autograd(
        "i2i_fast::reflection_pad_conv2d", _pad_conv_backward, setup_context=_pad_conv_setup
    )
    _PAD_CONV_FN = function(torch.ops.i2i_fast.reflection_pad_conv2d, _pad_conv_setup, _pad_conv_backward)


def reflection_pad_conv2d(backend: str, x, weight, bias, padding: int, stride: int):
    """conv2d(reflection_pad2d(x, padding), weight, bias, stride) on `backend`: the border path
    (aten conv + strips, i2i_fast pad kernels) for cpu/cuda/triton, the unfused math for
    reference or when the extension is missing."""
    if backend == "reference" or _backend._C is None:
        return reference.reflection_pad_conv2d(x, weight, bias, padding, stride)
    p, s = int(padding), int(stride)
    if (
        x.device.type == "cpu"
        and pad_conv_path(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], p, s, "cpu") == "pad"
    ):
        # CPU "pad" path as a composition: i2i_fast's pad (gather backward) + aten conv2d, whose
        # autograd saves the padded input like eager's (CPU convolutions are deterministic).
        # Measured a few % faster than going through the custom op, which recomputes the pad in
        # its backward to hold only x.
        return torch.nn.functional.conv2d(reflection_pad2d(backend, x, [p] * 4), weight, bias, s)
    if torch.compiler.is_compiling():
        return torch.ops.i2i_fast.reflection_pad_conv2d(x, weight, bias, p, s)
    return _PAD_CONV_FN.apply(x, weight, bias, p, s)
