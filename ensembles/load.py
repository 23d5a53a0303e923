"""Load the members of one or more runs, filter them, and refuse unsafe mixes.

A run is a folder or pyarrow filesystem URI holding `members/<member_id>.parquet`
(see `mer_ray.runs.members`) and, when the trainer CLI made it, `run.json` naming the
feature store. Every refusal is an `InputError` naming the file at fault, because
averaging logits of members trained on different data or class orders would give a
silently wrong score. Members saved as failed (they diverged before any finite epoch)
are left out with a warning.
"""

from __future__ import annotations

import json

import numpy as np

from ensembles.where import filter_members
from mer_ray.errors import InputError
from mer_ray.runs.members import MEMBERS_DIR, list_member_files, read_member
from mer_ray.storage import join, read_bytes
from mer_ray.train.result import MemberResult


def load_run(run: str, warn=None) -> list[MemberResult]:
    """Every usable member of one run. No member files -> InputError naming the run."""
    files = list_member_files(run)
    if not files:
        raise InputError(
            f"{run}: no member files (expected {join(run, MEMBERS_DIR)}/*.parquet); "
            "train members into this run first with `mer-ray train`"
        )
    # read_member itself refuses corrupt files and files missing their oof split.
    members = [read_member(f) for f in files]
    for m in members:
        check_finite(m)
    failed = [m for m in members if m.status != "ok"]
    if failed and warn is not None:
        for m in failed:
            warn(f"{m.path}: member failed in training ({m.stop_reason}); left out")
    return [m for m in members if m.status == "ok"]


def check_finite(m: MemberResult) -> None:
    """Scoring never sees NaN: a member file holding one is refused, named."""
    for split, p in m.predictions.items():
        for what, x in (("logits", p.logits), ("valence", p.valence)):
            if x is not None and not np.isfinite(x).all():
                raise InputError(f"{m.path}: {split} {what} hold NaN or Inf; the file is "
                                 "damaged: delete it and run the same training command to "
                                 "retrain that member")


def _dataset_name(m: MemberResult) -> str:
    d = m.description
    return f"{d.name} ({', '.join(d.classes)}; splits {', '.join(s.name for s in d.splits)})"


def check_compatible(members: list[MemberResult]) -> None:
    """Refuse members that disagree on the dataset, the class order, the store they were
    trained on or the test splits they predict."""
    first = members[0]
    for m in members[1:]:
        if m.description != first.description:
            raise InputError(
                f"{m.path} belongs to dataset {_dataset_name(m)} but {first.path} to "
                f"{_dataset_name(first)}; refusing to mix members of two datasets")
        if list(m.classes) != list(first.classes):
            raise InputError(
                f"{m.path} has classes {m.classes} but {first.path} has {first.classes}; "
                "refusing to mix members with different class orders"
            )
        a, b = m.store.get("content_hash"), first.store.get("content_hash")
        if a != b:
            raise InputError(
                f"{m.path} was trained on store {a} but {first.path} on store {b}; "
                "refusing to mix members of different feature stores"
            )
        if m.test_splits != first.test_splits:
            raise InputError(
                f"{m.path} predicts splits {m.test_splits} but {first.path} predicts "
                f"{first.test_splits}; members combined together must predict the same splits")


def load_members(runs, where: str | None = None, warn=None) -> list[MemberResult]:
    """Members of `runs` (a location or a list of them) that satisfy `where`, checked to
    share dataset, class order and store. Nothing left after filtering -> InputError."""
    if isinstance(runs, (str, bytes)) or not hasattr(runs, "__iter__"):
        runs = [runs]
    runs = [str(r) for r in runs]
    if not runs:
        raise InputError("no run given")
    members = [m for r in runs for m in load_run(r, warn)]
    if not members:
        raise InputError(f"{', '.join(runs)}: every member failed in training; nothing to "
                         "combine (see the training log for why)")
    kept = filter_members(members, where)
    if not kept:
        raise InputError(
            f"--where {where!r} keeps none of the {len(members)} member(s) in {', '.join(runs)}"
        )
    check_compatible(kept)
    return kept


def run_info(run: str) -> dict:
    """RUN/run.json as a dict ({} when the run has none or it is unreadable)."""
    try:
        return json.loads(read_bytes(join(run, "run.json")))
    except (OSError, ValueError):
        return {}
