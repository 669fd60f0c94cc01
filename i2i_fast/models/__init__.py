"""Faithful re-implementations of the reference image-to-image translation networks, one module
per family, built from plain torch.nn layers with the originals' constructor arguments and
state_dict keys (each module names the original file it follows). They are the baselines that
``i2i_fast.convert`` rewrites and that the benchmarks time."""

from . import cyclegan, munit, stargan, ugatit, unit

__all__ = ["cyclegan", "ugatit", "stargan", "munit", "unit"]
