"""Compiler facts of every CUDA kernel instance and Triton kernel: compiler output, not a measurement.

CUDA (kernels/*.cu at sm_80 and sm_90): one nvcc run per file (both archs, the build's flags)
gives ptxas's resource usage of each kernel instance (registers, spill stores/loads, stack frame,
static shared memory) and the PTX it compiled, from which the width of every ld.global/st.global
is counted. The theoretical occupancy follows from those and the block size the host code
launches with (OCCUPANCY_MODEL). Vector paths are the instances whose template argument VEC is
above 1 (kernels/instance_norm.cu's 16-byte packs).

Triton (sm_90): registers, spills and shared memory of every specialization the ops launch, from
Triton's own ptxas run while tests/test_triton_compile.py compiles them (tests/triton_aot.py
--facts); summarised per kernel.

    python scripts/compiler_facts.py          # rewrites docs/compiler_facts.md (both sections)

tests/test_compiler_facts.py rebuilds the CUDA section and checks the budgets (check_budgets);
tests/test_triton_compile.py checks the Triton section. Both require the committed table to be
current when this machine's compilers are the ones that made it.
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, "docs", "compiler_facts.md")
ARCHS = (80, 90)
# Per SM: registers, threads, resident blocks, shared memory the blocks can get (the largest
# carveout; 1 KB of it is reserved per block on sm_80+). Registers are allocated per warp in
# units of 256 (ceil(regs * 32 / 256) * 256), shared memory in units of 128 bytes.
SM = {
    80: dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024),  # A100
    90: dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024),
}  # H100 / H200
OCCUPANCY_MODEL = (
    "occupancy = resident warps / 64, resident blocks = min(2048 / threads, 32, "
    "65536 / (warps per block * ceil(regs * 32 / 256) * 256), smem per SM / "
    "(static smem + 1 KB reserved, in 128-byte units)); smem per SM: 164 KB at "
    "sm_80 (A100), 228 KB at sm_90 (H100/H200)"
)
OCCUPANCY_TARGET = 0.5
# Kernels allowed below the sm_90 occupancy target, with the reason (shown in the table).
# (None at present: the 32-thread kernels of plane_norm.cu sit at 50%, the 32 blocks per SM limit.)
OCCUPANCY_REASONS: dict[str, str] = {}
SECTION = {"cuda": "<!-- cuda facts -->", "triton": "<!-- triton facts -->"}


# ---- compiling ----
def nvcc():
    """The nvcc setup.py would find: $CUDA_HOME, PATH, then /usr/local/cuda*."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    found = [os.path.join(home, "bin", "nvcc")] if home else []
    found += [shutil.which("nvcc") or ""] + sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((p for p in found if os.path.isfile(p)), None)


def nvcc_version():
    out = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
    return re.search(r"release [\d.]+, V[\d.]+", out).group(0)


def _flags():
    """setup.py's nvcc flags (-O3 -lineinfo, the macro) plus those torch's CUDAExtension adds."""
    from torch.utils import cpp_extension

    incs = [f"-I{p}" for p in cpp_extension.include_paths()]  # nvcc adds its own CUDA headers
    return (
        ["-O3", "-lineinfo", "-std=c++20", "-DI2I_FAST_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H"]
        + cpp_extension.COMMON_NVCC_FLAGS
        + incs
    )


