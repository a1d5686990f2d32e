"""Checks the CUDA backend's compiled kernels and records their resources, per architecture:
no kernel uses local memory or a stack, and the quantized matrix kernels multiply with the
integer dot-product instruction (IDP.4A). Writes a markdown table of registers / shared memory.

    python tools/cuda_sass_check.py OBJ.o [OBJ.o ...] [--out FILE.md]

cuobjdump and nvdisasm come from the CUDA toolkit or the `nvidia-cuda-cuobjdump` and
`nvidia-cuda-nvdisasm` wheels (found beside the running Python's site-packages).
Exit 0: all checks pass; 1: a check failed (each failure printed); 2: no cuobjdump.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Kernels whose inner loop must be __dp4a (name fragments of the mangled names).
DP4A_KERNELS = ("mv_quant_kernel", "mm_quant_kernel")


def find_tool(name: str) -> str | None:
    hit = shutil.which(name)
    if hit:
        return hit
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for p in Path(base, "nvidia").glob(f"*/bin/{name}"):
            return str(p)
    return None


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out, strict=True)) if len(out) == len(names) else {n: n for n in names}


def short(demangled: str) -> str:
    """mole::cuda::(anonymous namespace)::mv_quant_kernel<8, true>(...) -> mv_quant_kernel<8, true>"""
    s = demangled.removeprefix("void ").replace("(anonymous namespace)::", "").replace("mole::cuda::", "")
    types = {"0": "F32", "1": "F16", "2": "Q4_0", "8": "Q8_0", "30": "BF16"}   # template arguments of enum type
    s = re.sub(r"\(mole::Type\)(\d+)", lambda m: types.get(m.group(1), m.group(1)), s)
    return s.split("(")[0]


def sections(text: str, header: str):
    """(arch, function, body) for each function of cuobjdump's output."""
    arch, fn, body = None, None, []
    for ln in text.splitlines():
        m = re.match(r"\s*arch = (sm_\d+)", ln)
        if m:
            if fn:
                yield arch, fn, "\n".join(body)
            arch, fn, body = m.group(1), None, []
            continue
        m = re.match(header, ln)
        if m:
            if fn:
                yield arch, fn, "\n".join(body)
            fn, body = m.group(1), []
            continue
        body.append(ln)
    if fn:
        yield arch, fn, "\n".join(body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("objects", nargs="+")
    ap.add_argument("--out", help="write the resource table (markdown) here")
    a = ap.parse_args(argv)
    cuobjdump = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        print("cuda_sass_check: cuobjdump / nvdisasm not found "
              "(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)", file=sys.stderr)
        return 2
    env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
    rows, failures = [], []
    for obj in a.objects:
        res = subprocess.run([cuobjdump, "-res-usage", obj], capture_output=True, text=True, env=env)
        sass = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True, env=env)
        if res.returncode or sass.returncode:
            failures.append(f"{obj}: cuobjdump failed: {(res.stderr + sass.stderr).strip()}")
            continue
        usage = {}
        for arch, fn, body in sections(res.stdout, r"\s*Function (\S+):"):
            m = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", body))
            usage[(arch, fn)] = m
        functions = list(sections(sass.stdout, r"\s*Function : (\S+)"))
        dp4a = {(arch, fn): len(re.findall(r"\bIDP\.4A", body)) for arch, fn, body in functions}
        lmem = {(arch, fn): len(re.findall(r"\b(LDL|STL)\b", body)) for arch, fn, body in functions}
        names = demangle(sorted({fn for _, fn in usage}))
        for (arch, fn), m in sorted(usage.items(), key=lambda kv: (names[kv[0][1]], kv[0][0])):
            name = short(names[fn])
            n_dp4a = dp4a.get((arch, fn), 0)
            rows.append((Path(obj).name.split(".")[0], name, arch, m.get("REG", "?"), m.get("SHARED", "?"),
                         m.get("LOCAL", "?"), m.get("STACK", "?"), n_dp4a))
            if m.get("LOCAL", "0") != "0" or m.get("STACK", "0") != "0" or lmem.get((arch, fn), 0):
                failures.append(f"{name} [{arch}]: uses local memory (LOCAL {m.get('LOCAL')}, STACK {m.get('STACK')}, "
                                f"{lmem.get((arch, fn), 0)} LDL/STL)")
            if any(k in fn for k in DP4A_KERNELS) and n_dp4a == 0:
                failures.append(f"{name} [{arch}]: no IDP.4A (the quantized dot product is not __dp4a)")
    if not rows and not failures:
        failures.append("no kernels found in " + " ".join(a.objects))
    table = ["| file | kernel | arch | registers | shared bytes | local | stack | IDP.4A |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {f} | `{k}` | {ar} | {r} | {s} | {lo} | {st} | {d} |" for f, k, ar, r, s, lo, st, d in rows]
    if a.out:
        Path(a.out).write_text("\n".join(table) + "\n")
    print(f"cuda_sass_check: {len(rows)} kernel builds checked, {len(failures)} failures")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
