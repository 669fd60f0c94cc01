"""Train CycleGAN, U-GAT-IT (light) and UNIT for a few steps on synthetic images, the original
model and losses next to i2i_fast.convert(model) with the fused losses
(training_step(fused_losses=True)) from the same initial weights, and print both loss curves side
by side with the time per step and the ops one step dispatches; the curves also go into a PNG
(one panel per family, original solid, converted dashed; needs matplotlib).

    python examples/train_compare.py [--steps 8] [--device cpu|cuda] [--full] [--families cyclegan,ugatit,unit]
                                     [--png loss_curves.png]

Any family of i2i_fast.bench.steps.FAMILIES works (cyclegan, ugatit, stargan, pix2pix, munit, unit).

The CPU defaults (narrow nets, 64x64 images) take a minute or two on an idle 2-core CPU. Both runs
draw the same noise. Step 0 agrees to float32 rounding; Adam's early updates are close to
lr * sign(grad), so parameters whose gradient is near zero move differently under rounding and
the curves then drift apart slowly (~1e-4 relative after a few steps). In float64 the two agree
to ~1e-12 over a whole step (tests/test_convert.py).
"""

import argparse
import time

import torch

import i2i_fast
from i2i_fast.bench import steps as bench_steps


def train(family, variant, device, steps, small):
    runner = bench_steps.Runner(family, variant, device, small)
    losses, times = [], []
    for _ in range(steps):
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = runner.run()
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append({k: float(v) for k, v in out.items()})
    return runner, losses, times


def plot_curves(curves, path) -> bool:
    """curves: [(family, keys, original losses, converted losses)] -> a PNG at path, one panel
    per family, every loss both report: original solid, converted dashed in the same colour.
    False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, (family, keys, ref, conv) in zip(axes[0], curves):
        for k, color in zip(keys, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(keys)):
            ax.plot([r[k] for r in ref], color=color, label=f"{k} original")
            ax.plot([c[k] for c in conv], color=color, ls="--", label=f"{k} converted")
        if all(r[k] > 0 for r in ref + conv for k in keys):
            ax.set_yscale("log")  # G's total is 10-100x the D losses
        ax.set(title=family, xlabel="step", ylabel="loss")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="the papers' sizes (256x256, ngf 64) even on CPU")
    p.add_argument("--families", default="cyclegan,ugatit,unit", help=f"comma list of {','.join(bench_steps.FAMILIES)}")
    p.add_argument("--png", default="loss_curves.png", help="where the loss-curve chart goes")
    a = p.parse_args(argv)
    small = not a.full and a.device == "cpu"
    curves = []
    for family in a.families.split(","):
        runner, ref, t_ref = train(family, "eager", a.device, a.steps, small)
        conv_runner, conv, t_conv = train(family, "converted", a.device, a.steps, small)
        keys = ["G"] + sorted(k for k in ref[0].keys() & conv[0].keys() if k != "G")  # the losses both report
        curves.append((family, keys, ref, conv))
        print(f"\n{family}: {runner.what} on {a.device}")
        print(i2i_fast.plan(bench_steps.build(family, "eager", a.device, small)[0][0]).summary(), "(first network)")
        head = "  ".join(f"{k + ' orig':>10} {k + ' conv':>10}" for k in keys)
        print(f"{'step':>4}  {head}  {'ms orig':>8} {'ms conv':>8}")
        for i, (r, c) in enumerate(zip(ref, conv)):
            cols = "  ".join(f"{r[k]:10.5f} {c[k]:10.5f}" for k in keys)
            print(f"{i:4d}  {cols}  {t_ref[i] * 1e3:8.1f} {t_conv[i] * 1e3:8.1f}")
        # the first step includes one-time costs; the median of the rest is the steady state
        med = lambda ts: sorted(ts[1:])[len(ts[1:]) // 2] * 1e3 if len(ts) > 1 else ts[0] * 1e3
        print(
            f"median ms/step after the first: original {med(t_ref):.1f}, converted {med(t_conv):.1f} "
            f"({med(t_ref) / med(t_conv):.2f}x)"
        )
        ops = [bench_steps.count_ops(r) for r in (runner, conv_runner)]
        print(
            f"ops one step dispatches: original {ops[0]['ops']} (model {ops[0]['model']}), converted "
            f"{ops[1]['ops']} (model {ops[1]['model']}); the optimizer's {ops[0]['optimizer']} in both"
        )
    if plot_curves(curves, a.png):
        print(f"\nloss curves (original solid, converted dashed): {a.png}")
    else:
        print("\nno loss-curve chart: pip install matplotlib")


if __name__ == "__main__":
    main()
