"""Where a run stands, from its files alone (`mer-ray status RUN`; no Ray needed).

- What it should hold: RUN/run.json lists the configs and the seeds each was asked for.
- What it holds: the member files (their footers: status, best epoch, epochs run, the
  held-out fold's metrics); nothing else is read of them.
- What is being trained: RUN/progress/<pack-id>.json, which each pack rewrites after
  every epoch and removes once its members are saved (mer_ray.runs.progress). A file whose
  process is gone (same host) or that has not changed for a long while (the larger of
  STALE_MIN_S and STALE_EPOCHS epochs) belongs to a pack that stopped: killed, or its
  machine lost. Its members are simply missing; the same command trains them again.

The same reading, cut down to one config and a few numbers, is what each Ray Tune trial
reports while it runs (`TrialWatch`, used by mer_ray.distributed.tune).
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import time

from mer_ray.errors import InputError
from mer_ray.runs.driver import HEARTBEAT_S, read_driver_states
from mer_ray.runs.members import existing_member_ids, member_meta, member_path
from mer_ray.runs.progress import eta_text, read_progress
from mer_ray.runs.run import all_specs, read_run, setting_label
from mer_ray.train.presets import TrainConfig
from mer_ray.train.result import member_id

STALE_MIN_S = 300.0
STALE_EPOCHS = 10


def pack_running(record: dict, now: float | None = None) -> bool:
    """Whether a progress file's pack is still training (module docstring)."""
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return False
    per_epoch = record.get("seconds_per_epoch") or 0.0
    return now - float(record.get("time", 0)) <= max(STALE_MIN_S, STALE_EPOCHS * per_epoch)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # killed but not yet reaped by its parent: a zombie (Linux)
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def driver_alive(record: dict, now: float) -> bool:
    """Whether a Ray driver's state file belongs to a driver still running: its process
    (same host), else a heartbeat within a few HEARTBEAT_S."""
    if record.get("host") == socket.gethostname():
        return _alive(record.get("pid"))
    return now - float(record.get("time", 0)) <= 3 * HEARTBEAT_S + 30


def _pack_left_s(record: dict) -> float | None:
    """Seconds the pack still needs if its slowest member runs every remaining epoch."""
    per_epoch = record.get("seconds_per_epoch")
    if per_epoch is None:
        return None
    return (record["epochs"] - (record["epoch"] + 1)) * per_epoch


def _member_view(meta: dict) -> dict:
    oof = (meta.get("metrics") or {}).get("oof", {})
    return {"member_id": meta["member_id"], "fold": int(meta["fold"]),
            "seed": int(meta["seed"]), "status": meta.get("status", "ok"),
            "best_epoch": meta.get("best_epoch"), "epochs_run": meta.get("epochs_run"),
            "f1": oof.get("f1"), "combined": oof.get("combined"),
            "stop_reason": meta.get("stop_reason"),
            # the best held-out F1 of any epoch (the live reports' best_f1)
            "max_f1": max((h["val_f1"] for h in meta.get("history") or ()
                           if h.get("val_f1") is not None and math.isfinite(h["val_f1"])),
                          default=None)}


