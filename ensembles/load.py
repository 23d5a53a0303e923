"""Load the members of one or more runs, filter them, and refuse unsafe mixes.

A run is a folder or pyarrow filesystem URI holding `members/<member_id>.parquet`
(see `mer_ray.members`) and, when the trainer CLI made it, `run.json` naming the
feature store. Every refusal is an `InputError` naming the file at fault, because
averaging logits of members trained on different data or class orders would give a
silently wrong score.
"""

from __future__ import annotations

import json

from mer_ray.errors import InputError
from mer_ray.members import MEMBERS_DIR, MemberResult, list_member_files, read_member, resolve

from ensembles.where import filter_members


def load_run(run: str) -> list[MemberResult]:
    """Every member file of one run. No member files -> InputError naming the run."""
    files = list_member_files(run)
    if not files:
        raise InputError(
            f"{run}: no member files (expected {str(run).rstrip('/')}/{MEMBERS_DIR}/*.parquet); "
            "train members into this run first with `mer-ray train`"
        )
    # read_member itself refuses corrupt files and files missing a split, naming them.
    return [read_member(f) for f in files]


def check_compatible(members: list[MemberResult]) -> None:
    """Refuse members that disagree on class order or on the store they were trained on."""
    first = members[0]
    for m in members[1:]:
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


def load_members(runs, where: str | None = None) -> list[MemberResult]:
    """Members of `runs` (a location or a list of them) that satisfy `where`, checked to
    share class order and store. Nothing left after filtering -> InputError."""
    if isinstance(runs, (str, bytes)) or not hasattr(runs, "__iter__"):
        runs = [runs]
    runs = [str(r) for r in runs]
    if not runs:
        raise InputError("no run given")
    members = [m for r in runs for m in load_run(r)]
    kept = filter_members(members, where)
    if not kept:
        raise InputError(
            f"--where {where!r} keeps none of the {len(members)} member(s) in {', '.join(runs)}"
        )
    check_compatible(kept)
    return kept


def run_info(run: str) -> dict:
    """RUN/run.json as a dict ({} when the run has none or it is unreadable)."""
    fs, root = resolve(run)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/run.json") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}
