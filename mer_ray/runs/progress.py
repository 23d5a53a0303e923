"""Consumers of the trainer's per-epoch progress (trainer.EpochProgress).

The trainer reports numbers, never text; each consumer makes what it needs of them, once
per pack per epoch (nothing per step):

- `PackPrinter`: one console line per pack every N epochs (members live, epoch,
  seconds per epoch, best held-out score so far, an ETA): Ray workers, logs, tests.
- `PackBar`: the same as a tqdm bar, for `--no-ray` runs on a terminal.
- `MemberCurves`: TensorBoard curves of every member, RUN/tensorboard/<member_id>/.
- `PackProgressFile`: RUN/progress/<pack-id>.json, what `mer-ray status` and the live
  Ray Tune reports read while a run goes (`read_progress`).

`pack_consumers` makes the set `run.train_members` gives each pack.

TensorBoard: one event per epoch per member holds its scalars (tags `train/loss`,
`train/lr`, `held_out/f1`, `held_out/acc`, `held_out/mse`, `held_out/combined`; MSE and
combined where the dataset has valence), at step = the 0-based epoch, as the member
file's `history` and `best_epoch` count. The records are tensorboardX's (its protobuf
classes and CRC), written here rather than through its SummaryWriter, which gives every
writer a thread, a multiprocessing queue and an fsync per flush: with a 25-member pack
that is 25 threads, and a full disk would surface as tracebacks from them. Here one
`write` per member per epoch appends the epoch's record and a failure is one note, after
which training goes on without curves. A member trained again (a resumed run) starts
its folder afresh, so each epoch run is one point. For a URI run folder (s3://, ...)
the records stay in memory (about 60 bytes per scalar) and are uploaded when the pack
ends, one file per member through mer_ray.storage.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import sys
import time

LOG_EVERY = 10
PROGRESS_DIR = "progress"
PROGRESS_FORMAT = "mer-ray-progress/1"
TENSORBOARD_DIR = "tensorboard"
# A progress file on object storage is rewritten at most this often (three requests
# each time); a local one after every epoch.
URI_WRITE_EVERY_S = 10.0
# The history row's keys -> TensorBoard tags.
CURVES = (("train_loss", "train/loss"), ("lr", "train/lr"), ("val_f1", "held_out/f1"),
          ("val_acc", "held_out/acc"), ("val_mse", "held_out/mse"),
          ("val_combined", "held_out/combined"))


def eta_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _best_text(p) -> str:
    finite = [b for b in p.best if math.isfinite(b)]
    return (f"best {p.metric} {max(finite):.4f} (mean {sum(finite) / len(finite):.4f})"
            if finite else f"no finite {p.metric} yet")


class PackPrinter:
    """Print a pack's progress every `every` epochs, on its last epoch and when members
    finish. The ETA assumes the slowest member runs every remaining epoch (early
    stopping can only make it shorter)."""

    def __init__(self, log=print, every: int = LOG_EVERY, tag: str = ""):
        self.log, self.every, self.tag = log, max(1, int(every)), tag
        self.seconds = []

    def __call__(self, p) -> None:
        self.seconds.append(p.seconds)
        last = p.epoch == p.epochs - 1 or len(p.finished) == len(p.member_ids)
        if p.epoch % self.every and not last:
            return
        recent = self.seconds[-self.every:]
        per_epoch = sum(recent) / len(recent)
        left = len(p.member_ids) - len(p.finished)
        eta = ("" if last or not left
               else f", ETA {eta_text(per_epoch * (p.epochs - p.epoch - 1))}")
        self.log(f"{self.tag}epoch {p.epoch + 1}/{p.epochs}: {left} of {p.pack_size} "
                 f"member(s) training, {per_epoch:.1f} s/epoch, {_best_text(p)}{eta}")

    def close(self) -> None:
        pass


class PackBar:
    """A tqdm bar over a pack's member-epochs (epochs x members). A member that stops
    early fills in its remaining epochs, so the bar ends full; tqdm's own rate and ETA
    therefore assume every member runs to the last epoch. Postfix: the best held-out
    score so far."""

    def __init__(self, total_members: int, epochs: int, desc: str = "", file=None):
        from tqdm import tqdm

        self.epochs = epochs
        self.bar = tqdm(total=total_members * epochs, desc=desc, unit="member-epoch",
                        file=file or sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, p) -> None:
        self.bar.update(len(p.member_ids) + len(p.finished) * (p.epochs - p.epoch - 1))
        finite = [b for b in p.best if math.isfinite(b)]
        self.bar.set_postfix_str(f"epoch {p.epoch + 1}/{p.epochs}, best {p.metric} "
                                 + (f"{max(finite):.4f}" if finite else "-"), refresh=False)

    def close(self) -> None:
        self.bar.close()


def use_bar(stream=None) -> bool:
    """A bar only where someone watches: stdout and stderr (where the bar goes) both a
    terminal; plain lines in logs, pipes and tests."""
    streams = [stream] if stream is not None else [sys.stdout, sys.stderr]
    return all(getattr(s, "isatty", lambda: False)() for s in streams)


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
    from mer_ray.storage import join

    return join(run, TENSORBOARD_DIR, *([mid] if mid else []))


class MemberCurves:
    """TensorBoard curves of a pack's members (module docstring: tags, steps, files)."""

    def __init__(self, run, member_ids, log=print):
        from mer_ray.storage import is_uri

        self.run, self.log, self.uri = run, log, is_uri(run)
        self.name = (f"events.out.tfevents.{int(time.time())}.{_host()}.{os.getpid()}"
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
        from mer_ray.errors import StorageError
        from mer_ray.storage import join, write_bytes

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
    from mer_ray.storage import resolve

    fs, path = resolve(location)
    try:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------- progress files
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname())[:40] or "host"


