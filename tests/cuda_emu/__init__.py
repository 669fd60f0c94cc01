"""The CUDA emulation: kernels/*.cu compiled as host C++ and run on CPU tensors (tests only).

`load()` builds the extension `i2i_fast_emu` from the SAME kernels/*.cu files: each launch
`k<<<cfg>>>(args)` is rewritten to `::i2i_emu::launch("k", LaunchCfg(cfg), k, args)` (lines
kept, so errors point at the .cu), `__shared__` declarations become block-shared statics
that the runtime sizes and poisons, the c10/cuda headers are shadowed by include/c10/cuda/,
emu.h is force-included for the builtins, and TORCH_LIBRARY_IMPL(i2i_fast, CUDA) becomes
TORCH_LIBRARY_IMPL(i2i_fast_emu, CPU) with the schemas generated from csrc/ops.cpp.
`EmulatedCuda()` is a TorchDispatchMode that sends every i2i_fast op with a CUDA kernel to
its emulated twin, so the whole Python/C++ stack (autograd nodes, plane_norm, losses, the
pad convolution) runs the CUDA kernels on CPU tensors.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import zlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS = os.path.join(ROOT, "kernels")


def kernel_sources() -> list[str]:
    return sorted(os.path.join(KERNELS, f) for f in os.listdir(KERNELS) if f.endswith(".cu"))


def global_kernels() -> dict[str, str]:
    """{kernel name: file} of every __global__ function in kernels/."""
    out = {}
    for path in kernel_sources():
        src = open(path).read()
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", src):
            out[m.group(1)] = os.path.basename(path)
    return out


def _matching(src: str, i: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    for k in range(i, len(src)):
        if src[k] == open_ch:
            depth += 1
        elif src[k] == close_ch:
            depth -= 1
            if depth == 0:
                return k
    raise ValueError(f"unbalanced {open_ch}{close_ch} at offset {i}")


def rewrite_launches(src: str) -> str:
    """k<...><<<cfg>>>(args) -> ::i2i_emu::launch("k", LaunchCfg(cfg), [&](auto&&... a) { k<...>(a...); }, args)."""
    out, i = [], 0
    while (j := src.find("<<<", i)) >= 0:
        k, depth = j, 0  # start of the kernel expression: scan back over balanced <> and ()
        while k > 0:
            ch = src[k - 1]
            if ch in ">)":
                depth += 1
            elif ch in "<(":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (ch.isspace() or ch in ";{},="):
                break
            k -= 1
        kernel = src[k:j]
        e = src.index(">>>", j)
        cfg = src[j + 3 : e]
        p = e + 3
        if src[p] != "(":
            raise ValueError(f"launch of {kernel} without an argument list")
        q = _matching(src, p, "(", ")")
        args = src[p + 1 : q]
        name = re.match(r"[A-Za-z_]\w*", kernel).group(0)
        out.append(src[i:k])
        out.append(
            f'::i2i_emu::launch("{name}", ::i2i_emu::LaunchCfg({cfg}), '
            f"[&](auto&&... a) {{ {kernel}(a...); }}" + (f", {args})" if args.strip() else ")")
        )
        i = q + 1
    out.append(src[i:])
    return "".join(out)


_SHARED = re.compile(r"__shared__([^;]*?)\b(\w+)\s*(\[[^\]]*\])?\s*;")


def _in_helper(src: str, pos: int) -> bool:
    """Whether the declaration at `pos` is in a __device__ function (a helper the block may call
    more than once), not in a __global__ kernel: the nearer of the two keywords before it."""
    return src.rfind("__device__", 0, pos) > src.rfind("__global__", 0, pos)


def _shared_repl(m) -> str:
    name, spec = m.group(2), m.group(1)
    align = "".join(a + " " for a in re.findall(r"alignas\([^)]*\)", spec))  # must lead the decl
    spec = re.sub(r"alignas\([^)]*\)", "", spec)
    helper = "true" if _in_helper(m.string, m.start()) else "false"
    return (
        f"{align}static thread_local{spec}{name}{m.group(3) or ''}; "
        f"::i2i_emu::note_shared(&{name}, sizeof({name})); "
        f'::i2i_emu::check::SharedScope i2i_scope_{name}(&{name}, sizeof({name}), "{name}", {helper});'
    )


def _split_params(params: str) -> list[str]:
    """The names of a parameter list's parameters (top-level commas; the last identifier of each)."""
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "<([" and 1 or ch in ">)]" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = []
    for p in (p.split("=")[0].strip() for p in parts):
        if p and p != "void":
            names.append(re.search(r"(\w+)\s*(?:\[[^\]]*\])?$", p).group(1))
    return names


