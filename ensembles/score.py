"""`mer-ray ensemble score`: score an ensemble of runs and write its outputs.

`evaluate(members, strategy)` builds the groups (`ensembles.groups`), the ensemble of
all of them, the best single group (highest cv combined; the first on a tie) and one
ensemble per warmup (the groups with that warmup, same strategy). `score_runs` adds
loading and writing: into --out (default RUN/ensemble for one run)

    scores.json            every score, the weights, the groups, notes and warnings
    predictions.parquet    per sample: split (oof, then every test split), name,
                           label (null where unlabelled), valence_label, logits,
                           probabilities, predicted, predicted_class, valence
    submission_<split>.csv one per test split, labelled or not: header
                           name,discrete[,valence] (discrete = class name in the
                           members' class order; valence = the ensemble's prediction,
                           where the models predict valence), one row per sample in
                           the store's order (a candidates file's order, where the
                           split came from one)

Labelled splits are scored; unlabelled ones are listed as "N samples, no labels:
predictions only" and get a submission all the same. scores.json marks which numbers
chose anything (the out-of-fold "cv" row: best single group, weighted / greedy weights)
and which were held out (every test split).

Everything is computed and rendered before the first byte is written, and the folder
is written via a temporary one (`ensembles.output`), so a refusal leaves --out as it was.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ensembles.groups import Group, cv_score, make_groups, score_group
from ensembles.load import load_members
from ensembles.output import check_out, write_outputs
from ensembles.prior import MIN_SAMPLES, class_prior, estimate_prior, prior_lines
from ensembles.strategies import Ensemble, combine, softmax
from ensembles.tables import format_table, score_splits, unlabelled_lines
from mer_ray.data.dataset import Dataset
from mer_ray.errors import InputError
from mer_ray.storage import join
from mer_ray.train.result import OOF, MemberResult

ENSEMBLE_DIR = "ensemble"


@dataclass
class Evaluation:
    strategy: str
    members: list[MemberResult]
    groups: list[Group]
    group_scores: list[dict]
    ensemble: Ensemble
    scores: dict
    best: int  # index into groups
    warmups: dict = field(default_factory=dict)  # warmup -> (Ensemble, scores)

    @property
    def classes(self) -> list[str]:
        return list(self.members[0].classes)

    @property
    def dataset(self) -> Dataset:
        return self.members[0].description

    @property
    def test_splits(self) -> list[str]:
        return self.groups[0].test_splits

    def notes_for(self, ensemble: Ensemble) -> list[str]:
        return unlabelled_lines(ensemble.predictions, self.dataset)

    @property
    def warnings(self) -> list[str]:
        return [w for g in self.groups for w in g.warnings]


def evaluate(members: list[MemberResult], strategy: str = "mean") -> Evaluation:
    groups = make_groups(members)
    dataset = members[0].description
    ensemble = combine(groups, strategy)
    group_scores = [score_group(g) for g in groups]
    ranks = [cv_score(s) for s in group_scores]  # out-of-fold only: never a test split
    best = int(np.argmax(ranks))  # first of equals
    warmups = {}
    for w in sorted({json.dumps(g.warmup) for g in groups}, key=_warmup_order):
        subset = [g for g in groups if json.dumps(g.warmup) == w]
        e = combine(subset, strategy)
        warmups[json.loads(w)] = (e, score_splits(e.predictions, dataset))
    return Evaluation(strategy, members, groups, group_scores, ensemble,
                      score_splits(ensemble.predictions, dataset), best, warmups)


def _warmup_order(w: str):
    v = json.loads(w)
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


PRIOR_SHIFTS = ("none", "em")


def prior_shifts(ev: Evaluation, prior_shift: str = "none", splits=None) -> dict:
    """The EM estimate of each test split's class prior (ensembles.prior), from the
    ensemble's probabilities, beside train's (the out-of-fold labels'). Estimated for the
    splits named, else for every unlabelled split (and, with prior_shift="em", every
    test split; one with too few samples is then skipped, with a note). With "em" the
    ensemble's predictions of those splits are moved to their estimated prior (logits
    become log-probabilities, so argmax, softmax and the submission follow) and the
    labelled ones re-scored. Returns {split: PriorShift}."""
    if prior_shift not in PRIOR_SHIFTS:
        raise InputError(f"{prior_shift!r}: choose one of "
                         f"{', '.join(PRIOR_SHIFTS)}", param="prior_shift")
    have = ev.test_splits
    for name in splits or ():
        if name not in have:
            raise InputError(f"{name}: not in the run's predictions (its test "
                             f"splits: {', '.join(have) or 'none'})", param="prior_splits")
    wanted = list(splits) if splits else [
        x for x in have if prior_shift == "em" or x in ev.dataset.unlabelled_splits]
    train = class_prior(ev.ensemble.predictions[OOF].label, len(ev.classes))
    shifts = {}
    for split in wanted:
        pred = ev.ensemble.predictions[split]
        if len(pred.names) < MIN_SAMPLES and not splits:
            ev.ensemble.notes.append(f"{split}: {len(pred.names)} samples, too few to "
                                     "estimate its class prior; left as it is")
            continue
        shift = estimate_prior(softmax(pred.logits), train, f"split {split}")
        shifts[split] = shift
        if prior_shift == "em":
            pred.logits = np.log(np.clip(shift.probabilities, 1e-12, None))
    if prior_shift == "em" and shifts:
        ev.scores = score_splits(ev.ensemble.predictions, ev.dataset)
        ev.ensemble.notes.append("--prior-shift em: the ensemble's predictions of "
                                 f"{', '.join(shifts)} are moved to each split's estimated "
                                 "class prior (the per-warmup and single-group tables are not)")
    return shifts


def prior_text(ev: Evaluation, shifts: dict) -> list[str]:
    lines = []
    for split, shift in shifts.items():
        lines += prior_lines(shift, ev.classes, f"{split} ({len(shift.probabilities)} samples)")
    return lines


def format_evaluation(ev: Evaluation) -> str:
    g = ev.groups
    # a group short of folds changes what every figure below means: said first, and again
    # with the notes at the end
    # (_fold_warnings puts the missing-folds warning first)
    blocks = [f"warning: {group.warnings[0]}" for group in g if group.missing_folds] + [
        format_table(ev.scores, f"ensemble ({ev.strategy}, {len(g)} group(s) of "
                                f"{len(ev.members)} member(s))", ev.notes_for(ev.ensemble)),
        format_table(ev.group_scores[ev.best], f"best single group (by cv "
                                               f"{ev.dataset.metric_name()}): {g[ev.best].label}"),
    ]
    for w, (e, s) in ev.warmups.items():
        blocks.append(format_table(s, f"warmup {w} ({ev.strategy}, {len(e.groups)} group(s))"))
    if ev.strategy in ("weighted", "greedy"):
        lines = [f"{ev.strategy} weights:"] + [
            f"  {w:.3f}  {label}" for label, w in ev.ensemble.weight_by_label().items() if w >= 5e-4
        ]
        blocks.append("\n".join(lines))
    notes = [f"note: {n}" for n in ev.ensemble.notes] + [f"warning: {w}" for w in ev.warnings]
    if notes:
        blocks.append("\n".join(notes))
    return "\n\n".join(blocks)


def scores_json(ev: Evaluation, runs: list[str], where: str | None,
                shifts: dict | None = None, prior_shift: str = "none") -> dict:
    weights = ev.ensemble.weights
    best = ev.groups[ev.best]
    return {
        "class_prior": {split: {"train": sh.train.tolist(), "estimate": sh.estimate.tolist(),
                                "l1": sh.l1, "applied": prior_shift == "em"}
                        for split, sh in (shifts or {}).items()},
        "format": "mer-ray-ensemble/1",
        "strategy": ev.strategy,
        "runs": runs,
        "where": where,
        "classes": ev.classes,
        "dataset": ev.dataset.to_dict(),
        "store_content_hash": ev.members[0].store.get("content_hash"),
        # what chose anything (best single group, fitted weights) vs what stayed held out
        "selection": {"used_for_selection": ["cv"], "held_out": list(ev.dataset.scored_splits),
                      "unlabelled": list(ev.dataset.unlabelled_splits)},
        "n_members": len(ev.members),
        "ensemble": {"scores": ev.scores, "weights": ev.ensemble.weight_by_label()},
        "best_single": {"label": best.label, "config": best.config, "seed": best.seed,
                        "scores": ev.group_scores[ev.best]},
        "warmups": {str(w): {"n_groups": len(e.groups), "scores": s,
                             "weights": e.weight_by_label()}
                    for w, (e, s) in ev.warmups.items()},
        "groups": [{"label": g.label, "config": g.config, "seed": g.seed, "folds": g.folds,
                    "member_ids": [m.member_id for m in g.members], "scores": s,
                    "weight": float(w)}
                   for g, s, w in zip(ev.groups, ev.group_scores, weights)],
        "notes": ev.ensemble.notes,
        "warnings": ev.warnings,
    }


def predictions_table(ensemble: Ensemble, classes: list[str]) -> pa.Table:
    cols = {k: [] for k in ("split", "name", "label", "valence_label", "logits",
                            "probabilities", "predicted", "valence")}
    with_valence = ensemble.predictions[OOF].valence is not None
    for split, p in ensemble.predictions.items():
        cols["split"] += [split] * len(p.names)
        cols["name"] += list(map(str, p.names))
        cols["label"].append(np.asarray(p.label, np.int64))
        cols["valence_label"].append(np.asarray(p.valence_label, np.float32))
        cols["logits"].append(np.asarray(p.logits, np.float32))
        cols["probabilities"].append(softmax(p.logits).astype(np.float32))
        cols["predicted"].append(np.asarray(p.logits).argmax(axis=1).astype(np.int16))
        if with_valence:
            cols["valence"].append(np.asarray(p.valence, np.float32))
    n_classes = len(classes)

    def fsl(parts):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(parts).reshape(-1)),
                                                 n_classes)

    predicted = np.concatenate(cols["predicted"])
    label = np.concatenate(cols["label"])
    vl = np.concatenate(cols["valence_label"])
    columns = {
        "split": pa.array(cols["split"], pa.string()),
        "name": pa.array(cols["name"], pa.string()),
        "label": pa.array(np.where(label < 0, 0, label), pa.int16(), mask=label < 0),
        "valence_label": pa.array(vl, mask=np.isnan(vl)),
        "logits": fsl(cols["logits"]),
        "probabilities": fsl(cols["probabilities"]),
        "predicted": pa.array(predicted),
        "predicted_class": pa.array([classes[i] for i in predicted], pa.string()),
    }
    if with_valence:
        columns["valence"] = pa.array(np.concatenate(cols["valence"]))
    meta = {"strategy": ensemble.strategy, "classes": classes}
    return pa.table(columns).replace_schema_metadata(
        {b"mer_ray.ensemble": json.dumps(meta).encode()})


def submission_csv(pred, classes: list[str]) -> bytes:
    """A challenge submission: name,discrete[,valence], one row per sample in order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    with_valence = pred.valence is not None
    w.writerow(["name", "discrete"] + (["valence"] if with_valence else []))
    predicted = np.asarray(pred.logits).argmax(axis=1)
    for i, (name, k) in enumerate(zip(pred.names, predicted)):
        w.writerow([str(name), classes[int(k)]]
                   + ([f"{float(pred.valence[i]):.6f}"] if with_valence else []))
    return buf.getvalue().encode()