def run_status(run, now: float | None = None) -> dict:
    """Everything `mer-ray status` shows, as plain data (its --json output)."""
    now = time.time() if now is None else now
    info = read_run(run)
    if not info:
        raise InputError(f"{run}: no run.json here; give a run folder made by `mer-ray "
                         "train`, `tune`, `search` or `demo`")
    configs = _run_configs(run, info)
    recorded = info.get("seeds") or []
    complete = existing_member_ids(run)
    metas = {mid: meta for mid in sorted(complete)
             if (meta := member_meta(member_path(run, mid))) is not None}
    records = read_progress(run)
    for r in records:
        r["running"] = pack_running(r, now)
    driven, stops = _driver_words(read_driver_states(run), now)
    # a member in a running pack is in flight; in a stopped one (not saved) it is missing
    in_flight = {mid for r in records if r["running"]
                 for mid in r.get("members", {}) if mid not in complete}
    views, label_of = [], {}
    for i, config in enumerate(configs):
        seeds = sorted(recorded[i]) if i < len(recorded) and recorded[i] else []
        view, wanted = _setting_view(config, seeds, metas, records, complete, in_flight)
        view["driver"] = driven.get(view["label"])
        view["stopped_because"] = stops.get(view["label"])
        views.append(view)
        label_of.update(dict.fromkeys(wanted, view["label"]))
    packs = [_pack_view(r, label_of, complete, now)
             for r in sorted(records, key=lambda r: (not r["running"], r.get("started", 0)))]
    packs = [p for p in packs if p["running"] or p["saved"] < p["members"]]
    running = [p for p in packs if p["running"]]
    expected = sum(v["expected"] for v in views)
    saved = sum(v["saved"] for v in views)
    live_states = {v["driver"] for v in views if v["driver"]}
    state = ("running" if running else "complete" if expected and saved >= expected
             else "starting" if "starting" in live_states or "training" in live_states
             else "waiting for resources" if "waiting" in live_states
             else "stopped" if saved or any(not p["running"] for p in packs) or stops
             else "not started")
    return {"run": str(run), "store": info.get("store"),
            "dataset": (info.get("dataset") or {}).get("name"), "state": state,
            "configs": views, "packs": packs, "eta_s": _eta_s(running, views),
            "expected": expected, "saved": saved,
            "resume": [{"label": v["label"], "missing": v["missing"]}
                       for v in views if v["missing"]]
            if state in ("stopped", "not started") else []}


def _run_configs(run, info: dict) -> list[TrainConfig]:
    configs = []
    for i, c in enumerate(info.get("configs", [])):
        try:
            configs.append(TrainConfig(**c))
        except (TypeError, InputError) as e:
            raise InputError(f"{run}/run.json: config {i + 1} is not one this mer-ray reads "
                             f"({e}); read the run with the mer-ray that made it") from None
    return configs


def _driver_words(drivers: list[dict], now: float) -> tuple[dict, dict]:
    """(setting label -> state of a live driver, setting label -> why it stopped); the
    latest driver's word on each setting wins."""
    driven, stops = {}, {}
    for d in sorted(drivers, key=lambda d: d.get("time", 0)):
        live = driver_alive(d, now)
        for label, entry in (d.get("settings") or {}).items():
            driven.pop(label, None)
            stops.pop(label, None)
            if entry.get("state") == "stopped" and entry.get("reason"):
                stops[label] = entry["reason"]
            elif live:
                driven[label] = entry.get("state")
    return driven, stops


def _setting_view(config, seeds, metas, records, complete, in_flight) -> tuple[dict, dict]:
    """One setting's members: expected, saved, failed, in flight, missing; and the
    member ids it wants."""
    cfg = config.to_dict()
    seeds_recorded = bool(seeds)
    mine = [m for m in metas.values() if m.get("config") == cfg]
    if not seeds_recorded:  # an older run.json: the seeds its members show
        seeds = sorted({int(m["seed"]) for m in mine}
                       | {int(v["seed"]) for r in records
                          for mid, v in r.get("members", {}).items()
                          if member_id(cfg, v["fold"], v["seed"]) == mid})
    specs = all_specs(config, seeds)
    wanted = {member_id(cfg, f, s): (f, s) for f, s in specs}
    members = sorted((_member_view(m) for m in mine if m["member_id"] in wanted),
                     key=lambda v: (v["seed"], v["fold"]))
    ok = [v for v in members if v["status"] == "ok"]
    missing = [list(spec) for mid, spec in wanted.items() if mid not in complete]
    flying = [list(spec) for mid, spec in wanted.items() if mid in in_flight]
    return {
        "label": setting_label(config), "config": cfg, "seeds": seeds,
        "seeds_recorded": seeds_recorded, "epochs": config.epochs,
        "expected": len(specs), "saved": len(members), "ok": len(ok),
        "failed": [v for v in members if v["status"] != "ok"],
        "in_flight": len(flying), "missing": missing,
        "waiting": [s for s in missing if s not in flying],
        "best_epochs": [v["best_epoch"] for v in ok],
        "held_out": {k: _spread([v[k] for v in ok if v[k] is not None])
                     for k in ("f1", "combined")},
        "members": members,
    }, wanted


