"""Runs the emulated CUDA kernels built with AddressSanitizer (tests/test_cuda_emu.py starts it
with libasan preloaded): `kernels` covers every kernel over odd sizes, views with a storage
offset, channels_last, split planes and the loss ticket; `oob` runs the self-test's
one-past-the-end read, which ASan must report."""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
import torch  # noqa: E402

import cuda_emu  # noqa: E402

emu = cuda_emu.load(asan=True)
assert emu.asan, "the ASan build was not loaded"

if sys.argv[1] == "oob":
    x = torch.randn(1000)
    getattr(torch.ops, cuda_emu.selftest_ns(cuda_emu.VARIANTS["asan"])).run("shifted_copy", x, 1)
    print("oob: not caught")
    sys.exit(0)

from i2i_fast import functional as F  # noqa: E402

torch.manual_seed(0)
with cuda_emu.EmulatedCuda(asan=True):
    for sms in (1, 132):
        emu.set_sm_count(sms)
        for shape, cl in [
            ((2, 3, 5, 7), False),
            ((1, 3, 45, 47), False),
            ((1, 2, 48, 48), False),
            ((1, 5, 13, 11), True),
            ((2, 3, 1, 2), False),
            ((1, 2, 64, 65), False),
        ]:
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(shape).to(dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                n, c = shape[:2]
                w = torch.rand(c, requires_grad=True)
                b = torch.randn(c, requires_grad=True)
                rho = torch.rand(1, c, 1, 1, requires_grad=True)
                g2, b2 = torch.rand(n, c, requires_grad=True), torch.randn(n, c, requires_grad=True)
                pad = 1 if min(shape[2:]) > 1 else 0
                outs = [
                    F.instance_norm(x, weight=w, bias=b, activation="relu", residual=torch.randn_like(x)),
                    F.adalin(x, rho, g2, b2, out_pad=pad),
                    F.layer_norm(x, w, b),
                    F.batch_norm(x, torch.zeros(c), torch.ones(c), w, b, True, activation="relu"),
                    F.adain(x, g2.flatten(), b2.flatten()),
                    F.instance_norm(x, weight=w, bias=b, activation="relu", residual=torch.randn_like(x), out_pad=pad),
                ]
                if pad:
                    outs.append(F.reflection_pad2d(x, (1, 0, pad, 1)))
                for y in outs:
                    y.backward(torch.randn_like(y))
        base = torch.randn(1 + 2 * 4 * 8 * 8)  # a view with a storage offset
        xv = base[1:].view(2, 4, 8, 8).requires_grad_()
        F.instance_norm(xv, activation="tanh").sum().backward()
        preds = [torch.randn(2, 1, 100, 100, requires_grad=True), torch.randn(1, 1, 30, 30, requires_grad=True)]
        F.gan_loss(preds, True, "vanilla").backward()
        many = [torch.randn(1, 1, 3, 5, requires_grad=True) for _ in range(30)]
        F.gan_loss(many, False, "lsgan").backward()
        F.l1_loss([(preds[0], torch.randn(2, 1, 100, 100))], [10.0]).backward()
        wt = torch.randn(8, 45, requires_grad=True)
        u = torch.nn.functional.normalize(torch.randn(8), dim=0)
        v = torch.nn.functional.normalize(torch.randn(45), dim=0)
        F.spectral_norm_weight(wt, u, v).sum().backward()
print("launches:", emu.launch_counts())
print("kernels: ok")
