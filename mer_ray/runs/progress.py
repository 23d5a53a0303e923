"""Consumers of the trainer's per-epoch progress (trainer.EpochProgress).

The trainer reports numbers, never text; each consumer makes what it needs of them, once
per pack per epoch (nothing per step):

- `PackPrinter`: one console line per pack every N epochs (members live, epoch,
  seconds per epoch, best held-out score so far, an ETA): Ray workers, logs, tests.
- `PackBar`: the same as a tqdm bar, for `--no-ray` runs on a terminal.
- `MemberCurves`: TensorBoard curves of every member, RUN/tensorboard/<member_id>/.
- `PackProgressFile`: RUN/progress/<pack-id>.json, what `mer-ray status` and the live
  Ray Tune reports read while a run goes (`read_progress`).

`mer_ray.runs.run.pack_consumers` makes the set `train_members` gives each pack.

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
import sys
import time

from mer_ray.errors import StorageError
from mer_ray.storage import is_uri, join, list_files, read_bytes, remove_quietly, write_bytes

LOG_EVERY = 10
PROGRESS_DIR = "progress"
PROGRESS_FORMAT = "mer-ray-progress/1"
# A progress file on object storage is rewritten at most this often (three requests
# each time); a local one after every epoch.
URI_WRITE_EVERY_S = 10.0


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


# ---------------------------------------------------------------- progress files
def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname())[:40] or "host"


def progress_dir(run) -> str:
    return join(run, PROGRESS_DIR)


def pack_id(member_ids) -> str:
    """<hash of the pack's member ids>-<host>-<pid>: two processes training the same
    members (two commands into one run) keep a file each."""
    import hashlib

    digest = hashlib.sha1(" ".join(sorted(member_ids)).encode()).hexdigest()[:12]
    return f"{digest}-{host_name()}-{os.getpid()}"


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
        remove_quietly(self.location)


def read_progress(run) -> list[dict]:
    """Every pack progress file of a run (unreadable or half-written ones skipped: a
    reader never waits on a writer), each with its `location`."""
    return read_records(run, PROGRESS_FORMAT)


def read_records(run, record_format: str) -> list[dict]:
    """The JSON files in RUN/progress of one format, each with its `location`."""
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
    for record in read_progress(run):
        if set(record.get("members", {})) <= complete:
            remove_quietly(record["location"])