def submission_name(split: str) -> str:
    return f"submission_{split}.csv"


def render_outputs(ev: Evaluation, runs: list[str], where: str | None,
                   shifts: dict | None = None, prior_shift: str = "none") -> dict[str, bytes]:
    sink = pa.BufferOutputStream()
    pq.write_table(predictions_table(ev.ensemble, ev.classes), sink, compression="zstd")
    files = {
        "scores.json": (json.dumps(scores_json(ev, runs, where, shifts, prior_shift),
                                   indent=1) + "\n").encode(),
        "predictions.parquet": sink.getvalue().to_pybytes(),
    }
    for split in ev.test_splits:
        files[submission_name(split)] = submission_csv(ev.ensemble.predictions[split],
                                                       ev.classes)
    return files


def default_out(runs: list[str], out: str | None, sub: str) -> str:
    """--out, or RUN/<sub> for a single run; several runs need an explicit --out."""
    if out:
        return out
    if len(runs) != 1:
        raise InputError(f"{len(runs)} runs given: pass --out DIR to say where the "
                         "combined results go")

    return join(runs[0], sub)


def score_runs(runs, strategy: str = "mean", where: str | None = None,
               out: str | None = None, prior_shift: str = "none",
               prior_splits=None) -> tuple[str, str]:
    """Load, score and write; returns (printed text, output folder). `prior_shift` and
    `prior_splits`: see prior_shifts."""
    runs = [str(r) for r in ([runs] if isinstance(runs, str) else runs)]
    out = default_out(runs, out, ENSEMBLE_DIR)
    check_out(out)
    warnings = []
    ev = evaluate(load_members(runs, where, warn=warnings.append), strategy)
    shifts = prior_shifts(ev, prior_shift, prior_splits)
    files = render_outputs(ev, runs, where, shifts, prior_shift)
    written = write_outputs(out, files)
    text = "\n".join([format_evaluation(ev), *prior_text(ev, shifts)])
    if warnings:
        text += "\n" + "\n".join(f"warning: {w}" for w in warnings)
    return text, written
