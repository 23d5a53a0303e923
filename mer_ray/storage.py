"""Locations: a local path or a pyarrow filesystem URI (s3://, gs://, file://, ...).

Stores, runs and outputs all go through these few functions so that a location keeps
its scheme (and query, e.g. `?endpoint_override=127.0.0.1:9000&scheme=http`) when a
file name is joined to it: pyarrow's filesystems take a path without the scheme, the
rest of mer-ray passes whole locations around.

Writes are atomic per file (a temporary name beside the target, then a move): a reader
never sees half a file under its final name, on local disks and object stores alike
(on S3 a move is a copy then a delete of the temporary object).
"""

from __future__ import annotations

import errno
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from mer_ray.errors import InputError, StorageError

TMP_PREFIX = ".tmp-"


def is_uri(location) -> bool:
    return "://" in str(location)


def _split_query(location: str) -> tuple[str, str]:
    base, sep, query = location.partition("?")
    return base, (sep + query)


def resolve(location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a pyarrow filesystem URI."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except pa.ArrowInvalid as e:
        raise InputError(f"{location}: not a usable location ({e}); give a local path or a "
                         "URI pyarrow knows (s3://, gs://, hdfs://, file://)") from None
    except OSError as e:
        raise StorageError(f"{location}: cannot reach this storage "
                           f"({e}){endpoint_hint(location)}") from None


def endpoint_hint(location) -> str:
    """For an s3:// location: which endpoint was asked and the settings that choose it
    (a wrong or missing endpoint reads as "Could not resolve host ...amazonaws.com")."""
    if not str(location).startswith("s3://"):
        return ""
    if "endpoint_override=" in str(location):
        return "; the endpoint is the location's ?endpoint_override="
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return (f"; endpoint {endpoint} from AWS_ENDPOINT_URL" if endpoint else
            "; no endpoint set, so AWS's own: for another S3-compatible server set "
            "AWS_ENDPOINT_URL on every node (or ?endpoint_override=HOST:PORT)")


def missing_bucket(location) -> str | None:
    """For an object-store location whose bucket does not exist: one line saying so
    (else a missing bucket reads like a missing store or run); None otherwise."""
    location = str(location)
    if not location.startswith(("s3://", "gs://", "gcs://")):
        return None
    base, _ = _split_query(location)
    bucket = base.split("://", 1)[1].split("/", 1)[0]
    try:
        fs, _path = resolve(location)
        kind = fs.get_file_info(bucket).type
    except (OSError, InputError, StorageError):
        return None
    if kind != pafs.FileType.NotFound:
        return None
    return (f"{location}: the bucket {bucket!r} does not exist" + endpoint_hint(location)
            + "; create it or check the name")


def absolute(location) -> str:
    """Local paths made absolute (Ray workers run elsewhere); URIs as they are."""
    location = str(location)
    return location if is_uri(location) else os.path.abspath(location)


def join(location, *parts: str) -> str:
    """`location`/part/part..., keeping a URI's scheme and query."""
    base, query = _split_query(str(location))
    for p in parts:
        base = f"{base.rstrip('/')}/{p}"
    return base + query


def parent_and_name(location) -> tuple[str, str]:
    base, query = _split_query(str(location).rstrip("/"))
    head, _, name = base.rpartition("/")
    return head + query, name


def file_type(location) -> pafs.FileType:
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path).type
    except OSError as e:
        raise StorageError(f"{location}: cannot be read ({e}){endpoint_hint(location)}") from None


def exists(location) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def read_bytes(location) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location, data: bytes) -> str:
    """Write a whole file atomically (temporary name beside it, then a move)."""
    fs, path = resolve(location)
    head, _, name = path.rpartition("/")
    tmp = f"{head}/{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    with storage_errors(location):
        if head:
            fs.create_dir(head, recursive=True)
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except BaseException:
            _remove_quietly(fs, tmp)
            raise
    return str(location)


def _remove_quietly(fs, path):
    try:
        fs.delete_file(path)
    except OSError:
        pass


def remove_quietly(location) -> None:
    """Delete a file if it is there (best-effort files: progress, driver state)."""
    _remove_quietly(*resolve(location))


def list_files(location, suffix: str = "", recursive: bool = False) -> list[str]:
    """Locations of the finished files under a folder (temporary files left out)."""
    fs, path = resolve(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    base, query = _split_query(str(location).rstrip("/"))
    found = []
    with storage_errors(location):
        infos = fs.get_file_info(selector)
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith(TMP_PREFIX):
            continue
        if not info.base_name.endswith(suffix):
            continue
        rel = info.path[len(path.rstrip("/")) + 1:]
        found.append(f"{base}/{rel}{query}")
    return sorted(found)


class storage_errors:
    """Turn the OSErrors of a full, read-only or unreachable disk into one StorageError
    line naming the location and what to do (the CLI prints it, no traceback)."""

    def __init__(self, location, doing: str = "writing"):
        self.location, self.doing = str(location), doing

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError):
            return False  # a missing file is the caller's to handle
        raise storage_error(exc, self.location, self.doing) from None


def storage_error(exc: OSError, location: str, doing: str = "writing") -> StorageError:
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(exc):
        return StorageError(f"no space left {doing} {location}; free space and run the "
                            "same command again to resume")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only" in str(exc):
        return StorageError(f"cannot write {location} ({exc.strerror or exc}); make it "
                            "writable or choose another --out, then run the same command "
                            "again to resume")
    return StorageError(f"{doing} {location} failed: {exc}{endpoint_hint(location)}")


def check_output_folder(location, what: str = "--out") -> None:
    """Refuse an output location that cannot be a folder: a file, a path below a file,
    an unknown URI scheme, an empty name (an unset shell variable would otherwise mean
    the current folder); and, locally, a folder that cannot be written."""
    if not str(location).strip():
        raise InputError(f"{what} is empty (an unset shell variable?); give the folder to "
                         f"write, e.g. {what} runs/v3")
    fs, path = resolve(location)
    kind = file_type(location)
    if kind == pafs.FileType.File:
        raise InputError(f"{what} {location} is a file; give a folder (it is created if "
                         "missing)")
    if is_uri(location):
        return
    # walk up to the first existing ancestor: it must be a folder we can write in
    probe = path
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise InputError(f"{what} {location}: {probe} is a file, so nothing can be "
                         "created below it; choose another location")
    if os.path.isdir(probe) and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what} {location}: {probe} is not writable; choose another "
                         "location or fix its permissions")