def compile_file(cu):
    """(ptxas log, {arch: ptx}) of one .cu for every arch in ARCHS: one nvcc run, device code only."""
    with tempfile.TemporaryDirectory() as tmp:
        gencode = [a for arch in ARCHS for a in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
        cmd = [
            nvcc(),
            "--fatbin",
            "--resource-usage",
            "--keep",
            "--keep-dir",
            tmp,
            *gencode,
            *_flags(),
            cu,
            "-o",
            os.path.join(tmp, "out.fatbin"),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"nvcc failed on {cu}:\n{p.stdout}{p.stderr}")
        stem = os.path.splitext(os.path.basename(cu))[0]
        ptx = {a: open(os.path.join(tmp, f"{stem}.compute_{a}.ptx")).read() for a in ARCHS}
    return p.stdout + p.stderr, ptx


# ---- parsing ----
def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled):
    """'void i2i::(anonymous namespace)::k<1, 4, c10::Half, float>(...)' -> 'k<1, 4, Half, float>'."""
    s = re.sub(r"^void ", "", demangled.replace("(anonymous namespace)::", ""))
    depth = 0
    for i, ch in enumerate(s):  # cut the parameter list: the first '(' outside template brackets
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            s = s[:i]
            break
    return re.sub(r"\b(?:i2i|gpu|c10)::", "", s)


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)a?'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log):
    """{(mangled, arch): {regs, stack, spill_st, spill_ld, smem}} from nvcc --resource-usage."""
    facts, cur = {}, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = facts.setdefault((m.group(1), int(m.group(2))), {"stack": 0, "spill_st": 0, "spill_ld": 0})
        elif cur is not None and (m := _PROPS.search(line)):
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif cur is not None and "Used " in line:
            cur["regs"] = int(re.search(r"Used (\d+) registers", line).group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(sm.group(1)) if sm else 0
            cur = None
    return facts


_GLOBAL = re.compile(r"^\s*(?:@!?%p\d+\s+)?((ld|st)\.global[\w.:]*)\s", re.M)


def access_widths(ptx):
    """{mangled entry: Counter{('ld'|'st', bits): count}} of the global loads and stores in PTX."""
    out = {}
    for m in re.finditer(r"\.entry (\w+)\(", ptx):
        end = ptx.find(".entry ", m.end())
        body = ptx[m.end() : end if end > 0 else len(ptx)]
        c = collections.Counter()
        for op, kind in _GLOBAL.findall(body):
            parts = op.split(".")
            n = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
            c[kind, n * int(re.search(r"\d+$", parts[-1]).group(0))] += 1
        out[m.group(1)] = c
    return out


def _sources():
    return {p: open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu*")))}


def _split_top(s):
    """Split at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "<(["
        depth -= ch in ">)]"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


def block_sizes(sources):
    """{kernel: threads per block} from the launches kernel<...><<<grid, BLOCK, ...>>> in the
    sources; BLOCK is a literal or a `constexpr int` of kernels/."""
    consts = {
        m.group(1): int(m.group(2)) for t in sources.values() for m in re.finditer(r"constexpr int (\w+) = (\d+);", t)
    }
    sizes = collections.defaultdict(set)
    for t in sources.values():
        for m in re.finditer(r"(\w+_kernel)\b[^;{}]*?<<<(.*?)>>>", t, re.S):
            block = _split_top(m.group(2))[1]
            sizes[m.group(1)].add(int(block) if block.isdigit() else consts[block])
    bad = {k: v for k, v in sizes.items() if len(v) != 1}
    assert not bad, f"kernels launched with several block sizes: {bad}"
    return {k: v.pop() for k, v in sizes.items()}


_KERNEL = r"__global__ void (?:__launch_bounds__\((?:[^()]|\([^()]*\))*\) )?(\w+)\("


def template_params(sources):
    """{kernel: [template parameter names]} of every __global__ template in the sources."""
    out = {}
    for t in sources.values():
        for m in re.finditer(r"template <([^>]*)>\s*" + _KERNEL, t):
            out[m.group(2)] = [p.split()[-1] for p in _split_top(m.group(1))]
    return out


def stores_vec(sources):
    """Kernels whose body writes data with store<VEC> (their vector paths must store 16 bytes)."""
    out = set()
    for t in sources.values():
        for m in re.finditer(_KERNEL + r"[^{]*\{", t):
            depth, i = 1, m.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(t[i], 0)
                i += 1
            if "store<VEC>" in t[m.end() : i]:
                out.add(m.group(1))
    return out


def occupancy(arch, regs, smem, threads):
    sm, warps = SM[arch], math.ceil(threads / 32)
    by_threads = min(sm["threads"] // (warps * 32), sm["blocks"])
    by_regs = sm["regs"] // (warps * math.ceil(regs * 32 / 256) * 256) if regs else by_threads
    by_smem = sm["smem"] // (math.ceil((smem + 1024) / 128) * 128)
    return min(by_threads, by_regs, by_smem) * warps / (sm["threads"] // 32)


# ---- the CUDA facts ----
def cuda_facts(jobs=2):
    """[row] per kernel instance: file, name, base, args, threads, vec, and per arch the ptxas
    facts, occupancy and access widths."""
    sources = _sources()
    blocks, tparams = block_sizes(sources), template_params(sources)
    cus = [p for p in sources if p.endswith(".cu")]
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(compile_file, cus))
    rows = []
    for cu, (log, ptx) in zip(cus, results):
        res = parse_ptxas(log)
        widths = {a: access_widths(ptx[a]) for a in ARCHS}
        names = demangle(sorted({k for k, _ in res}))
        for mangled in sorted(names, key=lambda k: short_name(names[k])):
            name = short_name(names[mangled])
            base = name.split("<")[0]
            args = _split_top(name[len(base) + 1 : -1]) if "<" in name else []
            params = tparams.get(base, [])
            vec = int(args[params.index("VEC")]) if "VEC" in params else 1
            row = dict(
                file=os.path.relpath(cu, ROOT),
                name=name,
                base=base,
                args=args,
                threads=blocks[base],
                vec=vec,
                elem=args[params.index("T")] if "T" in params else "",
            )
            for a in ARCHS:
                f = res[mangled, a]
                row[a] = dict(f, occ=occupancy(a, f["regs"], f["smem"], blocks[base]), widths=widths[a][mangled])
            rows.append(row)
    return rows, stores_vec(sources)


def check_budgets(rows, writers):
    """The compiler targets (0 spills at sm_90, 128-bit vector loads and stores, occupancy
    >= 50%): [violation] (empty when all are met)."""
    bad = []
    for r in rows:
        f = r[90]
        if f["spill_st"] or f["spill_ld"]:
            bad.append(f"{r['name']}: {f['spill_st']} B spill stores, {f['spill_ld']} B spill loads at sm_90")
        if f["occ"] < OCCUPANCY_TARGET and r["base"] not in OCCUPANCY_REASONS:
            bad.append(f"{r['name']}: occupancy {f['occ']:.0%} at sm_90 and no reason in OCCUPANCY_REASONS")
    narrow = collections.defaultdict(set)  # (kernel, non-T args, arch, ld|st) -> narrow access counts per T
    for r in (r for r in rows if r["vec"] > 1):
        for a in ARCHS:
            w = r[a]["widths"]
            if not w["ld", 128]:
                bad.append(f"{r['name']}: no 128-bit global load at sm_{a} on a vector path")
            if r["base"] in writers and not w["st", 128]:
                bad.append(f"{r['name']}: no 128-bit global store at sm_{a} on a vector path")
            for kind in ("ld", "st"):
                n = sum(c for (k, bits), c in w.items() if k == kind and bits < 128)
                narrow[r["base"], a, kind].add(n)
    # A vector path's narrower accesses are its per-plane values (statistics, affine parameters):
    # as many for every element type. An element-wise access would add VEC of them (4 in fp32, 8 in fp16).
    for (base, a, kind), counts in narrow.items():
        if len(counts) > 1:
            bad.append(
                f"{base}: the vector paths' narrow {kind}.global counts differ by element type at "
                f"sm_{a} ({sorted(counts)}): element-wise accesses"
            )
    return bad


# Triton kernels allowed to spill outside their float64 instances, and why.
TRITON_SPILL_REASONS = {
    "plane_norm.plane_norm_coefs_bwd_kernel": "one program computes the whole (N, C) tile (up to 4096 planes) in "
    "fp64, since its reductions run over both N and C; it moves a few tens of KB",
}


def check_triton_budgets(facts):
    """0 spill bytes in the Triton specializations that training runs (fp32/fp16/bf16), except
    TRITON_SPILL_REASONS: [violation] (empty when met)."""
    bad = set()
    for f in facts:
        name = f["module"].rsplit(".", 1)[-1] + "." + f["kernel"]
        if f["spill_st"] + f["spill_ld"] and not f.get("fp64") and name not in TRITON_SPILL_REASONS:
            bad.add(f"{name}: spills at sm_90 (num_warps {f['num_warps']}, {f['regs']} registers)")
    return sorted(bad)


def _widths(c, kind):
    return " ".join(f"{bits}b×{c[k, bits]}" for k, bits in sorted(c, key=lambda kb: -kb[1]) if k == kind) or "-"


def cuda_section(rows):
    head = [
        "| file | kernel instance | threads | "
        + " | ".join(
            f"sm_{a} regs | sm_{a} spill st/ld B | sm_{a} stack B | sm_{a} smem B | sm_{a} occupancy" for a in ARCHS
        )
        + " | sm_90 ld.global widths | sm_90 st.global widths |",
        "|" + "---|" * (5 + 5 * len(ARCHS)),
    ]
    lines = []
    for r in rows:
        cells = [
            f"`{os.path.basename(r['file'])}`",
            f"`{r['name']}`" + (" (vector)" if r["vec"] > 1 else ""),
            str(r["threads"]),
        ]
        for a in ARCHS:
            f = r[a]
            cells += [
                str(f["regs"]),
                f"{f['spill_st']}/{f['spill_ld']}",
                str(f["stack"]),
                str(f["smem"]),
                f"{f['occ']:.0%}",
            ]
        cells += [_widths(r[90]["widths"], "ld"), _widths(r[90]["widths"], "st")]
        lines.append("| " + " | ".join(cells) + " |")
    vec = [r for r in rows if r["vec"] > 1]
    summary = [
        f"Compiler: nvcc {nvcc_version()}.",
        "",
        f"{len(rows)} kernel instances, {len(vec)} on vector paths (template argument VEC > 1).",
        "",
        *(
            f"- sm_{a}: max {max(r[a]['regs'] for r in rows)} registers, "
            f"{sum(r[a]['spill_st'] + r[a]['spill_ld'] for r in rows)} spill bytes in all, "
            f"max stack {max(r[a]['stack'] for r in rows)} B, "
            f"min occupancy {min(r[a]['occ'] for r in rows):.0%}"
            for a in ARCHS
        ),
        f"- vector paths at sm_90: loads {_widths(sum((r[90]['widths'] for r in vec), collections.Counter()), 'ld')}, "
        f"stores {_widths(sum((r[90]['widths'] for r in vec), collections.Counter()), 'st')} (all instances summed)",
        f"- below {OCCUPANCY_TARGET:.0%} occupancy at sm_90, by reason: "
        + (
            "; ".join(
                f"`{k}`: {v}"
                for k, v in OCCUPANCY_REASONS.items()
                if any(r["base"] == k and r[90]["occ"] < OCCUPANCY_TARGET for r in rows)
            )
            or "none"
        ),
        "",
        f"Occupancy model: {OCCUPANCY_MODEL}.",
        "",
    ]
    return "\n".join(summary + head + lines)


# ---- the Triton facts (tests/triton_aot.py --facts writes one entry per specialization) ----
def triton_section(facts):
    by = collections.defaultdict(list)
    for f in facts:
        by[f["module"].rsplit(".", 1)[-1] + "." + f["kernel"]].append(f)

    def spill(fs, fp64):  # max spill bytes of the float64 (test oracle) or the other instances
        return max([f["spill_st"] + f["spill_ld"] for f in fs if f.get("fp64", False) == fp64] or [0])

    head = [
        "| kernel | specializations | num_warps | regs (min-max) | spill bytes (max), fp32/fp16/bf16 "
        "| spill bytes (max), fp64 | stack B (max) | shared B (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = [
        f"| `{k}` | {len(v)} | {'/'.join(str(w) for w in sorted({f['num_warps'] for f in v}))} | "
        f"{min(f['regs'] for f in v)}-{max(f['regs'] for f in v)} | "
        f"{spill(v, False)} | {spill(v, True)} | {max(f['stack'] for f in v)} | "
        f"{max(f['shared'] for f in v)} |"
        for k, v in sorted(by.items())
    ]
    import triton

    summary = [
        f"Compiler: Triton {triton.__version__}.",
        "",
        f"{len(facts)} specializations of {len(by)} kernels at sm_90 (Triton's ptxas -v): max "
        f"{max(f['regs'] for f in facts)} registers, "
        f"{sum(f['spill_st'] + f['spill_ld'] for f in facts)} spill bytes in all "
        f"({sum(f['spill_st'] + f['spill_ld'] for f in facts if not f.get('fp64'))} outside the float64 "
        "instances, which only the tests run), max shared "
        f"{max(f['shared'] for f in facts)} B.",
        "",
    ]
    return "\n".join(summary + head + lines)


# ---- the table file ----
HEADER = """# Compiler facts (compiler output, not a measurement)

Generated by `scripts/compiler_facts.py` (`python scripts/compiler_facts.py` rewrites it; see its
docstring). `tests/test_compiler_facts.py` rebuilds the CUDA section and checks the budgets: 0
spill bytes at sm_90, 128-bit global loads and stores on the vector paths, occupancy >= 50% at
sm_90 or a reason; `tests/test_triton_compile.py` rebuilds the Triton section and checks 0 spill
bytes outside the float64 instances (which only the tests run) or a reason (TRITON_SPILL_REASONS).
"""


def read_section(kind, path=TABLE):
    text = open(path).read() if os.path.exists(path) else ""
    m = re.search(re.escape(SECTION[kind]) + r"\n(.*?)\n" + re.escape(SECTION[kind]), text, re.S)
    return m.group(1) if m else None


def write_section(kind, body, path=TABLE):
    parts = {k: read_section(k, path) or "(not generated yet)" for k in SECTION}
    parts[kind] = body
    with open(path, "w") as f:
        f.write(
            HEADER + f"\n## CUDA kernels (kernels/*.cu)\n\n{SECTION['cuda']}\n{parts['cuda']}\n{SECTION['cuda']}\n"
            f"\n## Triton kernels (i2i_fast/triton/)\n\n{SECTION['triton']}\n{parts['triton']}\n"
            f"{SECTION['triton']}\n"
        )


def main():
    rows, writers = cuda_facts()
    write_section("cuda", cuda_section(rows))
    for b in check_budgets(rows, writers):
        print("BUDGET:", b)
    env = dict(os.environ, I2I_FAST_UPDATE_FACTS="1")  # the AOT test writes the Triton section
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", os.path.join(ROOT, "tests", "test_triton_compile.py"), "-k", "sm90"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    print("wrote", os.path.relpath(TABLE, ROOT))


if __name__ == "__main__":
    main()
