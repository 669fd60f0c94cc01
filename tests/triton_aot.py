"""Compile recorded Triton launches ahead of time for a GPU target, with no GPU and no driver
(tests/test_triton_compile.py records them under the interpreter and runs this file in a
process without TRITON_INTERPRET, so @triton.jit gives real JITFunctions).

    python tests/triton_aot.py SPECS.json [ARCH] [--facts FACTS.json]   # ARCH: 90 (H100/H200) by default

SPECS: a list of {"module", "kernel", "signature", "constexprs", "attrs", "num_warps"} (attrs:
[parameter index, Triton's specialization key] pairs); a constexpr given
as {"tl": "fp32"} is that triton.language dtype. Exit code 0: all compiled; 1: failures
(printed); 3: this triton has no ahead-of-time API we know (the caller skips).
--facts: also write each specialization's registers, spills, stack (from Triton's ptxas -v log)
and shared memory (scripts/compiler_facts.py makes the table). Triton's cache is then a directory
of its own ($I2I_FAST_FACTS_CACHE, ~/.triton/i2i_fast_facts by default) that keeps each kernel's
facts next to it: a cache hit runs no ptxas."""

import contextlib
import importlib
import inspect
import io
import json
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor


def _compile(args):
    """Compile one spec: (error report or '', compiler facts or None)."""
    s, arch, facts = args
    import triton
    import triton.language as tl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(s["module"]), s["kernel"])
    consts = {k: tl.dtype(v["tl"]) if isinstance(v, dict) else v for k, v in s["constexprs"].items()}
    attrs = {(i,): BaseBackend.parse_attr(key) for i, key in s.get("attrs", [])}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            k = triton.compile(
                ASTSource(fn=fn, signature=s["signature"], constexprs=consts, attrs=attrs),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": s["num_warps"]},
            )
    except Exception:  # noqa: BLE001 (report every failing specialization)
        return (
            f"FAILED {s['module']}.{s['kernel']} {s['signature']} {s['constexprs']}\n" + traceback.format_exc(limit=3)
        ), None
    if not facts:
        return "", None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from compiler_facts import parse_ptxas

    saved = os.path.join(os.environ["TRITON_CACHE_DIR"], f"{k.hash}.facts.json")
    ran = list(parse_ptxas(log.getvalue()).values())
    if ran:
        with open(saved, "w") as f:
            json.dump(ran[0], f)
    elif not os.path.exists(saved):
        return f"{s['module']}.{s['kernel']}: cached without its facts; delete {os.environ['TRITON_CACHE_DIR']}", None
    with open(saved) as f:
        facts = json.load(f)
    fp64 = any(v == "*fp64" for v in s["signature"].values())  # the float64 (test oracle) instances
    return "", dict(
        facts, module=s["module"], kernel=s["kernel"], num_warps=s["num_warps"], shared=k.metadata.shared, fp64=fp64
    )


def main() -> int:
    import triton

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource

        if "constexprs" not in inspect.signature(ASTSource).parameters:
            raise ImportError("ASTSource takes no constexprs")
    except ImportError as e:
        print(f"no ahead-of-time compile API we know in triton {triton.__version__}: {e}")
        return 3
    args = sys.argv[1:]
    facts_out = None
    if "--facts" in args:
        i = args.index("--facts")
        facts_out = args[i + 1]
        del args[i : i + 2]
    specs = json.load(open(args[0]))
    arch = int(args[1]) if len(args) > 1 else 90
    if facts_out:
        os.environ.update(
            TRITON_DUMP_PTXAS_LOG="1",
            TRITON_CACHE_DIR=os.environ.get(
                "I2I_FAST_FACTS_CACHE", os.path.expanduser(os.path.join("~", ".triton", "i2i_fast_facts"))
            ),
        )
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_compile, [(s, arch, bool(facts_out)) for s in specs], chunksize=8))
    errors = [e for e, _ in results if e]
    for e in errors:
        print(e)
    if facts_out and not errors:
        with open(facts_out, "w") as f:
            json.dump([x for _, x in results], f)
    print(f"compiled {len(specs) - len(errors)}/{len(specs)} specializations for sm_{arch}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