def progress_dir(run) -> str:
    from mer_ray.storage import join

    return join(run, PROGRESS_DIR)


def pack_id(member_ids) -> str:
    """<hash of the pack's member ids>-<host>-<pid>: two processes training the same
    members (two commands into one run) keep a file each."""
    import hashlib

    digest = hashlib.sha1(" ".join(sorted(member_ids)).encode()).hexdigest()[:12]
    return f"{digest}-{_host()}-{os.getpid()}"


class PackProgressFile:
    """RUN/progress/<pack-id>.json: the pack's state, rewritten atomically when the pack
    starts and after every epoch (at most every URI_WRITE_EVERY_S on object storage), and
    removed when the pack's members are saved (`close`). A file left behind is a pack
    that stopped (killed, or its machine lost): `mer-ray status` tells them apart by the
    process (same host) or by how long the file has not changed.

    Per member: fold, seed, epochs run, done (finished training), its best held-out
    metric so far (`best`, the one its best epoch is chosen by) with that epoch, and its
    best held-out F1 so far (`best_f1`, whatever the epoch). Writing is best effort: a failure
    (a full disk) is noted once and training goes on."""

    def __init__(self, run, specs, member_ids, label: str, epochs: int, log=print):
        from mer_ray.storage import is_uri, join

        self.log = log
        self.id = pack_id(member_ids)
        self.location = join(progress_dir(run), self.id + ".json")
        self.every = URI_WRITE_EVERY_S if is_uri(run) else 0.0
        now = time.time()
        self.state = {
            "format": PROGRESS_FORMAT, "pack": self.id, "host": socket.gethostname(),
            "pid": os.getpid(), "setting": label, "started": now, "time": now,
            "epoch": None, "epochs": int(epochs), "seconds_per_epoch": None,
            "metric": None, "pack_size": len(member_ids),
            "members": {mid: {"fold": int(f), "seed": int(s), "epochs": 0, "done": False,
                              "best": None, "best_epoch": None, "best_f1": None}
                        for mid, (f, s) in zip(member_ids, specs)},
        }
        self.seconds: list[float] = []
        self.written = 0.0
        self.broken = False
        self._write(force=True)

    def __call__(self, p) -> None:
        self.seconds.append(p.seconds)
        recent = self.seconds[-10:]
        members = self.state["members"]
        for mid, row, best in zip(p.member_ids, p.rows, p.best):
            m = members[mid]
            m["epochs"] = p.epoch + 1
            if math.isfinite(best) and (m["best"] is None or best > m["best"]):
                m["best"], m["best_epoch"] = float(best), p.epoch
            f1 = row.get("val_f1")
            if f1 is not None and math.isfinite(f1) and (m["best_f1"] is None
                                                         or f1 > m["best_f1"]):
                m["best_f1"] = float(f1)
        for mid in p.finished:
            members[mid]["done"] = True
        self.state.update(time=time.time(), epoch=p.epoch, metric=p.metric,
                          seconds_per_epoch=sum(recent) / len(recent))
        self._write(force=len(p.finished) == len(p.member_ids))

    def _write(self, force: bool = False) -> None:
        from mer_ray.errors import StorageError
        from mer_ray.storage import write_bytes

        if self.broken or (not force and time.time() - self.written < self.every):
            return
        try:
            write_bytes(self.location, json.dumps(self.state).encode())
            self.written = time.time()
        except (OSError, StorageError) as e:
            self.broken = True
            self.log(f"note: progress file {self.location} not written ({e}); "
                     "`mer-ray status` will not see this pack; training goes on")

    def close(self) -> None:
        from mer_ray.storage import remove_quietly

        remove_quietly(self.location)