def _pack_view(record: dict, label_of: dict, complete: set, now: float) -> dict:
    states = record.get("members", {})
    bests = [v["best"] for v in states.values() if v.get("best") is not None]
    labels = {label_of[mid] for mid in states if mid in label_of}
    return {
        "pack": record.get("pack"), "host": record.get("host"),
        "setting": labels.pop() if len(labels) == 1 else record.get("setting"),
        "pid": record.get("pid"), "running": record["running"], "members": len(states),
        "training": sum(1 for v in states.values() if not v.get("done")),
        "saved": sum(1 for mid in states if mid in complete),
        "epoch": record.get("epoch"), "epochs": record.get("epochs"),
        "seconds_per_epoch": record.get("seconds_per_epoch"), "metric": record.get("metric"),
        "best": max(bests) if bests else None,
        "updated_s_ago": max(0.0, now - float(record.get("time", now))),
        "left_s": _pack_left_s(record) if record["running"] else None,
        "location": record["location"],
    }


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "best": max(values)}


def _eta_s(running: list[dict], views: list[dict]) -> float | None:
    """The running packs' remaining epochs, then the waiting members in rounds as
    large as the running packs together, each round a full pack's epochs: an upper
    estimate (early stopping can only shorten it). None before every pack's first epoch."""
    if not running or any(p["left_s"] is None for p in running):
        return None
    left = max(p["left_s"] for p in running)
    waiting = sum(len(v["waiting"]) for v in views)
    if waiting:
        per_epoch = statistics.mean(p["seconds_per_epoch"] for p in running)
        capacity = sum(p["members"] for p in running)
        epochs = max(p["epochs"] for p in running)
        left += math.ceil(waiting / capacity) * epochs * per_epoch
    return left


def _specs_text(specs) -> str:
    return " ".join(f"f{f}s{s}" for f, s in specs)


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_status(status: dict, members: bool = False) -> str:
    """The text `mer-ray status` prints."""
    about = [x for x in (status["store"] and f"store {status['store']}", status["dataset"]) if x]
    lines = [f"run {status['run']}" + (f" ({', '.join(about)})" if about else "")]
    for v in status["configs"]:
        seeds = " ".join(map(str, v["seeds"])) or "none"
        note = "" if v["seeds_recorded"] else ", as found: run.json names none"
        driver = {"waiting": "; waiting for resources (a running trial must finish "
                             "first)",
                  "starting": "; starting (its Train workers are being placed)",
                  "training": "", "done": "", None: ""}.get(v["driver"], "")
        lines.append(f"{v['label']} (seeds {seeds}{note}): {v['saved']} of {v['expected']} "
                     f"member(s) saved ({len(v['failed'])} failed), {v['in_flight']} in "
                     f"flight, {len(v['waiting'])} not started{driver}")
        if v["stopped_because"] and v["saved"] < v["expected"]:
            lines.append(f"  stopped: {v['stopped_because']}")
        if v["best_epochs"]:
            be = sorted(v["best_epochs"])
            lines.append(f"  best epochs {be[0]}..{be[-1]} (median "
                         f"{statistics.median(be):g}) of {v['epochs']}; held-out F1 mean "
                         f"{_num(v['held_out']['f1']['mean'])}, best "
                         f"{_num(v['held_out']['f1']['best'])}"
                         + (f"; combined mean {_num(v['held_out']['combined']['mean'])}, best "
                            f"{_num(v['held_out']['combined']['best'])}"
                            if v["held_out"]["combined"] else ""))
        for m in v["failed"]:
            lines.append(f"  failed: {m['member_id']} ({m['stop_reason']})")
        if members:
            for m in v["members"]:
                lines.append(f"    f{m['fold']}s{m['seed']} {m['status']:<6} best epoch "
                             f"{m['best_epoch']} of {m['epochs_run']} run, F1 {_num(m['f1'])}, "
                             f"combined {_num(m['combined'])}")
    for p in status["packs"]:
        where = f"{p['host']} pid {p['pid']}"
        if p["running"]:
            progress = ("starting" if p["epoch"] is None else
                        f"epoch {p['epoch'] + 1}/{p['epochs']}, "
                        f"{p['seconds_per_epoch']:.1f} s/epoch, best {p['metric']} "
                        f"{_num(p['best'])}")
            eta = "" if p["left_s"] is None else f", ETA {eta_text(p['left_s'])}"
            lines.append(f"in flight: {p['setting']}: {p['training']} of {p['members']} "
                         f"member(s) training ({where}), {progress}, updated "
                         f"{p['updated_s_ago']:.0f} s ago{eta}")
        else:
            lines.append(f"stopped: {p['setting']}: pack of {p['members']} member(s) "
                         f"({where}) last reported epoch "
                         f"{'-' if p['epoch'] is None else p['epoch'] + 1}/{p['epochs']} "
                         f"{eta_text(p['updated_s_ago'])} ago; its unsaved members are "
                         "trained again by the same command")
    if len(status["configs"]) > 1:
        lines.append(f"in all: {status['saved']} of {status['expected']} member(s) saved")
    state = status["state"]
    if state in ("starting", "waiting for resources"):
        lines.append(f"{state}: the Ray driver is up and no pack has reported yet" +
                     (" (trials wait for capacity: fewer fit the cluster at once than the "
                      "grid has)" if state == "waiting for resources" else
                      " (Train is placing the workers; the first epoch follows)"))
    elif state == "running":
        eta = status["eta_s"]
        lines.append("running: " + (f"ETA {eta_text(eta)} (upper estimate: early stopping "
                                    "can only shorten it)" if eta is not None
                                    else "ETA after every pack's first epoch"))
    elif state == "complete":
        lines.append("complete: every member is saved")
    else:
        n = sum(len(r["missing"]) for r in status["resume"])
        lines.append(f"{state}: nothing is training; the same command resumes and trains "
                     f"exactly these {n} member(s):")
        for r in status["resume"]:
            lines.append(f"  {r['label']}: {_specs_text(r['missing'])}")
    return "\n".join(lines)