def insert_kernel_checks(src: str, path: str) -> str:
    """At the top of every __global__ function body, on its line: a static_assert that its parameters
    fit the launch limit (I2I_EMU_PARAMS_FIT) and, with __launch_bounds__(N[, M]), a check of the
    block size against N at every launch."""
    out, i = [], 0
    where = os.path.relpath(path, ROOT)
    for m in re.finditer(r"__global__\s+void\s+", src):
        p, bounds = m.end(), None
        if src.startswith("__launch_bounds__", p):
            q = src.index("(", p)
            e = _matching(src, q, "(", ")")
            bounds, p = src[q + 1 : e], e + 1
        nm = re.compile(r"\s*(\w+)\s*\(").match(src, p)
        lp = nm.end() - 1
        rp = _matching(src, lp, "(", ")")
        body = src.index("{", rp)
        if ";" in src[rp:body]:  # a declaration
            continue
        name = nm.group(1)
        check = (
            f'I2I_EMU_PARAMS_FIT("{name}"' + "".join(f", decltype({a})" for a in _split_params(src[lp + 1 : rp])) + ");"
        )
        if bounds:
            line = src.count("\n", 0, m.start()) + 1
            check += f' ::i2i_emu::launch_bounds("{name}", "{where}:{line}", {bounds});'
        out += [src[i : body + 1], " " + check]
        i = body + 1
    out.append(src[i:])
    return "".join(out)


def _guard_ops(src: str, call: str) -> str:
    """m.impl("op", &fn) / m.def("schema", &fn) -> &::i2i_emu::Guarded<&fn>::call (emu.h: an
    emulated entry point flushes its streams at its end and poisons what it allocates)."""
    return re.sub(rf'(m\.{call}\(\s*"(?:[^"\\]|\\.)*"\s*,\s*)&(\w+)\s*\)', r"\1&::i2i_emu::Guarded<&\2>::call)", src)


def rewrite(src: str, path: str, ns: str = "i2i_fast_emu") -> str:
    """The emulated source of a kernels/*.cu (or the self-test) file, its ops registered in the
    library namespace `ns` (one per build variant, so two variants can load in one process)."""
    src = insert_kernel_checks(rewrite_launches(src), path)
    if path.endswith(".cuh"):  # device headers (reduce.cuh): shared memory only
        return f'#line 1 "{path}"\n' + _SHARED.sub(_shared_repl, src)
    src = _SHARED.sub(_shared_repl, src)
    if not path.startswith(KERNELS):  # the emulation's own self-test kernels
        src = re.sub(r"TORCH_LIBRARY(_FRAGMENT)?\(i2i_emu_selftest,", rf"TORCH_LIBRARY\1({selftest_ns(ns)},", src)
        return f'#line 1 "{path}"\n' + _guard_ops(src, "def")
    src, n = re.subn(r"TORCH_LIBRARY_IMPL\(\s*i2i_fast\s*,\s*CUDA\s*,", f"TORCH_LIBRARY_IMPL({ns}, CPU,", src)
    if n != 1:
        raise ValueError(f"{path}: expected one TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m), found {n}")
    return f'#line 1 "{path}"\n' + _guard_ops(src, "impl")


