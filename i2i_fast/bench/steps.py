"""Whole training steps (G and D: forward, backward, optimizer) of the reference models, for the
benchmarks (benchmarks/test_bench_steps.py, ``python -m i2i_fast.bench.steps``) and the example
(examples/train_compare.py).

Variants of one family, all from the same initial weights and data:
  eager             the original modules (i2i_fast.models) and the originals' losses
  converted         i2i_fast.convert(...) of them, and the step's losses through
                    i2i_fast.functional (gan_loss / l1_loss / bce_with_logits /
                    gradient_penalty, fewer fused calls): the step as an i2i_fast user writes it
  compile           torch.compile of the original modules
  converted+compile torch.compile of the converted modules, the fused losses
Sizes: the GPU shapes (docs/benchmarks.md) on CUDA; on CPU narrower nets and smaller images (``small``), so a
step takes tens of milliseconds to a second. Peak memory is torch.cuda.max_memory_allocated on
CUDA; on CPU it is not measured (None). Saved MiB (saved_peak_mib, eager variants, any device) is
the peak of what the autograd graphs hold for backward during a step. Ops (count_ops, eager
variants, any device) are the ops one step dispatches, the optimizer's counted apart.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import functional as FL
from ..convert import convert
from ..models import cyclegan, munit, stargan, ugatit, unit
from .counting import OpCounter, emulation
from .report import noisy_ratio
from .timing import (
    MachineLoad,
    Timing,
    default_device,
    involuntary_switches,
    measure,
    quiet_no_cuda_warning,
    synchronize,
    until_quiet,
)

VARIANTS = ("eager", "converted", "compile", "converted+compile")
COMPILE_OPTIONS = {"fallback_random": True}  # inductor config of the compiled variants (see build)


@dataclass
class Family:
    """nets: modules from one init; data: tensors; step(nets, opts, data, fused) -> dict of
    losses (fused: the losses through i2i_fast.functional); opts(nets) -> optimizers; what: the
    configuration in words."""

    nets: list
    data: tuple
    step: Callable
    opts: Callable
    what: str


def _adam(params, lr=2e-4, **kw):
    return torch.optim.Adam(list(params), lr=lr, betas=(0.5, 0.999), **kw)


def _img(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1).to(device)


def cyclegan_family(device, small):
    ngf, size = (8, 64) if small else (64, 256)
    nets = [cyclegan.define_G(3, 3, ngf, "resnet_9blocks", norm="instance") for _ in range(2)]
    nets += [cyclegan.define_D(3, ngf, "basic", norm="instance") for _ in range(2)]

    def opts(n):
        return (
            _adam(list(n[0].parameters()) + list(n[1].parameters())),
            _adam(list(n[2].parameters()) + list(n[3].parameters())),
        )

    def step(n, o, d, fused):
        return cyclegan.training_step(*n, *d, *o, fused_losses=fused)

    data = (_img((1, 3, size, size), device, 1), _img((1, 3, size, size), device, 2))
    return Family(nets, data, step, opts, f"ResNet-9 ngf={ngf} + 70x70 PatchGAN, 1x3x{size}x{size}")


def ugatit_family(device, small):
    ngf, size, nl = (8, 64, (6, 5)) if small else (64, 256, (7, 5))
    nets = [ugatit.ResnetGenerator(3, 3, ngf=ngf, n_blocks=4, img_size=size, light=True) for _ in range(2)]
    nets += [ugatit.Discriminator(3, ngf, n_layers=k) for k in (nl[0], nl[0], nl[1], nl[1])]

    def opts(n):
        return (
            _adam([p for g in n[:2] for p in g.parameters()], lr=1e-4, weight_decay=1e-4),
            _adam([p for g in n[2:] for p in g.parameters()], lr=1e-4, weight_decay=1e-4),
        )

    def step(n, o, d, fused):
        return ugatit.training_step(*n, *d, o[0], o[1], fused_losses=fused)

    data = (_img((1, 3, size, size), device, 1), _img((1, 3, size, size), device, 2))
    return Family(nets, data, step, opts, f"light, ngf={ngf}, 4 res blocks, D layers {nl}, 1x3x{size}x{size}")


def stargan_family(device, small):
    dim, size, batch, c_dim = (8, 64, 2, 5) if small else (64, 128, 16, 5)
    nets = [stargan.Generator(dim, c_dim, 6), stargan.Discriminator(size, dim, c_dim, 6)]

    def opts(n):
        return _adam(n[0].parameters(), lr=1e-4), _adam(n[1].parameters(), lr=1e-4)

    def step(n, o, d, fused):
        """Solver.train(): D step (WGAN-GP + classification), then G step (every step here)."""
        G, D = n
        x, c_org, c_trg = d
        batch = x.size(0)
        out_src, out_cls = D(x)
        x_fake = G(x, c_trg)
        out_fake, _ = D(x_fake.detach())
        if fused:
            d_adv = FL.gan_loss([out_src, out_fake], [True, False], "wgangp")
            d_cls = FL.bce_with_logits((out_cls, c_org), 1 / batch, reduction="sum")
            d_gp = FL.gradient_penalty(D, x, x_fake, 10.0)
            d_loss = d_adv + d_cls + d_gp
        else:
            d_cls = stargan.classification_loss(out_cls, c_org)
            alpha = torch.rand(batch, 1, 1, 1, device=x.device)
            x_hat = (alpha * x.data + (1 - alpha) * x_fake.data).requires_grad_(True)
            d_gp = stargan.gradient_penalty(D(x_hat)[0], x_hat)
            d_loss = -out_src.mean() + out_fake.mean() + d_cls + 10 * d_gp
        o[1].zero_grad(), o[0].zero_grad()
        d_loss.backward()
        o[1].step()
        x_fake = G(x, c_trg)
        out_src, out_cls = D(x_fake)
        x_rec = G(x_fake, c_org)
        if fused:
            g_loss = (
                FL.gan_loss(out_src, True, "wgangp", for_discriminator=False)
                + FL.bce_with_logits((out_cls, c_trg), 1 / batch, reduction="sum")
                + FL.l1_loss((x, x_rec), 10.0)
            )
        else:
            g_loss = (
                -out_src.mean() + stargan.classification_loss(out_cls, c_trg) + 10 * torch.mean(torch.abs(x - x_rec))
            )
        o[1].zero_grad(), o[0].zero_grad()
        g_loss.backward()
        o[0].step()
        return {"D": d_loss.detach(), "G": g_loss.detach()}

    g = torch.Generator().manual_seed(3)
    data = (
        _img((batch, 3, size, size), device, 1),
        torch.randint(0, 2, (batch, c_dim), generator=g).float().to(device),
        torch.randint(0, 2, (batch, c_dim), generator=g).float().to(device),
    )
    return Family(nets, data, step, opts, f"conv_dim={dim}, 6 res blocks, {batch}x3x{size}x{size}")


def pix2pix_family(device, small):
    ngf = 8 if small else 64
    nets = [
        cyclegan.define_G(3, 3, ngf, "unet_256", norm="batch", use_dropout=True),
        cyclegan.define_D(6, ngf, "basic", norm="batch"),
    ]

    def opts(n):
        return _adam(n[0].parameters()), _adam(n[1].parameters())

    def step(n, o, d, fused):
        """Pix2PixModel.optimize_parameters(): vanilla GAN on cat(A, B), L1 x 100."""
        G, D = n
        A, B = d
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = G(A)
        for p in D.parameters():
            p.requires_grad_(True)
        o[1].zero_grad()
        pf, pr = D(torch.cat([A, fake.detach()], 1)), D(torch.cat([A, B], 1))
        if fused:
            d_loss = FL.gan_loss([pf, pr], [False, True], "vanilla", weights=0.5)
        else:
            d_loss = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
        d_loss.backward()
        o[1].step()
        for p in D.parameters():
            p.requires_grad_(False)
        o[0].zero_grad()
        pf = D(torch.cat([A, fake], 1))
        if fused:
            g_loss = FL.gan_loss(pf, True, "vanilla", for_discriminator=False) + FL.l1_loss((fake, B), 100.0)
        else:
            g_loss = bce(pf, torch.ones_like(pf)) + 100 * nn.functional.l1_loss(fake, B)
        g_loss.backward()
        o[0].step()
        return {"D": d_loss.detach(), "G": g_loss.detach()}

    data = (_img((1, 3, 256, 256), device, 1), _img((1, 3, 256, 256), device, 2))
    return Family(nets, data, step, opts, f"U-Net-256 ngf={ngf} + PatchGAN, BatchNorm, 1x3x256x256")


def munit_family(device, small):
    dim, size, mlp = (8, 64, 32) if small else (64, 256, 256)
    gen = dict(dim=dim, style_dim=8, n_downsample=2, n_res=4, activ="relu", pad_type="reflect", mlp_dim=mlp)
    dis = dict(n_layer=4, gan_type="lsgan", dim=dim, norm="none", activ="lrelu", num_scales=3, pad_type="reflect")
    nets = [munit.AdaINGen(3, gen), munit.AdaINGen(3, gen), munit.MsImageDis(3, dis), munit.MsImageDis(3, dis)]

    def opts(n):
        return (
            _adam(list(n[0].parameters()) + list(n[1].parameters()), lr=1e-4, weight_decay=1e-4),
            _adam(list(n[2].parameters()) + list(n[3].parameters()), lr=1e-4, weight_decay=1e-4),
        )

    def step(n, o, d, fused):
        """MUNIT_Trainer: dis_update then gen_update (recon x10, style/content recon x1, GAN x1)."""
        gen_a, gen_b, dis_a, dis_b = n
        x_a, x_b = d
        l1 = nn.functional.l1_loss
        s_a = torch.randn(x_a.size(0), 8, 1, 1, device=x_a.device)
        s_b = torch.randn(x_a.size(0), 8, 1, 1, device=x_a.device)
        o[1].zero_grad()
        c_a, _ = gen_a.encode(x_a)
        c_b, _ = gen_b.encode(x_b)
        x_ba, x_ab = gen_a.decode(c_b, s_a), gen_b.decode(c_a, s_b)
        if fused:  # every scale of both discriminators, fake and real, in one call
            fakes = dis_a(x_ba.detach()) + dis_b(x_ab.detach())
            d_loss = FL.gan_loss(fakes + dis_a(x_a) + dis_b(x_b), [False] * len(fakes) + [True] * len(fakes))
        else:
            d_loss = dis_a.calc_dis_loss(x_ba.detach(), x_a) + dis_b.calc_dis_loss(x_ab.detach(), x_b)
        d_loss.backward()
        o[1].step()
        o[0].zero_grad()
        c_a, s_a_prime = gen_a.encode(x_a)
        c_b, s_b_prime = gen_b.encode(x_b)
        x_a_recon, x_b_recon = gen_a.decode(c_a, s_a_prime), gen_b.decode(c_b, s_b_prime)
        x_ba, x_ab = gen_a.decode(c_b, s_a), gen_b.decode(c_a, s_b)
        c_b_recon, s_a_recon = gen_a.encode(x_ba)
        c_a_recon, s_b_recon = gen_b.encode(x_ab)
        recon = [
            (x_a_recon, x_a),
            (x_b_recon, x_b),
            (s_a_recon, s_a),
            (s_b_recon, s_b),
            (c_a_recon, c_a),
            (c_b_recon, c_b),
        ]
        if fused:
            g_loss = FL.gan_loss(dis_a(x_ba) + dis_b(x_ab), True, for_discriminator=False) + FL.l1_loss(
                recon, [10.0, 10.0, 1.0, 1.0, 1.0, 1.0]
            )
        else:
            g_loss = (
                dis_a.calc_gen_loss(x_ba)
                + dis_b.calc_gen_loss(x_ab)
                + sum(w * l1(a, b) for w, (a, b) in zip((10, 10, 1, 1, 1, 1), recon))
            )
        g_loss.backward()
        o[0].step()
        return {"D": d_loss.detach(), "G": g_loss.detach()}

    data = (_img((1, 3, size, size), device, 1), _img((1, 3, size, size), device, 2))
    return Family(nets, data, step, opts, f"AdaINGen dim={dim} + 3-scale MsImageDis, 1x3x{size}x{size}")


def unit_family(device, small):
    """PyTorch-GAN unit.py: E1/E2 (shared last block), G1/G2 (shared first block), D1, D2;
    Adam(lr 1e-4, the script's default, betas (0.5, 0.999)): one over
    itertools.chain(E1, E2, G1, G2 parameters), one per discriminator. As in the script, the
    chain lists the shared blocks' parameters twice, so Adam steps them twice per iteration
    (torch warns about the duplicates; silenced here, the behaviour kept)."""
    dim, size = (8, 64) if small else (64, 256)
    nets = list(unit.build(dim=dim, n_downsample=2, img_size=size))

    def opts(n):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "optimizer contains a parameter group with duplicate parameters")
            opt_g = _adam([p for m in n[:4] for p in m.parameters()], lr=1e-4)
        return opt_g, _adam(n[4].parameters(), lr=1e-4), _adam(n[5].parameters(), lr=1e-4)

    def step(n, o, d, fused):
        return unit.training_step(*n, *d, *o, fused_losses=fused)

    data = (_img((1, 3, size, size), device, 1), _img((1, 3, size, size), device, 2))
    return Family(nets, data, step, opts, f"E/G dim={dim} (shared blocks) + 2 PatchGANs, 1x3x{size}x{size}")


FAMILIES = {
    "cyclegan": cyclegan_family,
    "ugatit": ugatit_family,
    "stargan": stargan_family,
    "pix2pix": pix2pix_family,
    "munit": munit_family,
    "unit": unit_family,
}


def build(family: str, variant: str, device, small=None, seed=0):
    """(nets, opts, step, data, what) of one variant; the same weights for every variant.
    step(nets, opts, data) runs one training step, with the fused losses for converted variants."""
    device = torch.device(device)
    small = device.type == "cpu" if small is None else small
    torch.manual_seed(seed)
    fam = FAMILIES[family](device, small)
    nets = [n.to(device) for n in copy.deepcopy(fam.nets)]  # one deepcopy: shared modules stay shared
    if "converted" in variant:  # converted together, so a module shared by two nets (UNIT) stays shared
        nets = list(convert(nn.ModuleList(nets)))
    if "compile" in variant:
        # inductor's own RNG draws other numbers than eager's generator for the same seed;
        # UNIT samples its latent code with randn inside the model, so its compiled first step
        # would differ from the original's. fallback_random keeps torch's generator in the
        # compiled graph (as eager: one call per draw), so every variant sees the same noise.
        nets = [torch.compile(n, options=COMPILE_OPTIONS) for n in nets]
    fused = "converted" in variant
    return nets, fam.opts(nets), lambda n, o, d: fam.step(n, o, d, fused), fam.data, fam.what


class Runner:
    """One (family, variant): run() does one training step (seeded, so every variant draws the
    same noise)."""

    def __init__(self, family, variant, device, small=None):
        self.family, self.variant, self.device = family, variant, torch.device(device)
        self.nets, self.opts, self.step, self.data, self.what = build(family, variant, device, small)
        self.n = 0

    def run(self):
        torch.manual_seed(1000 + self.n)
        self.n += 1
        return self.step(self.nets, self.opts, self.data)


def compare_losses(ref: dict, got: dict, rtol=1e-3, atol=1e-5):
    """(ok, detail): the first step's losses of a variant vs the original eager ones (same
    weights, data and noise), on the keys both report (the total G at least)."""
    if "G" not in ref.keys() & got.keys():
        return False, f"loss G missing: {sorted(ref)} vs {sorted(got)}"
    bad = {
        k: (float(ref[k]), float(got[k]))
        for k in ref.keys() & got.keys()
        if abs(float(ref[k]) - float(got[k])) > rtol * abs(float(ref[k])) + atol
    }
    return not bad, ("first-step losses match" if not bad else f"first-step losses differ: {bad}")


def run_variant(family, variant, device, ref_losses=None, budget_s=2.0, small=None, runner=None):
    """Builds the variant (or takes `runner`), runs its first step (parity vs ref_losses, also
    the warm-up and, for compiled variants, the compilation), then times it. Returns a dict."""
    r = runner or Runner(family, variant, device, small)
    losses = r.run()
    ok, detail = compare_losses(ref_losses, losses) if ref_losses is not None else (True, "reference")
    t, peak, noise = time_step(r, budget_s)
    saved = None if "compile" in variant else saved_peak_mib(r)
    ops = count_ops(r)
    return {
        "family": family,
        "variant": variant,
        "config": r.what,
        "device": str(r.device),
        "ms": t.median_ms,
        **t.spread(),
        "reps": len(t.times_ms),
        "noisy": noise,
        "peak_mib": peak,
        "saved_mib": saved,
        "ops": ops["ops"],
        "optimizer_ops": ops["optimizer"],
        "model_ops": ops["model"],
        **({"launches": ops["launches"]} if "launches" in ops else {}),
        "parity": ok,
        "parity_detail": detail,
        "losses": {k: float(v) for k, v in losses.items()},
    }


def saved_peak_mib(runner: Runner) -> float:
    """Peak MiB that autograd graphs hold for backward during one training step: the distinct
    non-parameter storages saved by the forward passes, counted while a graph holds them (saved
    tensor hooks). Device-independent, so it is measured on CPU too: the activation part of a
    step's peak memory (not the allocator's peak: no transients, optimizer state or gradients).
    Eager modules only (torch.compile's graphs do not run these hooks)."""
    params = {p.untyped_storage().data_ptr() for n in runner.nets for p in n.parameters()}
    live = {}  # storage address -> [holders, bytes]
    state = {"cur": 0, "peak": 0}

    class Held:
        __slots__ = ("t", "key")

        def __init__(self, t, key):
            self.t, self.key = t, key

        def __del__(self):
            ent = live[self.key]
            ent[0] -= 1
            if ent[0] == 0:
                state["cur"] -= ent[1]
                del live[self.key]

    def pack(t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in params or st.nbytes() == 0:
            return t
        ent = live.setdefault(key, [0, st.nbytes()])
        if ent[0] == 0:
            state["cur"] += ent[1]
            state["peak"] = max(state["peak"], state["cur"])
        ent[0] += 1
        return Held(t, key)

    def unpack(h):
        return h.t if isinstance(h, Held) else h

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        runner.run()
    return state["peak"] / 2**20


# Optional launch counter (the lead's CUDA-kernel emulation may provide one): a callable
# () -> context manager whose value, after the block, has a ``launches`` int (kernel launches
# of i2i_fast's kernels in the block). None: not reported.
LAUNCH_COUNTER = None


def use_emulated_launches() -> str | None:
    """Sets LAUNCH_COUNTER to the CUDA emulation of a source checkout (tests/cuda_emu: the
    kernels/*.cu launches a converted step makes on a GPU, counted on CPU; its first use builds
    it, about a minute). Returns None, or why it is not available."""
    global LAUNCH_COUNTER
    try:
        cuda_emu = emulation()
        cuda_emu.load()
    except Exception as e:  # noqa: BLE001 - an optional report
        return f"CUDA emulation unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    LAUNCH_COUNTER = cuda_emu.LaunchCounter
    return None


def count_ops(runner: Runner, run=None) -> dict:
    """Ops one training step dispatches, counted with a TorchDispatchMode (OpCounter) on
    any device: every aten / i2i_fast op that does work (views, detach, bare allocations and
    profiler records excluded). On a GPU at batch 1 each is a kernel launch (or a few), so this
    is the device-independent proxy for the launch-bound step time. Returns {"ops": total,
    "optimizer": those inside optimizer.step() (CPU Adam is per-tensor: ~10 ops per parameter;
    a GPU's foreach Adam is a few launches), "model": the rest (forward, backward, losses)}.
    Compiled variants are not counted (inductor's kernels are not dispatcher ops): None.
    run: what runs the step (default runner.run), e.g. saved_peak_mib's, to measure both at once."""
    if "compile" in runner.variant:
        return {"ops": None, "optimizer": None, "model": None}
    mode = OpCounter()
    hooks = []
    for o in runner.opts:
        hooks.append(o.register_step_pre_hook(lambda *a: mode.phase("optimizer")))
        hooks.append(o.register_step_post_hook(lambda *a: mode.phase(None)))
    try:
        with mode:
            ran = (run or runner.run)()
    finally:
        for h in hooks:
            h.remove()
    opt = mode.by_phase.get("optimizer", 0)
    res = {"ops": mode.total, "optimizer": opt, "model": mode.total - opt}
    if run is not None:
        res["ran"] = ran
    if LAUNCH_COUNTER is not None and "converted" in runner.variant:
        try:
            with LAUNCH_COUNTER() as c:
                runner.run()
            res["launches"] = c.launches
        except Exception:  # noqa: BLE001 - an optional report
            pass
    return res


def measure_family(
    family, device, variants=("eager", "converted"), reps=5, small=None, extras=True, progress=None
) -> dict:
    """The main job's whole-step row of one family: per variant, the first step's losses vs
    the original eager step (parity), then `reps` steps of the variants in alternation (median
    wall ms), and for the eager variants count_ops and saved_peak_mib (extras). A variant
    whose construction or first step raises (torch.compile of an original on some versions)
    is recorded with its error instead of failing the row. Returns {variant: dict}."""
    out, runners, first = {}, {}, {}
    for v in variants:
        if progress:
            progress(f"{family}: {v} first step" + (" (compiling)" if "compile" in v else ""))
        try:
            r = Runner(family, v, device, small)
            first[v] = r.run()
            runners[v] = r
        except Exception as e:  # noqa: BLE001 - recorded, shown in the table
            if v == "eager":
                raise
            out[v] = {"family": family, "variant": v, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    ref = first["eager"]
    if progress:
        progress(f"{family}: timing {', '.join(runners)} interleaved, {reps} steps each")
    (wall, _), noise = alternate(runners, reps)
    for v, r in runners.items():
        ok, detail = compare_losses(ref, first[v]) if v != "eager" else (True, "reference")
        out[v] = {
            "family": family,
            "variant": v,
            "config": r.what,
            "device": str(r.device),
            "ms": wall[v].median_ms,
            **wall[v].spread(),
            "reps": reps,
            "noisy": noise,
            "parity": ok,
            "parity_detail": detail,
            "losses": {k: float(x) for k, x in first[v].items()},
        }
        if extras and "compile" not in v:
            if progress:
                progress(f"{family}: {v}: ops and saved activations")
            ops = count_ops(r, lambda: saved_peak_mib(r))  # one step measures both
            out[v]["saved_mib"] = ops.pop("ran")
            out[v].update({f"{k}_ops" if k not in ("ops", "launches") else k: n for k, n in ops.items()})
    return out


def time_step(runner: Runner, budget_s=2.0, warmup=2):
    """(timing, peak, noise): the steps' Timing (re-measured while too wide:
    until_quiet), peak memory (CUDA: max_memory_allocated over a step, MiB; CPU: None,
    not measured) and why the timing is noisy (None when it is not)."""
    timings, noise = until_quiet(
        lambda: {"step": measure(runner.run, runner.device, budget_s=budget_s, warmup=warmup, min_reps=3, max_reps=50)}
    )
    t = timings["step"]
    peak = None
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        runner.run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    return t, peak, noise


def interleaved(family, device, variants=VARIANTS, reps=5, small=None):
    """Times the variants of one family in alternation (step of each, repeated `reps` times)
    so that they share the same background load; each variant's first step is checked against
    the original eager one first. Per variant: median wall ms and median CPU ms of this process
    (time.process_time: all threads; on a shared machine it moves less than wall time when
    other processes compete for the cores)."""
    runners = {v: Runner(family, v, device, small) for v in variants}
    first = {v: r.run() for v, r in runners.items()}  # parity, warm-up, compilation
    ref = first.get("eager")
    (wall, cpu), noise = alternate(runners, reps)
    out = {}
    for v, r in runners.items():
        ok, detail = compare_losses(ref, first[v]) if ref is not None and v != "eager" else (True, "reference")
        out[v] = {
            "family": family,
            "variant": v,
            "config": r.what,
            "ms": wall[v].median_ms,
            **wall[v].spread(),
            "cpu_ms": cpu[v].median_ms,
            "reps": reps,
            "noisy": noise,
            "parity": ok,
            "parity_detail": detail,
        }
    return out


def alternate(runners: dict, reps: int) -> tuple:
    """((wall, cpu), noise): `reps` steps of every runner in alternation, so they share the
    background load; wall and process-CPU Timing (ms) per variant, taken again while the
    wall times spread too wide (until_quiet); noise: why they still do, or None."""
    import time

    cpu: dict = {}

    def once():
        wall = {v: [] for v in runners}
        cpu.update({v: [] for v in runners})
        switches = {v: [] for v in runners}
        for _ in range(reps):
            for v, r in runners.items():
                synchronize(r.device)
                sw = involuntary_switches()
                w, c = time.perf_counter(), time.process_time()
                r.run()
                synchronize(r.device)
                wall[v].append((time.perf_counter() - w) * 1e3)
                cpu[v].append((time.process_time() - c) * 1e3)
                if sw is not None:
                    switches[v].append(involuntary_switches() - sw)
        return {
            v: Timing(t, switches[v] if runners[v].device.type == "cpu" and len(switches[v]) == len(t) else None)
            for v, t in wall.items()
        }

    wall, noise = until_quiet(once)
    return (wall, {v: Timing(t) for v, t in cpu.items()}), noise


def _per_variant(fam, device, small, measure):
    """{variant: measure(runner)} for eager and converted, after one warm-up step each; and
    the last runner (for its description)."""
    out = {}
    for v in ("eager", "converted"):
        r = Runner(fam, v, device, small)
        r.run()
        out[v] = measure(r)
    return out, r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2i_fast.bench.steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per variant")
    p.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="REPS",
        help="time the variants in alternation, REPS steps each (shared, noisy machines)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--full", action="store_true", help="the papers' sizes on CPU too (ngf=64, 256x256)")
    p.add_argument(
        "--saved",
        action="store_true",
        help="only the saved-activation peak (saved_peak_mib) of eager and converted, no timing",
    )
    p.add_argument(
        "--launches",
        action="store_true",
        help="with --ops: also the converted step's CUDA kernel launches, counted through the "
        "CUDA emulation of a source checkout (tests/cuda_emu)",
    )
    p.add_argument(
        "--ops",
        action="store_true",
        help="only the ops one step dispatches (count_ops), eager vs converted, optimizer apart; no timing",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    small = False if a.full else None
    quiet_no_cuda_warning()
    print(MachineLoad().header())
    if a.ops:
        if a.launches and (why := use_emulated_launches()):
            print(f"--launches: {why}")
        print(
            f"ops dispatched by one training step on {a.device} (count_ops: non-view, non-allocation "
            f"aten/i2i_fast ops), after one warm-up step; total = model (fwd, bwd, losses) + optimizer"
            + (
                "; our launches = kernels/*.cu launches of the converted step (CUDA emulation)"
                if LAUNCH_COUNTER
                else ""
            )
        )
        print(
            f"{'family':<9} {'eager':>7} {'converted':>9} {'ratio':>6}   {'model eager':>11} {'model conv':>10} "
            f"{'ratio':>6}   {'optimizer':>9}" + (f"   {'our launches':>12}" if LAUNCH_COUNTER else "")
        )
        for fam in a.families.split(","):
            n, r = _per_variant(fam, a.device, small, count_ops)
            e, c = n["eager"], n["converted"]
            launches = f"   {c['launches']:12d}" if "launches" in c else ""
            print(
                f"{fam:<9} {e['ops']:7d} {c['ops']:9d} {c['ops'] / e['ops']:6.3f}   {e['model']:11d} "
                f"{c['model']:10d} {c['model'] / e['model']:6.3f}   {e['optimizer']:9d}{launches}  [{r.what}]",
                flush=True,
            )
        return 0
    if a.saved:
        print(
            f"peak MiB held for backward during one training step on {a.device} (saved_peak_mib), "
            f"after one warm-up step; eager vs converted"
        )
        for fam in a.families.split(","):
            mib, r = _per_variant(fam, a.device, small, saved_peak_mib)
            print(
                f"{fam:<9} eager {mib['eager']:9.1f}  converted {mib['converted']:9.1f}  "
                f"ratio {mib['converted'] / mib['eager']:.3f}  [{r.what}]",
                flush=True,
            )
        return 0
    if a.interleave:
        print(
            f"training steps on {a.device} ({torch.get_num_threads()} threads), variants interleaved, "
            f"{a.interleave} steps each; median wall ms, min wall ms, median process CPU ms"
        )
        failed = 0
        for fam in a.families.split(","):
            res = interleaved(fam, a.device, a.variants.split(","), a.interleave, small)
            e = res.get("eager")
            for v, r in res.items():
                failed += not r["parity"]
                x = f"{e['ms'] / r['ms']:.2f}x wall, {e['cpu_ms'] / r['cpu_ms']:.2f}x cpu" if e else "-"
                if r["noisy"] and e:
                    x = noisy_ratio(e["ms"] / r["ms"], e["min_ms"] / r["min_ms"])
                print(
                    f"{fam:<9} {v:<18} {r['ms']:9.1f} {r['min_ms']:9.1f} {r['cpu_ms']:9.1f}  {x}  "
                    f"{'PASS' if r['parity'] else 'FAIL'} {r['parity_detail']}  [{r['config']}]",
                    flush=True,
                )
            if e and e["noisy"]:
                print(f"noisy: {fam}: {e['noisy']}")
        return 1 if failed else 0
    print(f"training steps on {a.device} ({torch.get_num_threads()} threads); median and min ms per step")
    print(
        f"{'family':<9} {'variant':<18} {'ms/step':>9} {'min ms':>9} {'x eager':>8} {'peak MiB':>9} "
        f"{'saved MiB':>9} {'ops':>6} {'model ops':>9}  parity"
    )
    failed = 0
    for fam in a.families.split(","):
        ref = run_variant(fam, "eager", a.device, budget_s=a.budget, small=small)
        for var in a.variants.split(","):
            res = ref if var == "eager" else run_variant(fam, var, a.device, ref["losses"], a.budget, small)
            failed += not res["parity"]
            peak = "n/m" if res["peak_mib"] is None else f"{res['peak_mib']:.0f}"
            saved = "-" if res["saved_mib"] is None else f"{res['saved_mib']:.1f}"
            ops = "-" if res["ops"] is None else str(res["ops"])
            mops = "-" if res["model_ops"] is None else str(res["model_ops"])
            x = (
                noisy_ratio(ref["ms"] / res["ms"], ref["min_ms"] / res["min_ms"])
                if res["noisy"] or ref["noisy"]
                else f"{ref['ms'] / res['ms']:7.2f}x"
            )
            print(
                f"{fam:<9} {var:<18} {res['ms']:9.1f} {res['min_ms']:9.1f} {x:>8} {peak:>9} "
                f"{saved:>9} {ops:>6} {mops:>9}  "
                f"{'PASS' if res['parity'] else 'FAIL'} {res['parity_detail']}  [{res['config']}]",
                flush=True,
            )
            if res["noisy"]:
                print(f"noisy: {fam} {var}: {res['noisy']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
