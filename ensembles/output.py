"""Writing an output folder all at once, so an error never leaves part of it behind.

Every file is first rendered to bytes in memory by the caller, then written into a
temporary sibling folder, then moved into place: the whole folder in one rename when
it does not exist yet, otherwise file by file (each move replaces one file whole).
Works for local paths and pyarrow filesystem URIs (via `mer_ray.storage.resolve`).
"""

from __future__ import annotations

import uuid

import pyarrow.fs as pafs

from mer_ray.storage import absolute, check_output_folder, resolve, storage_errors


def check_out(out: str) -> None:
    """Refuse an --out that cannot be a folder (a file, a path below a file, an unknown
    URI scheme, a folder we cannot write), before any work is done."""
    check_output_folder(out)


def write_outputs(out: str, files: dict[str, bytes]) -> str:
    """Write `files` (name -> content) into folder `out`; returns its location. A full or
    read-only disk is one StorageError line, and `out` is left as it was."""
    check_out(out)
    with storage_errors(out):
        return _write(out, files)


def _write(out: str, files: dict[str, bytes]) -> str:
    fs, root = resolve(out)
    root = root.rstrip("/")
    parent, name = root.rsplit("/", 1) if "/" in root else ("", root)
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp"
    fs.create_dir(tmp, recursive=True)
    try:
        for fname, data in files.items():
            with fs.open_output_stream(f"{tmp}/{fname}") as f:
                f.write(data)
        moved = False
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            try:
                fs.move(tmp, root)
                moved = True
            except OSError:
                pass  # object stores cannot rename folders; fall back to file by file
        if not moved:
            fs.create_dir(root, recursive=True)
            for fname in files:
                fs.move(f"{tmp}/{fname}", f"{root}/{fname}")
            fs.delete_dir(tmp)
    except BaseException:
        try:
            fs.delete_dir(tmp)
        except OSError:
            pass
        raise
    return absolute(out)
