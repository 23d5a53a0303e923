"""The `--device` option: `pytest -q` runs everything on the CPU (CI has no GPU);
`pytest --device cuda` runs the tests that take the `device` fixture on the GPU, and the
CUDA-only tests (tests/test_cuda.py, through the `cuda` fixture) besides.

A test that takes `device` runs on the CPU by default. Asked for CUDA where there is
none, it is skipped with the reason, never passed silently; the same goes for a test
that takes `cuda` without `--device cuda`."""

from __future__ import annotations

import pytest

DEVICES = ("cpu", "cuda")


def pytest_addoption(parser):
    parser.addoption("--device", choices=DEVICES, default="cpu",
                     help="where the trainer, predict and reference tests run: cpu "
                          "(default) or cuda; cuda also runs tests/test_cuda.py")


def _cuda_missing() -> str | None:
    """Why CUDA cannot be used here, or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return (f"CUDA is not available here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'})")


@pytest.fixture(scope="session")
def device(request) -> str:
    """'cpu' or 'cuda', as `--device` says; skipped where CUDA is asked for and absent."""
    name = request.config.getoption("--device")
    if name == "cuda":
        why = _cuda_missing()
        if why:
            pytest.skip(f"--device cuda: {why}")
    return name


@pytest.fixture(scope="session")
def cuda(request) -> str:
    """'cuda', for tests that only mean something on a GPU (CPU-vs-CUDA agreement, host
    synchronisation); skipped with the reason unless `--device cuda` is given and CUDA
    exists."""
    if request.config.getoption("--device") != "cuda":
        pytest.skip("a CUDA test: run with `pytest --device cuda` on a machine with a GPU")
    why = _cuda_missing()
    if why:
        pytest.skip(f"--device cuda: {why}")
    return "cuda"
