"""scripts/gpu_bundle.py without the network: the jar-stripping repack on a small wheel
built here, the bundle plan's bookkeeping, the install command, the size check, --help."""

import base64
import csv
import hashlib
import importlib.util
import io
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_bundle.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_bundle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gb = _load()


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _make_wheel(path: Path, tamper: bool = False) -> dict:
    """A tiny 'ray' wheel shaped like Ray's: jars, an executable, a vendored package with
    its own .dist-info/RECORD. Returns {name: bytes} of its files."""
    files = {
        "ray/__init__.py": b"__version__ = '0.0.1'\n",
        "ray/jars/ray_dist.jar": os.urandom(4096),
        "ray/jars/extra/other.jar": b"PK fake jar",
        "ray/core/raylet": b"#!/bin/sh\necho raylet\n",
        "ray/_vendored/foo-1.0.dist-info/RECORD": b"foo/__init__.py,,\n",
        "ray/_vendored/foo/__init__.py": b"",
        "ray-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ray\nVersion: 0.0.1\n",
        "ray-0.0.1.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                      b"Tag: py3-none-any\n"),
    }
    rows = [[n, _hash(d), str(len(d))] for n, d in files.items()]
    if tamper:
        rows[0][1] = _hash(b"something else")
    rows.append(["ray-0.0.1.dist-info/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("ray/jars/"), b"")  # directory entries too
        z.writestr(zipfile.ZipInfo("ray/core/"), b"")
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            mode = 0o755 if name == "ray/core/raylet" else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
        z.writestr("ray-0.0.1.dist-info/RECORD", buf.getvalue())
    return files


def test_strip_wheel_drops_jars_and_keeps_a_valid_wheel(tmp_path):
    src, dst = tmp_path / "in" / "ray-0.0.1-py3-none-any.whl", tmp_path / "ray-0.0.1-py3-none-any.whl"
    src.parent.mkdir()
    files = _make_wheel(src)
    gb.check_wheel(src)  # the input is valid to begin with

    dropped = gb.strip_wheel(src, dst)

    assert sorted(dropped) == ["ray/jars/", "ray/jars/extra/other.jar", "ray/jars/ray_dist.jar"]
    gb.check_wheel(dst)
    with zipfile.ZipFile(dst) as z:
        names = z.namelist()
        assert not [n for n in names if n.startswith("ray/jars")]
        for name, data in files.items():
            if not name.startswith("ray/jars/"):
                assert z.read(name) == data
        record = list(csv.reader(io.StringIO(z.read("ray-0.0.1.dist-info/RECORD").decode())))
        assert "ray/core/" in names
        assert {r[0] for r in record} == {n for n in names if not n.endswith("/")}
        assert not [r for r in record if r[0].startswith("ray/jars")]
        assert ["ray-0.0.1.dist-info/RECORD", "", ""] in record
        assert (z.getinfo("ray/core/raylet").external_attr >> 16) & 0o777 == 0o755
        assert z.getinfo("ray/__init__.py").date_time == (2020, 1, 1, 0, 0, 0)
    with pytest.raises(ValueError):
        gb.strip_wheel(dst, dst)


def test_check_wheel_catches_a_stale_record(tmp_path):
    bad = tmp_path / "ray-0.0.1-py3-none-any.whl"
    _make_wheel(bad, tamper=True)
    with pytest.raises(ValueError, match="ray/__init__.py"):
        gb.check_wheel(bad)


def test_repacked_wheel_installs_offline(tmp_path):
    src, dst = tmp_path / "in" / "ray-0.0.1-py3-none-any.whl", tmp_path / "ray-0.0.1-py3-none-any.whl"
    src.parent.mkdir()
    _make_wheel(src)
    gb.strip_wheel(src, dst)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), str(dst)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site / "ray" / "__init__.py").read_text() == "__version__ = '0.0.1'\n"
    assert not (site / "ray" / "jars").exists()
    assert os.access(site / "ray" / "core" / "raylet", os.X_OK)
    r = subprocess.run([sys.executable, "-c", "import ray; print(ray.__version__, ray.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(site)})
    assert r.returncode == 0 and r.stdout.startswith("0.0.1 " + str(site)), r.stdout + r.stderr


def test_plan_accounts_for_every_distribution():
    resolved = {gb.canonical(n): "1.0" for n in [*gb.BUNDLE, *gb.FROM_NODE]}
    assert set(gb.plan(resolved)) == {gb.canonical(n) for n in gb.BUNDLE}
    assert "ray" in gb.BUNDLE and "pyarrow" in gb.FROM_NODE and "numpy" in gb.FROM_NODE
    with pytest.raises(SystemExit, match="newdep==2.0"):
        gb.plan({**resolved, "newdep": "2.0"})
    with pytest.raises(SystemExit, match="tzdata"):
        gb.plan({n: v for n, v in resolved.items() if n != "tzdata"})


def test_install_command_and_size_check(tmp_path):
    cmd = gb.install_command(".gpu-bundle", "mer_ray-0.1.0-py3-none-any.whl",
                             {"tensorboardx": "2.6.5"})
    first, second = cmd.split(" && ")
    assert "--no-index" in first and "--find-links .gpu-bundle" in first
    assert f'"ray[train,tune]=={gb.RAY_VERSION}"' in first and "tensorboardX==2.6.5" in first
    assert "--no-index" in second and second.endswith("--no-deps .gpu-bundle/mer_ray-0.1.0-py3-none-any.whl")
    (tmp_path / "a.whl").write_bytes(b"x" * 1000)
    assert gb.check_size(tmp_path, limit=1000) == 1000
    with pytest.raises(SystemExit, match="over the"):
        gb.check_size(tmp_path, limit=999)


def test_help_runs_without_downloading():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--out DIR" in r.stdout and ".gpu-bundle" in r.stdout, r.stderr
