"""Python side of the emulation's stream, graph and launch-resource checks (streams.cpp):
the emulated streams, the graph capture and replay, and the grid-only mode."""

from __future__ import annotations

import contextlib

import torch


def _copy_into(dst, src) -> None:
    if isinstance(dst, torch.Tensor):
        if dst is not src:
            dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            _copy_into(d, s)


def captured_host_op(emu, func, args, kwargs):
    """A host ATen op met while a graph is captured. On a GPU it would be a captured kernel; here it
    runs now (on buffers the captured kernels have not written yet) and again, in its place among
    the captured launches, at every replay, its results copied into the tensors it returned now.
    Views only alias their base: nothing to replay. The ATen calls of a C++ entry point (seen here
    when it is not redirected, as the self-tests' ops) run at capture time only: on a GPU they would
    be captured too, which the emulation does not do (docs/cuda_emulation.md)."""
    out = func(*args, **kwargs)
    if emu.in_op() or func.is_view or not isinstance(out, (torch.Tensor, tuple, list)):
        return out
    emu.capture_host(lambda: _copy_into(out, func(*args, **kwargs)))
    return out


class Graph:
    """`g.capture(fn, *static)` records fn(*static) (its launches, memsets and host ATen ops, as a
    CUDA graph capture records a call) and returns its outputs; `g.replay()` runs the recording
    again on the same buffers, so new inputs are copied into `static` first. The check's switch:
    `Graph(eager=True)` re-runs fn at each replay instead (all a harness without graph emulation
    can do), so a self-test shows what the replay catches."""

    def __init__(self, emu, eager: bool = False):
        self.emu, self.eager, self.id = emu, eager, None

    def capture(self, fn, *static):
        self.fn, self.static = fn, static
        if self.eager:
            self.out = fn(*static)
            return self.out
        self.emu.synchronize()
        self.id = self.emu.capture_begin()
        try:
            self.out = fn(*static)
        finally:
            self.emu.capture_end()
        return self.out

    def replay(self):
        if self.eager:
            _copy_into(self.out, self.fn(*self.static))
        else:
            self.emu.replay(self.id)
        return self.out

    def __del__(self):
        if self.id is not None:
            self.emu.graph_destroy(self.id)


def replay_matches_eager(emu, fn, static, inputs, eager: bool = False, equal=torch.equal):
    """Captures fn(*static), then for each tuple of new inputs: copies it into static, replays,
    and compares every output with an eager call fn(*new). Returns the list of mismatches."""
    g = Graph(emu, eager)
    g.capture(fn, *static)
    bad = []
    for k, new in enumerate(inputs):
        with torch.no_grad():
            for s, n in zip(static, new):
                s.copy_(n)
        got = g.replay()
        want = fn(*new)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        want = list(want) if isinstance(want, (tuple, list)) else [want]
        for i, (a, b) in enumerate(zip(got, want)):
            if not equal(a, b):
                bad.append(f"replay {k}, output {i}: {a.flatten()[:4].tolist()} != eager {b.flatten()[:4].tolist()}")
    return bad


@contextlib.contextmanager
def stream(emu, sid: int):
    """The block's emulated launches go to stream sid (emu.new_stream())."""
    before = emu.stream_id()
    emu.set_stream(sid)
    try:
        yield
    finally:
        emu.set_stream(before)


@contextlib.contextmanager
def grid_only(emu):
    """Launches are checked and logged (emu.grid_log()) but no block runs; tensors allocated in
    the block are untouched lazy mappings, so shapes of 2^33 elements cost no memory."""
    emu.grid_log()
    emu.set_grid_only(True)
    emu.scope(True)
    try:
        yield
    finally:
        emu.scope(False)
        emu.set_grid_only(False)
