"""The Ray driver's state file, RUN/progress/driver-<host>-<pid>.json: what only the driver
knows (waiting for resources, starting, running, stopped with its reason, complete), for
`mer-ray status`."""

from __future__ import annotations

import json
import os
import socket
import time

from mer_ray.errors import StorageError
from mer_ray.runs.progress import host_name, progress_dir, read_records
from mer_ray.storage import join, remove_quietly, write_bytes

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

        self.log = log
        self.location = join(progress_dir(run), f"driver-{host_name()}-{os.getpid()}.json")
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
        self.stop.set()
        self.thread.join(timeout=5)
        if keep:
            self._write()
            return
        remove_quietly(self.location)


def read_driver_states(run) -> list[dict]:
    """The driver state files of a run (unreadable ones skipped)."""
    return read_records(run, DRIVER_FORMAT)
