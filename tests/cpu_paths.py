"""Which CPU kernels a test ran on, and how to make this machine run other ones.

torch on x86 picks its kernels twice: ATen by instruction set (ATEN_CPU_CAPABILITY
chooses a lower one), MKL by instruction set *and* vendor: on an AMD CPU it takes a
generic path and ignores MKL_ENABLE_INSTRUCTIONS. `intel_mkl_shim` builds a two-function
library that answers MKL's "is this an Intel CPU?" with yes; preloaded (LD_PRELOAD), it
makes MKL on an AMD machine run the kernels (and the threading) it runs on Intel CPUs of
the same instruction set. On an Intel machine it changes nothing. So one CI run, on
either kind, guards both kinds' MKL paths.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

SHIM_SOURCE = """\
/* MKL asks these whether it runs on an Intel CPU; the answer picks its kernels. */
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_intel_cpu(void) { return 1; }
"""

_MKL_BANNER_CODE = ("import mer_ray, torch; "
                    "torch.mm(torch.ones(64, 64), torch.ones(64, 64))")


def intel_mkl_shim(folder: Path) -> Path | None:
    """Build the shim into folder; None where there is no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source, library = folder / "intel_mkl_shim.c", folder / "libintel_mkl_shim.so"
    source.write_text(SHIM_SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
                   check=True, capture_output=True)
    return library


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mkl_banner(env: dict | None = None) -> str:
    """MKL's own line naming the instruction set it runs (its MKL_VERBOSE header), in a
    fresh process with env; '' where torch has no MKL."""
    env = dict(os.environ if env is None else env, MKL_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", _MKL_BANNER_CODE], env=env,
                         capture_output=True, text=True, timeout=120).stdout
    for line in out.splitlines():
        if "MKL_VERBOSE" in line and ("oneMKL" in line or "Intel(R) MKL" in line):
            match = re.search(r"for Intel\(R\) 64 architecture (.*?), Lnx", line)
            return match.group(1) if match else line
    return ""


def aten_capability(env: dict | None = None) -> str:
    env = dict(os.environ if env is None else env)
    return subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, timeout=120).stdout.strip()


def describe_cpu() -> str:
    """One paragraph for a failing exactness test: the CPU and the kernel paths taken."""
    import torch

    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "below AVX2"
    return (f"ran on: {cpu_model()} ({isa}; {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}); ATen kernels: "
            f"{torch.backends.cpu.get_cpu_capability()}; MKL kernels: "
            f"{mkl_banner() or 'no MKL'}; MKL_CBWR={os.environ.get('MKL_CBWR')!r}; "
            f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}; torch {torch.__version__}")
