"""Compile recorded Triton launches ahead of time for a GPU target, with no GPU and no driver
(tests/test_triton_compile.py records them under the interpreter and runs this file in a
process without TRITON_INTERPRET, so @triton.jit gives real JITFunctions).

    python tests/triton_aot.py SPECS.json [ARCH]      # ARCH: 90 (H100/H200) by default

SPECS: a list of {"module", "kernel", "signature", "constexprs", "attrs", "num_warps"} (attrs:
[parameter index, Triton's specialization key] pairs); a constexpr given
as {"tl": "fp32"} is that triton.language dtype. Exit code 0: all compiled; 1: failures
(printed); 3: this triton has no ahead-of-time API we know (the caller skips)."""
import importlib
import inspect
import json
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor


def _compile(args):
    """Compile one spec; '' on success, else the error report."""
    s, arch = args
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.backends.compiler import BaseBackend
    fn = getattr(importlib.import_module(s["module"]), s["kernel"])
    consts = {k: tl.dtype(v["tl"]) if isinstance(v, dict) else v for k, v in s["constexprs"].items()}
    attrs = {(i,): BaseBackend.parse_attr(key) for i, key in s.get("attrs", [])}
    try:
        triton.compile(ASTSource(fn=fn, signature=s["signature"], constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32), options={"num_warps": s["num_warps"]})
        return ""
    except Exception:  # noqa: BLE001 (report every failing specialization)
        return (f"FAILED {s['module']}.{s['kernel']} {s['signature']} {s['constexprs']}\n"
                + traceback.format_exc(limit=3))


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
    specs = json.load(open(sys.argv[1]))
    arch = int(sys.argv[2]) if len(sys.argv) > 2 else 90
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        errors = [e for e in pool.map(_compile, [(s, arch) for s in specs], chunksize=8) if e]
    for e in errors:
        print(e)
    print(f"compiled {len(specs) - len(errors)}/{len(specs)} specializations for sm_{arch}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
