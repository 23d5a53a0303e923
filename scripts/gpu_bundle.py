#!/usr/bin/env python3
"""Gather the wheels a bare GPU node needs to run Ray 2.60 and mer-ray offline.

The GPU nodes this project is lent run CPython 3.12 (manylinux x86_64) with torch,
numpy, scikit-learn, pyarrow, pandas and many other packages preinstalled, but no Ray
and no package index (no network at all). This script resolves what `ray[train,tune]`
and mer-ray's own pure dependencies need on such a node, downloads those wheels, repacks
Ray's wheel without its Java jars (`ray/jars/`, 32 MB compressed, used only by Java
workers) so the bundle fits what a device call carries (64 MiB with the working tree),
adds mer-ray's own wheel, and writes the one offline install command to DIR/INSTALL.txt.

    .venv/bin/python scripts/gpu_bundle.py [--out .gpu-bundle]

Then name the folder in the device call's `carry` and start the command with the
printed install command. See docs/gpu.md.

Standard library and pip only (pip is run as `python -m pip`, the interpreter that
runs this script). Needs the package index here; the node needs none.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ".gpu-bundle"
RAY_VERSION = "2.60.0"  # the cluster's version (pyproject.toml pins the same)
LIMIT_BYTES = 60_000_000  # 60 MB: the carry limit is 64 MiB, working tree included

# The node: CPython 3.12, manylinux x86_64. pip matches platform tags exactly, so list
# every manylinux tag a wheel of ours may carry (glibc 2.28 or newer on the node).
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64"]

# What the node must be able to run: `import ray, ray.train, ray.tune` and mer-ray.
# Not ray[default] (the dashboard): its closure adds about 17 MB (virtualenv 5.8,
# cryptography 4.7, py-spy 2.9, opencensus + google-auth, opentelemetry, ...) and the
# bundle would not fit. mer-ray's wheel is therefore installed with --no-deps.
TOP = [f"ray[train,tune]=={RAY_VERSION}", "tensorboardX>=1.9", "tqdm>=4.60", "pyyaml>=6"]

# Every distribution the resolution of TOP for CPython 3.12 manylinux x86_64 gives
# (worked out with `pip download --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 "ray[train,tune]==2.60.0"` on 2026-12-01: 29 wheels, 170 MB) falls in one of
# BUNDLE or FROM_NODE; a new one stops the script, to be sorted by hand. "node has it"
# below means it is in the node image's package list (.library device KINDS.md,
# 2026-11-17); such small wheels are bundled anyway, since the node's version is
# unknown and may be too old (pydantic 2.14 needs typing-extensions >= 4.16): pip keeps
# a preinstalled version that satisfies the requirement and takes ours otherwise.
BUNDLE = {
    # Ray itself (79 MB wheel; 47 MB once repacked without ray/jars/).
    "ray": "Ray core + Train + Tune, the cluster's version; not on the node",
    # ray[train] / ray[tune] extras that the node lacks.
    "pydantic": "ray[train,tune] extra (Train V2 configs); not on the node",
    "pydantic-core": "pydantic's compiled core (pinned exactly by pydantic); not on the node",
    "annotated-types": "needed by pydantic; not on the node",
    "typing-inspection": "needed by pydantic; node has it",
    "tensorboardX": "ray[train,tune] extra (Tune's TBX logger), mer-ray's too; node has only tensorboard",
    # Ray core requirements that the node lacks.
    "jsonschema": "ray core (runtime_env / config validation); not on the node",
    "jsonschema-specifications": "needed by jsonschema; not on the node",
    "referencing": "needed by jsonschema; not on the node",
    "rpds-py": "needed by referencing (compiled); not on the node",
    # Small ones the node has (insurance against an older version there, < 4 MB in all).
    "click": "ray core (CLI: ray start / ray status); node has it",
    "filelock": "ray core; node has it",
    "msgpack": "ray core (serialization); node has it",
    "packaging": "ray core needs >= 24.2; node has it",
    "protobuf": "ray core (GCS / raylet messages); node has it",
    "pyyaml": "ray core and mer-ray; node has it",
    "requests": "ray core and ray[tune]; node has it",
    "charset-normalizer": "needed by requests; node has it",
    "idna": "needed by requests; node has it",
    "urllib3": "needed by requests; node has it",
    "certifi": "needed by requests; node has it",
    "fsspec": "ray[train,tune] extra (storage); node has it",
    "typing-extensions": "pydantic needs >= 4.16; node has it, version unknown",
    "attrs": "needed by jsonschema / referencing; node has it",
    "tqdm": "mer-ray (progress bars); node has it",
    "python-dateutil": "needed by pandas (ray[train,tune]); node has it",
    "tzdata": "needed by python-dateutil 4; not on the node's list",
}
FROM_NODE = {
    "numpy": "preinstalled on the node (16 MB wheel)",
    "pyarrow": "preinstalled on the node (55 MB wheel: could never fit)",
    "pandas": "ray[train,tune] extra; preinstalled on the node (12 MB wheel: would push the bundle over 60 MB)",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


# ---------------------------------------------------------------- resolution


def resolve(requirements: list[str], workdir: Path) -> dict[str, str]:
    """{canonical name: version} pip's resolver picks for the node (CPython 3.12,
    manylinux x86_64), read from `pip install --dry-run --report`, which resolves as
    `pip download` does but reads only the wheels' metadata."""
    report = workdir / "resolve.json"
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--target",
         str(workdir / "target"), "--report", str(report), *_target_args(), *requirements)
    data = json.loads(report.read_text())
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def plan(resolved: dict[str, str]) -> dict[str, str]:
    """The {name: version} to bundle; stops on a distribution that is in neither
    BUNDLE nor FROM_NODE, or on a BUNDLE entry the resolution no longer needs."""
    bundle = {canonical(n) for n in BUNDLE}
    node = {canonical(n) for n in FROM_NODE}
    unknown = sorted(set(resolved) - bundle - node)
    if unknown:
        raise SystemExit("gpu_bundle: the resolution needs distribution(s) this script does "
                         f"not account for: {', '.join(f'{n}=={resolved[n]}' for n in unknown)}. "
                         "Add each to BUNDLE (with why) or FROM_NODE in scripts/gpu_bundle.py.")
    stale = sorted(bundle - set(resolved))
    if stale:
        raise SystemExit(f"gpu_bundle: BUNDLE names {', '.join(stale)}, which the resolution "
                         "no longer needs; remove them from scripts/gpu_bundle.py.")
    return {n: v for n, v in sorted(resolved.items()) if n in bundle}


