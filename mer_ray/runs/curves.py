"""Each member's TensorBoard curves: RUN/tensorboard/<member_id>/, one point per epoch."""

from __future__ import annotations

import os
import struct
import time

from mer_ray.errors import StorageError
from mer_ray.runs.progress import host_name
from mer_ray.storage import is_uri, join, resolve, write_bytes

TENSORBOARD_DIR = "tensorboard"


# The history row's keys -> TensorBoard tags.
CURVES = (("train_loss", "train/loss"), ("lr", "train/lr"), ("val_f1", "held_out/f1"),
          ("val_acc", "held_out/acc"), ("val_mse", "held_out/mse"),
          ("val_combined", "held_out/combined"))


# ---------------------------------------------------------------- TensorBoard
def _event_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _event(step: int | None, scalars: dict[str, float]) -> bytes:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    if step is None:  # the file's first record, as TensorBoard expects it
        return _event_record(Event(wall_time=time.time(),
                                   file_version="brain.Event:2").SerializeToString())
    summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()])
    return _event_record(Event(wall_time=time.time(), step=step,
                               summary=summary).SerializeToString())


def tensorboard_dir(run, mid: str | None = None) -> str:
    return join(run, TENSORBOARD_DIR, *([mid] if mid else []))


class MemberCurves:
    """TensorBoard curves of a pack's members (module docstring: tags, steps, files)."""

    def __init__(self, run, member_ids, log=print):
        self.run, self.log, self.uri = run, log, is_uri(run)
        self.name = (f"events.out.tfevents.{int(time.time())}.{host_name()}.{os.getpid()}"
                     f".mer-ray")
        self.buffers = {mid: bytearray() for mid in member_ids}  # URI: the whole file
        self.files = {}
        self.failed = False
        try:
            for mid in member_ids:
                head = _event(None, {})
                if self.uri:
                    self.buffers[mid] += head
                else:
                    folder = tensorboard_dir(run, mid)
                    _clear_local_folder(folder)  # trained again: its old curves go
                    os.makedirs(folder, exist_ok=True)
                    f = open(os.path.join(folder, self.name), "wb")
                    f.write(head)
                    f.flush()
                    self.files[mid] = f
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        self.failed = True
        self.log(f"note: TensorBoard curves of this pack not written ({e}); training goes on")
        for f in self.files.values():
            _close_quietly(f)
        self.files.clear()

    def __call__(self, p) -> None:
        if self.failed:
            return
        try:
            for mid, row in zip(p.member_ids, p.rows):
                scalars = {tag: float(row[key]) for key, tag in CURVES if key in row}
                record = _event(int(row.get("epoch", p.epoch)), scalars)
                if self.uri:
                    self.buffers[mid] += record
                else:
                    f = self.files[mid]
                    f.write(record)
                    f.flush()  # visible to a running TensorBoard; no fsync
        except OSError as e:
            self._fail(e)

    def close(self) -> None:
        """Close the files (local) or upload them (URI). Never raises: the members
        matter more than their curves."""
        for f in self.files.values():
            _close_quietly(f)
        self.files.clear()
        if not self.uri or self.failed:
            return
        try:
            for mid, data in self.buffers.items():
                _clear_uri_folder(tensorboard_dir(self.run, mid))
                write_bytes(join(tensorboard_dir(self.run, mid), self.name), bytes(data))
        except (OSError, StorageError) as e:
            self.log(f"note: TensorBoard curves of this pack not uploaded to {self.run} ({e})")
        self.buffers.clear()


def _close_quietly(f) -> None:
    try:
        f.close()
    except OSError:
        pass


def _clear_local_folder(folder: str) -> None:
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if "tfevents" in name:
                os.remove(os.path.join(folder, name))


def _clear_uri_folder(location: str) -> None:
    fs, path = resolve(location)
    try:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    except OSError:
        pass