@functools.lru_cache(maxsize=None)
def schemas() -> tuple[str, ...]:
    """The schema strings of csrc/ops.cpp's TORCH_LIBRARY(i2i_fast, m) block, in order."""
    src = open(os.path.join(ROOT, "csrc", "ops.cpp")).read()
    src = re.sub(r"//[^\n]*", "", src)
    start = src.index("TORCH_LIBRARY(i2i_fast, m)")
    body = src[start : _matching(src, src.index("{", start), "{", "}")]
    out = []
    for m in re.finditer(r"m\.def\(\s*((?:\"(?:[^\"\\]|\\.)*\"\s*)+)\)", body):
        out.append("".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", m.group(1))))
    return tuple(out)


def _write(path: str, text: str) -> None:
    if not (os.path.exists(path) and open(path).read() == text):  # keep ninja incremental
        with open(path, "w") as f:
            f.write(text)


_LOADED = {}

# Headers every kernel file includes: parsed once into a precompiled header (half of each
# file's compile time is ATen/ATen.h). gcc falls back to the text if the .gch does not match.
_HEAVY = ("ATen/ATen.h", "ATen/Dispatch.h", "ATen/OpMathType.h", "torch/library.h")


def _prelude(gen: str, name: str, flags: list[str]) -> str:
    """gen/prelude.h (the heavy headers, then emu.h), precompiled with the flags
    torch.utils.cpp_extension compiles the sources with; returns its path for -include."""
    import sysconfig

    from torch.utils import cpp_extension

    path = os.path.join(gen, "prelude.h")
    _write(
        path,
        "// generated by tests/cuda_emu: force-included into every emulated source\n#pragma once\n"
        + "".join(f"#include <{h}>\n" for h in _HEAVY)
        + f'#include "{os.path.join(HERE, "emu.h")}"\n',
    )
    cmd = (
        [
            os.environ.get("CXX", "c++"),
            "-x",
            "c++-header",
            f"-DTORCH_EXTENSION_NAME={name}",
            "-DTORCH_API_INCLUDE_EXTENSION_H",
            f"-I{os.path.join(HERE, 'include')}",
        ]
        + [a for p in cpp_extension.include_paths() for a in ("-isystem", p)]
        + ["-isystem", sysconfig.get_path("include"), "-fPIC", "-std=c++20"]
        + flags
        + [path, "-o", path + ".gch"]
    )
    sign = (
        " ".join(cmd)
        + "\n"
        + torch.__version__
        + "\n"
        + "".join(open(os.path.join(HERE, h)).read() for h in ("emu.h", "check.h"))
    )
    sign_path = path + ".sign"
    if not (os.path.exists(path + ".gch") and os.path.exists(sign_path) and open(sign_path).read() == sign):
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            _write(sign_path, sign)
        except (OSError, subprocess.CalledProcessError) as e:  # the sources still build without it
            if os.path.exists(path + ".gch"):
                os.remove(path + ".gch")
            print(f"cuda_emu: no precompiled header ({getattr(e, 'stderr', e)})")
    return path


# Build variants: plain; under AddressSanitizer (bounds); traced (the memory-traffic model).
# plain and trace are instrumented: every access of the kernels reaches hooks.cpp through gcc's
# thread-sanitizer instrumentation (no sanitizer runtime linked), for the checks (check.h) and
# the tracer (trace.cpp). -g1: line tables, so that the checks and the tracer name source lines.
INSTRUMENTED = [
    "-g1",
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    "-mtls-dialect=gnu2",
    "-DI2I_EMU_CHECKED=1",
]
VARIANTS = {"plain": "i2i_fast_emu", "asan": "i2i_fast_emu_asan", "trace": "i2i_fast_emu_trace"}  # -> name


# The emulation's own kernels with planted defects: selftest.cu (barriers, block order, shared
# memory, launches, traffic), selftest_checks.cu (poison, streams, graphs, launch bounds).
SELFTESTS = [os.path.join(HERE, "selftest.cu"), os.path.join(HERE, "selftest_checks.cu")]
# Every uninitialized local starts as 0xFE bytes (gcc's pattern), not as what the reused fiber stack
# held. Without -fno-tree-fre gcc folds a value merged with the pattern-initialized local into the
# value (the read of `s` in `float s; if (c) s = 2; use(s)` becomes 2), which undoes the pattern.
# Not in the traced variant: its code generation is what the memory-traffic model measures.
POISON_LOCALS = ["-ftrivial-auto-var-init=pattern", "-fno-tree-fre"]


def selftest_ns(ns: str) -> str:
    """The self-test kernels' op namespace of the variant whose ops are in `ns`."""
    return "i2i_emu_selftest" + ns[len("i2i_fast_emu") :]


def load(asan: bool = False, verbose: bool = False, trace: bool = False):
    """Builds (once, incrementally) and imports the emulation; returns its Python module."""
    variant = "trace" if trace else "asan" if asan else "plain"
    if asan and trace:
        raise ValueError("the asan and trace variants are separate builds")
    if variant in _LOADED:
        return _LOADED[variant]
    from torch.utils import cpp_extension

    name = VARIANTS[variant]
    build = os.path.join(ROOT, "build", name)
    gen = os.path.join(build, "gen")
    os.makedirs(gen, exist_ok=True)
    sources = [
        os.path.join(HERE, f)
        for f in ["runtime.cpp", "streams.cpp", "check.cpp"]
        + ([] if asan else ["hooks.cpp"])
        + (["trace.cpp"] if trace else [])
    ]
    for path in kernel_sources():
        dst = os.path.join(gen, os.path.basename(path)[:-3] + ".cpp")
        _write(dst, rewrite(open(path).read(), path, name))
        sources.append(dst)
    for selftest in SELFTESTS:
        dst = os.path.join(gen, os.path.basename(selftest)[:-3] + ".cpp")
        _write(dst, rewrite(open(selftest).read(), selftest, name))
        sources.append(dst)
    for f in os.listdir(KERNELS):  # found first by #include "x.cuh" from gen/
        if f.endswith(".cuh"):
            _write(os.path.join(gen, f), rewrite(open(os.path.join(KERNELS, f)).read(), os.path.join(KERNELS, f), name))
    defs = "".join(f'  m.def("{s}");\n' for s in schemas())
    schema_cpp = os.path.join(gen, "schemas.cpp")
    _write(
        schema_cpp,
        "// generated from csrc/ops.cpp by tests/cuda_emu\n#include <torch/library.h>\n\n"
        f"TORCH_LIBRARY({name}, m) {{\n{defs}}}\n",
    )
    sources.append(schema_cpp)
    flags = ["-O1", f"-I{KERNELS}", "-Wno-unknown-pragmas"] + ([] if trace else POISON_LOCALS)
    ldflags = []
    if asan:
        flags += ["-g0", "-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    else:
        flags += INSTRUMENTED + (["-DI2I_EMU_TRACE=1"] if trace else [])
    # emu.h and check.h reach the sources through the precompiled header, which ninja's dependency
    # files do not list: their checksum in the command line rebuilds the sources when they change.
    headers = b"".join(open(os.path.join(HERE, h), "rb").read() for h in ("emu.h", "check.h"))
    flags.append(f"-DI2I_EMU_H_CRC={zlib.crc32(headers)}")
    flags = ["-include", _prelude(gen, name, flags)] + flags
    mod = cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=flags,
        extra_ldflags=ldflags,
        extra_include_paths=[os.path.join(HERE, "include")],
        build_directory=build,
        verbose=verbose,
    )
    _LOADED[variant] = mod
    return mod


def asan_runtime() -> str | None:
    """LD_PRELOAD value for a Python that loads the ASan build: gcc's libasan, and libstdc++
    (Python itself does not link it, and ASan must find the real __cxa_throw at start)."""
    libs = []
    for name in ("libasan.so", "libstdc++.so"):
        try:
            out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
        if not (os.path.isabs(out) and os.path.exists(out)):
            return None
        libs.append(out)
    return " ".join(libs)


@functools.lru_cache(maxsize=None)
def emulated_ops(ns: str = "i2i_fast_emu") -> frozenset[str]:
    """Names of the i2i_fast ops that have an emulated CUDA kernel (in `ns`, CPU key)."""
    names = set()
    for s in schemas():
        op = s.split("(", 1)[0].strip()
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{op}", "CPU"):
            names.add(op)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _op_names() -> frozenset[str]:
    return frozenset(s.split("(", 1)[0].strip() for s in schemas())


class EmulatedCuda(TorchDispatchMode):
    """Inside `with EmulatedCuda():`, i2i_fast ops on CPU tensors run their CUDA kernels
    through the emulation; ops without one (the C++ and Python composites) run their CPU
    kernel with the emulation still on, so the ops they call are emulated too."""

    redirected = 0  # calls sent to an emulated CUDA kernel (a test can see its op was routed)

    def __init__(self, asan: bool = False, trace: bool = False):
        super().__init__()
        self.asan, self.trace = asan, trace
        load(asan, trace=trace)
        self.ns = VARIANTS["trace" if trace else "asan" if asan else "plain"]
        self.emulated = emulated_ops(self.ns)
        self.cpp = _op_names()

    def __enter__(self):  # tensors allocated in the block start poisoned (NaN)
        self.emu = load(self.asan, trace=self.trace)
        self.emu.scope(True)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.emu.scope(False)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "i2i_fast":
            op = func._schema.name.split("::", 1)[1]
            if op in self.emulated:
                EmulatedCuda.redirected += 1
                return getattr(getattr(getattr(torch.ops, self.ns), op), func._overloadname)(*args, **kwargs)
            if op in self.cpp:
                with EmulatedCuda(self.asan, self.trace):
                    return func._op_dk(torch._C.DispatchKey.CPU, *args, **kwargs)
        if self.emu.capturing():
            from .checks import captured_host_op

            return captured_host_op(self.emu, func, args, kwargs)
        return func(*args, **kwargs)


class LaunchCounter:
    """`with LaunchCounter() as c: step()` runs the block with the CUDA kernels emulated and
    leaves c.launches (i2i_fast kernel launches in the block) and c.by_kernel. The main job's
    optional "our launches" column (`python -m i2i_fast.bench --launches`) uses it. It counts
    with the checks (check.h) off: a whole training step, several times slower with them; the
    tests run every kernel with them on."""

    def __enter__(self):
        self.emu = load()
        self.checks = self.emu.checks()
        self.emu.set_checks(False)
        self.before = self.emu.launch_counts()
        self.mode = EmulatedCuda()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.emu.set_checks(self.checks)
        after = self.emu.launch_counts()
        self.by_kernel = {k: n - self.before.get(k, 0) for k, n in after.items() if n != self.before.get(k, 0)}
        self.launches = sum(self.by_kernel.values())
        return False


class MemoryTrace:
    """`with MemoryTrace() as t: op()` runs the block with the CUDA kernels emulated by the traced
    build and leaves t.launches: per launch its kernel, grid, compulsory and modelled DRAM
    sectors, and per access site (file:line of the kernel source) its warp requests, bytes,
    32-byte sectors (global) or wavefronts (shared). A MODEL of a GPU's memory traffic (see
    docs/cuda_emulation.md), never a measurement. l2_bytes sizes the modelled L2."""

    def __init__(self, l2_bytes: int = 50 << 20):
        self.l2_bytes = l2_bytes

    def __enter__(self):
        self.emu = load(trace=True)
        self.emu.set_l2_bytes(self.l2_bytes)
        self.mode = EmulatedCuda(trace=True)
        self.emu.trace_start()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.launches = self.emu.trace_stop()
        names = _site_names(self.emu.trace_library(), {s["pc"] for lc in self.launches for s in lc["sites"]})
        for lc in self.launches:
            for s in lc["sites"]:
                s["site"] = names[s["pc"]]
        return False

    def sites(self, space: str = "global") -> dict:
        """{(kernel, site, "load"|"store"): totals of requests, bytes, sectors, wavefronts}."""
        out = {}
        for lc in self.launches:
            for s in lc["sites"]:
                if s["space"] == space:
                    key = (lc["kernel"], s["site"], "store" if s["write"] else "load")
                    tot = out.setdefault(
                        key, dict.fromkeys(("requests", "bytes", "sectors", "wavefronts", "ideal_wavefronts"), 0)
                    )
                    for k in tot:
                        tot[k] += s[k]
        return out

    def bytes(self) -> dict:
        """Totals over the launches: compulsory (each launch's distinct sectors read and written)
        and the L2 model's DRAM reads and writes, in bytes."""
        tot = lambda k: 32 * sum(lc[k] for lc in self.launches)  # noqa: E731
        return {
            "compulsory": tot("read_sectors") + tot("written_sectors"),
            "dram": tot("dram_read_sectors") + tot("dram_written_sectors"),
            "dram_read": tot("dram_read_sectors"),
            "dram_written": tot("dram_written_sectors"),
        }


def _site_names(lib: str, pcs) -> dict:
    """{pc: "file:line"}: the innermost inlined frame inside kernels/ or the self-test (the
    source line of the access), else the innermost frame."""
    pcs = sorted(pcs)
    out = subprocess.run(
        ["addr2line", "-e", lib, "-i", "-a"] + [hex(p) for p in pcs], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    frames, cur = {}, None
    for line in out:
        if line.startswith("0x"):
            cur = int(line, 16)
            frames[cur] = []
        elif cur is not None:
            frames[cur].append(line.split(" (discriminator")[0].strip())
    names = {}
    for pc in pcs:
        fr = frames.get(pc) or ["??:0"]
        ours = [f for f in fr if f.startswith((KERNELS, os.path.join(HERE, "selftest")))]
        names[pc] = os.path.relpath((ours or fr)[0], ROOT) if (ours or fr)[0].startswith("/") else (ours or fr)[0]
    return names