# ---------------------------------------------------------------- wheel repacking


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def strip_wheel(src: str | os.PathLike, dst: str | os.PathLike,
                drop: tuple[str, ...] = ("ray/jars/",)) -> list[str]:
    """Copy wheel `src` to `dst` without the entries under the `drop` prefixes.

    Every other entry is copied byte for byte with its metadata (time, permission bits:
    Ray's raylet and gcs_server must stay executable); RECORD loses the dropped rows and
    its rows for the kept files are re-derived from their bytes, so the result is a valid
    wheel under the same name. Returns the dropped names."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("strip_wheel: src and dst must differ")
    dropped: list[str] = []
    tmp = dst.with_name(dst.name + ".part")
    with zipfile.ZipFile(src) as zin:
        record_info = zin.getinfo(_record_name(zin, src))
        rows: list[list[str]] = []
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                name = info.filename
                if name == record_info.filename:
                    continue
                if name.startswith(drop):
                    dropped.append(name)
                    continue
                digest = hashlib.sha256()
                size = 0
                with zin.open(info) as fin, zout.open(_copy_info(info), "w",
                                                      force_zip64=info.file_size > 2**31) as fout:
                    for chunk in iter(lambda: fin.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        fout.write(chunk)
                if not name.endswith("/"):
                    b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
                    rows.append([name, f"sha256={b64}", str(size)])
            rows.append([record_info.filename, "", ""])
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            zout.writestr(_copy_info(record_info), buf.getvalue().encode())
    os.replace(tmp, dst)
    return dropped


def _record_name(z: zipfile.ZipFile, path) -> str:
    """The wheel's own RECORD: `<name>-<version>.dist-info/RECORD` at the top level
    (Ray vendors packages whose own .dist-info folders lie deeper)."""
    top = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    if len(top) != 1:
        raise ValueError(f"{path}: not a wheel (top-level .dist-info/RECORD: {top})")
    return top[0]


def _copy_info(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    new.external_attr = info.external_attr
    new.create_system = info.create_system
    new.compress_type = zipfile.ZIP_STORED if info.filename.endswith("/") else zipfile.ZIP_DEFLATED
    return new


def check_wheel(path: str | os.PathLike) -> None:
    """Raise ValueError unless every entry of the wheel has a RECORD row with its own
    sha256 and size, and RECORD names no entry that is missing."""
    with zipfile.ZipFile(path) as z:
        names = {i.filename for i in z.infolist() if not i.filename.endswith("/")}
        record = _record_name(z, path)
        rows = {r[0]: r for r in csv.reader(io.StringIO(z.read(record).decode())) if r}
        missing = sorted(names - set(rows))
        extra = sorted(set(rows) - names)
        if missing or extra:
            raise ValueError(f"{path}: RECORD lacks {missing[:5]} / names absent {extra[:5]}")
        for name in names - {record}:
            data = z.read(name)
            _, h, size = rows[name]
            if h != _record_hash(data) or int(size) != len(data):
                raise ValueError(f"{path}: RECORD's hash or size for {name} is wrong")


# ---------------------------------------------------------------- the bundle


def install_command(out: str, mer_wheel: str, versions: dict[str, str]) -> str:
    """The one command (two pip runs) that installs the bundle on the node, offline.
    mer-ray goes in with --no-deps: its metadata asks for ray[default] (the dashboard),
    which is not bundled; everything it imports is there after the first run."""
    top = [f'"ray[train,tune]=={RAY_VERSION}"', f"tensorboardX=={versions['tensorboardx']}",
           "tqdm", "pyyaml"]
    pip = "python3 -m pip install -q --no-index --no-cache-dir --disable-pip-version-check"
    return (f"{pip} --find-links {out} {' '.join(top)} && "
            f"{pip} --no-deps {out}/{mer_wheel}")


def total_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def check_size(folder: Path, limit: int = LIMIT_BYTES) -> int:
    size = total_size(folder)
    if size > limit:
        raise SystemExit(f"gpu_bundle: FAILED: {folder} holds {size / 1e6:.1f} MB, over the "
                         f"{limit / 1e6:.0f} MB limit (a device call carries 64 MiB in all, "
                         "working tree included)")
    return size


def _display(out: Path) -> str:
    try:
        return os.path.relpath(out) if out.resolve().is_relative_to(Path.cwd().resolve()) else str(out)
    except ValueError:
        return str(out)


def build(out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.whl")) + [out / "INSTALL.txt", out / "requirements.txt"]:
        old.unlink(missing_ok=True)  # one version of each: two would stop the install
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmpdir:
        tmp = Path(tmpdir)
        versions = plan(resolve(TOP, tmp))
        dl = tmp / "dl"
        _pip("download", "--quiet", "--no-deps", "-d", str(dl), *_target_args(),
             *[f"{n}=={v}" for n, v in versions.items()])
        got = {canonical(p.name.split("-")[0]): p for p in dl.glob("*.whl")}
        if set(got) != set(versions):
            raise SystemExit(f"gpu_bundle: downloaded {sorted(got)}, expected {sorted(versions)}")
        for name, wheel in got.items():
            if name == "ray":
                dropped = strip_wheel(wheel, out / wheel.name)
                check_wheel(out / wheel.name)
                if not dropped:
                    raise SystemExit("gpu_bundle: Ray's wheel has no ray/jars/ any more; "
                                     "check the repack step")
                print(f"repacked {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB -> "
                      f"{(out / wheel.name).stat().st_size / 1e6:.1f} MB without "
                      f"{len(dropped)} ray/jars/ entr{'y' if len(dropped) == 1 else 'ies'}")
            else:
                shutil.copy2(wheel, out / wheel.name)
    # mer-ray's own wheel, from this working tree.
    # The running venv's setuptools where it has one (no download); else pip's isolation.
    isolation = ["--no-build-isolation"] if _has("setuptools") else []
    _pip("wheel", "--quiet", "--no-deps", *isolation, "-w", str(out), str(ROOT))
    mer = sorted(out.glob("mer_ray-*.whl"))
    if len(mer) != 1:
        raise SystemExit(f"gpu_bundle: expected one mer_ray wheel in {out}, found {mer}")
    shown = _display(out)
    command = install_command(shown, mer[0].name, versions)
    (out / "requirements.txt").write_text(
        "# what scripts/gpu_bundle.py resolved and bundled (ray repacked without ray/jars/)\n"
        + "".join(f"{n}=={v}\n" for n, v in versions.items()))
    (out / "INSTALL.txt").write_text(
        "# On the GPU node, from the repository root (offline; carry this folder):\n"
        f"{command}\n")
    print(f"\n{'MB':>7}  wheel")
    for p in sorted(out.glob("*.whl"), key=lambda p: -p.stat().st_size):
        print(f"{p.stat().st_size / 1e6:7.2f}  {p.name}")
    size = check_size(out)
    print(f"\ntotal: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB) in {shown}/, "
          f"limit {LIMIT_BYTES / 1e6:.0f} MB")
    print("install on the node (also in INSTALL.txt):")
    print(command)
    return command


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpu_bundle.py",
        description="Gather the wheels a bare GPU node (CPython 3.12, manylinux x86_64, torch "
                    "preinstalled, no package index) needs to run Ray 2.60 and mer-ray; Ray's "
                    "wheel is repacked without its Java jars. Prints the offline install "
                    "command and writes it to DIR/INSTALL.txt.")
    ap.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                    help=f"folder for the wheels (default {DEFAULT_OUT}/, git-ignored); "
                         "its old wheels are removed first")
    args = ap.parse_args(argv)
    build(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