def read_progress(run) -> list[dict]:
    """Every pack progress file of a run (unreadable or half-written ones skipped: a
    reader never waits on a writer), each with its `location`."""
    return _read_records(run, PROGRESS_FORMAT)


def _read_records(run, record_format: str) -> list[dict]:
    """The JSON files in RUN/progress of one format, each with its `location`."""
    from mer_ray.errors import StorageError
    from mer_ray.storage import list_files, read_bytes

    out = []
    try:
        files = list_files(progress_dir(run), ".json")
    except StorageError:
        return out
    for location in files:
        try:
            record = json.loads(read_bytes(location))
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours
        if isinstance(record, dict) and record.get("format") == record_format:
            record["location"] = location
            out.append(record)
    return out


def remove_finished_progress(run, complete: set[str]) -> None:
    """Delete progress files whose members are all saved (packs that stopped before
    removing theirs, their members trained since by a resumed run)."""
    from mer_ray.storage import remove_quietly

    for record in read_progress(run):
        if set(record.get("members", {})) <= complete:
            remove_quietly(record["location"])


def pack_consumers(run, config, specs, member_ids, log=print, log_every: int = LOG_EVERY,
                   tag: str = "", tensorboard: bool = True, bar: bool = False,
                   label: str = "") -> list:
    """The consumers of one pack, in the order they run: the console (a bar or lines),
    its TensorBoard curves, its progress file. Each has `close()`."""
    console = (PackBar(len(specs), config.epochs, desc=tag.strip() or None) if bar
               else PackPrinter(log, every=log_every, tag=tag))
    consumers = [console]
    if tensorboard:
        consumers.append(MemberCurves(run, member_ids, log=log))
    consumers.append(PackProgressFile(run, specs, member_ids, label, config.epochs, log=log))
    return consumers


# ---------------------------------------------------------------- the Ray driver's view
DRIVER_FORMAT = "mer-ray-driver/1"
HEARTBEAT_S = 10.0


class DriverState:
    """RUN/progress/driver-<host>-<pid>.json: what only the Ray driver knows, for
    `mer-ray status`: each setting waiting for capacity (Tune has not started its trial:
    fewer fit at once), starting (its Train workers are being placed), training, done,
    or stopped (and why). Rewritten on every change and every HEARTBEAT_S by a thread, so
    a reader tells a live driver from a gone one; removed when the driver ends well, kept
    with the reason when the run stopped. Best effort, like the pack files."""

    def __init__(self, run, labels, log=print, note: str = ""):
        import threading

        from mer_ray.storage import join

        self.log = log
        self.location = join(progress_dir(run), f"driver-{_host()}-{os.getpid()}.json")
        self.state = {"format": DRIVER_FORMAT, "host": socket.gethostname(),
                      "pid": os.getpid(), "started": time.time(), "time": time.time(),
                      "note": note, "settings": {label: {"state": "waiting", "reason": None}
                                                 for label in labels}}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.broken = False
        self._write()
        self.thread = threading.Thread(target=self._beat, name="mer-ray-driver-state",
                                       daemon=True)
        self.thread.start()

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state: a copy is inert (only
        # the driver's own object writes the file)
        return {"location": self.location, "state": self.state, "broken": True}

    def __setstate__(self, d):
        import threading

        self.__dict__.update(d, log=print, lock=threading.Lock(), stop=threading.Event(),
                             thread=None)

    def set(self, label: str, state: str, reason: str | None = None) -> None:
        with self.lock:
            entry = self.state["settings"].setdefault(label, {})
            if entry.get("state") == state and entry.get("reason") == reason:
                return
            entry.update(state=state, reason=reason)
        self._write()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self._write()

    def _write(self) -> None:
        from mer_ray.errors import StorageError
        from mer_ray.storage import write_bytes

        if self.broken:
            return
        with self.lock:
            self.state["time"] = time.time()
            data = json.dumps(self.state).encode()
        try:
            write_bytes(self.location, data)
        except (OSError, StorageError) as e:
            self.broken = True
            self.log(f"note: {self.location} not written ({e}); `mer-ray status` will not "
                     "tell waiting trials from starting ones")

    def close(self, keep: bool = False) -> None:
        """Stop the heartbeat; remove the file unless `keep` (a stopped run's reason)."""
        from mer_ray.storage import remove_quietly

        self.stop.set()
        self.thread.join(timeout=5)
        if keep:
            self._write()
            return
        remove_quietly(self.location)


def read_driver_states(run) -> list[dict]:
    """The driver state files of a run (unreadable ones skipped)."""
    return _read_records(run, DRIVER_FORMAT)
