"""The pack invariant (a member is bit for bit the same in any pack, on CPU) on kernel
paths other than this machine's own: MKL's Intel kernels at AVX-512 and AVX2 (on an AMD
machine through tests/cpu_paths.py's shim), ATen's AVX2 kernels. CI's CPU changes from
run to run (an AMD EPYC one day, an Intel Xeon the next); each run checks both vendors'
MKL paths, so a change that breaks one is caught on either machine.

Each path runs tests/test_trainer.py's bit-for-bit test in a fresh process (the kernel
choice is made when the libraries load). Before it, the test checks that the path is
really the one asked for, from MKL's and ATen's own reports, so a path that silently
fell back can never pass for one that was exercised."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpu_paths import aten_capability, cpu_flags, intel_mkl_shim, mkl_banner

TESTS = Path(__file__).parent
BIT_FOR_BIT = "test_trainer.py::test_a_member_is_bit_for_bit_the_same_in_any_pack"


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    library = intel_mkl_shim(tmp_path_factory.mktemp("shim"))
    if library is None:
        pytest.skip("no C compiler (cc/gcc) to build the Intel-MKL shim")
    if not mkl_banner({**os.environ, "LD_PRELOAD": str(library)}):
        pytest.skip("this torch has no MKL")
    return str(library)


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "LD_PRELOAD")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _bit_for_bit(env: dict) -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(TESTS / BIT_FOR_BIT)], env=env, cwd=TESTS.parent,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_mkl_intel_avx512_kernels(shim):
    if "avx512f" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512: MKL's AVX-512 kernels cannot run here")
    env = _env(LD_PRELOAD=shim)
    assert "AVX-512" in mkl_banner(env), mkl_banner(env)
    _bit_for_bit(env)


def test_mkl_intel_avx2_kernels(shim):
    if "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2")
    env = _env(LD_PRELOAD=shim, MKL_ENABLE_INSTRUCTIONS="AVX2")
    banner = mkl_banner(env)
    assert "AVX2" in banner and "512" not in banner, banner
    _bit_for_bit(env)


def test_aten_avx2_kernels():
    if "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2")
    env = _env(ATEN_CPU_CAPABILITY="avx2")
    assert aten_capability(env) == "AVX2"
    _bit_for_bit(env)


def test_a_lone_gemm_rounds_like_a_batched_one_only_in_strict_mode(shim):
    """The root cause, at the GEMM: on MKL's Intel path with two threads, a lone
    [32, 5120] x [5120, 128] product (a member alone, at the text encoder's first layer)
    is split over the threads and rounds differently from the same product in a batch of
    two; with the strict mode mer_ray sets, it is not. Shows that the shim reaches the
    path where pack size mattered, so the tests above exercise it."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: MKL does not split a GEMM over threads")
    code = ("import sys, torch\n"
            "torch.set_num_threads(2)\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x, w = torch.randn(2, 32, 5120, generator=g), torch.randn(2, 5120, 128, generator=g)\n"
            "print(torch.equal(torch.bmm(x[:1], w[:1])[0], torch.bmm(x, w)[0]))\n")
    import_first = "import mer_ray\n"

    def same(env, prelude):
        out = subprocess.run([sys.executable, "-c", prelude + code], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip() == "True"

    assert not same(_env(LD_PRELOAD=shim, MER_RAY_MKL_STRICT="0"), import_first)
    assert same(_env(LD_PRELOAD=shim), import_first)


def test_importing_mer_ray_asks_mkl_for_strict_mode():
    code = "import os, mer_ray; print(os.environ.get('MKL_CBWR'))"

    def cbwr(**changes):
        return subprocess.run([sys.executable, "-c", code], env=_env(**changes),
                              capture_output=True, text=True, check=True).stdout.strip()

    assert cbwr() == "AUTO,STRICT"
    assert cbwr(MKL_CBWR="AVX2") == "AVX2,STRICT"  # a user's branch is kept
    assert cbwr(MKL_CBWR="COMPATIBLE,STRICT") == "COMPATIBLE,STRICT"
    assert cbwr(MER_RAY_MKL_STRICT="0") == "None"