class TrialWatch:
    """One Tune trial's live numbers, read from the run's files every few seconds by the
    trial function (mer_ray.distributed.tune): members saved of this config and seeds, packs
    running and their least advanced epoch, the best held-out F1 of any member at any
    epoch so far (saved members: their history; running ones: their progress file), the
    best held-out combined metric likewise. Only progress files written since the trial
    started count (a killed earlier attempt's files do not). A saved member's footer is
    read once."""

    def __init__(self, run, config, seeds, since: float | None = None):
        self.run, self.epochs = run, config.epochs
        cfg = config.to_dict()
        self.wanted = {member_id(cfg, f, s) for f, s in all_specs(config, seeds)}
        self.since = time.time() if since is None else since
        self.saved: dict[str, dict] = {}

    def snapshot(self) -> dict:
        now = time.time()
        complete = existing_member_ids(self.run) & self.wanted
        for mid in sorted(complete - set(self.saved)):
            meta = member_meta(member_path(self.run, mid))
            if meta is not None:
                self.saved[mid] = _member_view(meta)
        saved = [self.saved[m] for m in complete if m in self.saved]
        packs = [r for r in read_progress(self.run)
                 if float(r.get("time", 0)) >= self.since - 1 and pack_running(r, now)
                 and self.wanted & set(r.get("members", {}))]
        live = {mid: v for r in packs for mid, v in r["members"].items()
                if mid in self.wanted and mid not in complete}
        f1s = [v["max_f1"] for v in saved if v["max_f1"] is not None]
        f1s += [v["best_f1"] for v in live.values() if v.get("best_f1") is not None]
        combined = [v["combined"] for v in saved if v["combined"] is not None]
        combined += [v["best"] for r in packs if r.get("metric") == "combined"
                     for mid, v in r["members"].items()
                     if mid in live and v.get("best") is not None]
        epochs_done = len(saved) * self.epochs + sum(
            self.epochs if v.get("done") else v.get("epochs", 0) for v in live.values())
        running_epochs = [r["epoch"] + 1 for r in packs if r.get("epoch") is not None]
        nan = float("nan")
        return {
            "members_saved": len(saved), "members_total": len(self.wanted),
            "epoch": min(running_epochs) if running_epochs else 0,
            "best_f1": max(f1s) if f1s else nan,
            "progress": epochs_done / max(1, len(self.wanted) * self.epochs),
            "members_training": sum(1 for v in live.values() if not v.get("done")),
            "members_failed": sum(1 for v in saved if v["status"] != "ok"),
            "packs_running": len(packs), "epochs": self.epochs,
            "best_combined": max(combined) if combined else nan,
        }
