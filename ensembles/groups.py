"""The MERTools protocol: fold members of one (config, seed) make one model.

A group is every member sharing a config dict (all fields; the fold is not part of
it) and a seed. Within a group:

- test splits (labelled or not): logits are the mean of the fold members' logits,
  valence the mean of their predictions, aligned by sample name (MERTools averages its
  5 fold models); the sample order is the first member's, i.e. the store's (a
  candidates file's order, where the split came from one);
- out-of-fold ("cv"): the fold members' held-out predictions concatenated, so each
  train sample appears once, ordered by sample name. Should two members cover the same
  sample (a duplicated fold) their predictions for it are averaged.

A group missing folds (fewer distinct folds than config["n_folds"]) or holding a fold
twice is still used, with a warning in `Group.warnings`: its test predictions average
the members present, and its cv covers only their held-out samples.

Entry point for the trainer CLI, to print "the fold-averaged members of each seed"::

    from ensembles.groups import seed_table
    print(seed_table(results))   # results: list[MemberResult], read or just trained
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ensembles.tables import CV, format_table, row_split, rows_of, score_splits, unlabelled_lines
from mer_ray.data.dataset import Dataset
from mer_ray.errors import InputError
from mer_ray.train.result import OOF, MemberResult, SplitPredictions


@dataclass
class Group:
    config: dict
    seed: int
    members: list[MemberResult]  # sorted by fold
    predictions: dict[str, SplitPredictions]  # "oof" + test splits -> fold-averaged
    label: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def folds(self) -> list[int]:
        return [m.fold for m in self.members]

    @property
    def missing_folds(self) -> list[int]:
        return _missing_folds(self.config, self.folds)

    @property
    def warmup(self):
        return self.config.get("warmup")

    @property
    def dataset(self) -> Dataset:
        return self.members[0].description

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.predictions if s != OOF]

    def where(self) -> str:
        """A member file of the group, to name in messages."""
        return str(self.members[0].path)


def config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def rows_in(ref_names, names, split: str, where, ref_where) -> np.ndarray:
    """Row of each of `names` in `ref_names`; the two must hold the same test samples
    (else an InputError naming both files)."""
    if len(names) != len(ref_names) or set(names) != set(ref_names):
        raise InputError(
            f"{where}: its {split} samples differ from those of {ref_where}; members "
            "combined together must predict the same test samples"
        )
    index = {n: i for i, n in enumerate(ref_names)}
    return np.array([index[n] for n in names], dtype=np.int64)


def _add(total, part, rows):
    if total is not None and part is not None:
        total[rows] += part


def _mean_over_members(members, split) -> SplitPredictions:
    """Average members' predictions of a test split, in the first member's sample order."""
    ref = members[0].predictions[split]
    order = ref.names
    keys = set(ref.masked)
    for m in members:
        keys &= set(m.predictions[split].masked)
    with_valence = ref.valence is not None
    logits = np.zeros((len(order), ref.logits.shape[1]), np.float64)
    valence = np.zeros(len(order), np.float64) if with_valence else None
    masked = {k: [np.zeros_like(logits), None if valence is None else np.zeros_like(valence)]
              for k in keys}
    for m in members:
        p = m.predictions[split]
        rows = rows_in(order, p.names, split, m.path, members[0].path)
        logits[rows] += p.logits
        _add(valence, p.valence, rows)
        for k in keys:
            masked[k][0][rows] += p.masked[k][0]
            _add(masked[k][1], p.masked[k][1], rows)
    n = len(members)
    return SplitPredictions(
        names=np.asarray(order), logits=logits / n,
        valence=None if valence is None else valence / n,
        label=ref.label, valence_label=ref.valence_label,
        masked={k: (lv[0] / n, None if lv[1] is None else lv[1] / n) for k, lv in masked.items()},
    )


def _concat_oof(members) -> SplitPredictions:
    """Concatenate held-out predictions; one row per sample name, sorted by name."""
    parts = [m.predictions[OOF] for m in members]
    names = np.concatenate([p.names for p in parts])
    uniq, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)

    def average(arrays):
        if any(a is None for a in arrays):
            return None
        x = np.concatenate(arrays).astype(np.float64)
        out = np.zeros((len(uniq),) + x.shape[1:])
        np.add.at(out, inverse, x)
        return out / counts.reshape((-1,) + (1,) * (x.ndim - 1))

    keys = set.intersection(*(set(p.masked) for p in parts))
    return SplitPredictions(
        names=uniq,
        logits=average([p.logits for p in parts]),
        valence=average([p.valence for p in parts]),
        label=np.concatenate([p.label for p in parts])[first],
        valence_label=np.concatenate([p.valence_label for p in parts])[first],
        masked={k: (average([p.masked[k][0] for p in parts]),
                    average([p.masked[k][1] for p in parts])) for k in keys},
    )


def _missing_folds(config: dict, folds: list[int]) -> list[int]:
    return sorted(set(range(int(config.get("n_folds", len(set(folds)))))) - set(folds))


def _fold_warnings(label: str, config: dict, folds: list[int], seed: int = 0) -> list[str]:
    n_folds = int(config.get("n_folds", len(set(folds))))
    dup = sorted(f for f, c in Counter(folds).items() if c > 1)
    missing = _missing_folds(config, folds)
    out = []
    if missing:
        have = len(set(folds))
        out.append(
            f"{label}: member(s) {' '.join(f'f{f}s{seed}' for f in missing)} missing, so "
            f"{have} of {n_folds} folds: its cv covers only their held-out samples (about "
            f"{100 * have // n_folds} % of train) and its test predictions average {have} "
            "folds; the command that made the run, run again, trains only the missing "
            "members (`mer-ray status RUN` lists them)"
        )
    if dup:
        out.append(f"{label}: fold(s) {dup} appear more than once; their predictions are averaged")
    return out


def build_group(config: dict, seed: int, members: list[MemberResult], label: str = "") -> Group:
    members = sorted(members, key=lambda m: (m.fold, str(m.path)))
    label = label or f"{config.get('preset')} warmup={config.get('warmup')} seed={seed}"
    preds = {OOF: _concat_oof(members)}
    for split in members[0].test_splits:
        preds[split] = _mean_over_members(members, split)
    return Group(config=config, seed=seed, members=members, predictions=preds, label=label,
                 warnings=_fold_warnings(label, config, [m.fold for m in members], seed))


def group_labels(keys: list[tuple[dict, int]]) -> list[str]:
    """Readable labels: preset, warmup, any other config field that differs, seed."""
    configs = [c for c, _ in keys]
    fields = sorted({k for c in configs for k in c})
    varying = [k for k in fields if k not in ("preset", "warmup")
               and len({json.dumps(c.get(k)) for c in configs}) > 1]
    labels = []
    for c, seed in keys:
        extra = "".join(f" {k}={c.get(k)}" for k in varying)
        labels.append(f"{c.get('preset')} warmup={c.get('warmup')}{extra} seed={seed}")
    return labels


def group_members(members: list[MemberResult]) -> list[tuple[str, list[MemberResult]]]:
    """(label, members) of each (config, seed) group, in a stable order (preset, warmup,
    config, seed); no prediction is touched."""
    by_key: dict[tuple[str, int], list[MemberResult]] = {}
    for m in members:
        by_key.setdefault((config_key(m.config), int(m.seed)), []).append(m)

    def order(key):
        c = by_key[key][0].config
        return (str(c.get("preset")), json.dumps(c.get("warmup")), key[0], key[1])

    keys = sorted(by_key, key=order)
    labels = group_labels([(by_key[k][0].config, k[1]) for k in keys])
    return [(label, by_key[k]) for k, label in zip(keys, labels)]


def make_groups(members: list[MemberResult]) -> list[Group]:
    """Group members by (config, seed) (group_members) and fold-average each."""
    return [build_group(ms[0].config, int(ms[0].seed), ms, label)
            for label, ms in group_members(members)]


def score_group(group: Group) -> dict:
    """{row: metrics} for cv and the labelled test splits."""
    return score_splits(group.predictions, group.dataset)


def cv_score(scores: dict) -> float:
    """The ranking key: cv combined (F1 - 0.25 MSE), or cv F1 without valence labels."""
    cv = scores.get("cv", {})
    return cv.get("combined", cv.get("f1", float("-inf")))



def seed_table(members: list[MemberResult]) -> str:
    """One MERTools table per (config, seed) group of fold-averaged members, with warnings."""
    blocks = []
    for g in make_groups(members):
        title = f"{g.label}: {len(g.members)} fold member(s), folds {g.folds}"
        text = format_table(score_group(g), title, unlabelled_lines(g.predictions, g.dataset))
        blocks.append("\n".join([text] + [f"warning: {w}" for w in g.warnings]))
    return "\n\n".join(blocks)


def trial_summary(members: list[MemberResult]) -> dict:
    """Mean over seeds of each seed's fold-averaged scores: cv_f1, test1_acc, ...
    (plus `seeds` and `members`): what a Tune trial reports at its end."""
    values: dict[str, list[float]] = {}
    groups = make_groups(members) if members else []
    for g in groups:
        for split, metrics in score_group(g).items():
            for name, value in metrics.items():
                values.setdefault(f"{split}_{name}", []).append(value)
    summary = {k: sum(v) / len(v) for k, v in values.items()}
    summary.update(seeds=len(groups), members=len(members))
    return summary


def trial_summary_keys(dataset: Dataset) -> list[str]:
    """The keys trial_summary gives for members of `dataset`, known before any member
    exists (a live Tune trial reports them empty until its end)."""
    keys = []
    for row in rows_of(dataset):
        split = row_split(row)
        valence = dataset.has_valence if row == CV else dataset.scores_valence(split)
        keys += [f"{row}_{k}" for k in ("f1", "acc") + (("mse", "combined") if valence else ())]
    return keys + ["seeds", "members"]


def trial_table(rows) -> str:
    """One line per grid setting: its trial_summary scores (cv F1 and combined, then F1
    and accuracy of each labelled test split)."""
    cols = []
    for _, m in rows:
        splits = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in m if "_" in k))
        for s in splits:
            wanted = ("f1", "combined") if s == "cv" else ("f1", "acc")
            cols += [f"{s}_{w}" for w in wanted if f"{s}_{w}" in m and f"{s}_{w}" not in cols]
    head = f"{'setting':<24}{'seeds':>6}" + "".join(f"{k.replace('_', ' '):>15}" for k in cols)
    lines = [head, "-" * len(head)]
    for setting, m in rows:
        name = ", ".join(f"{k}={v}" for k, v in setting.items()) or "(preset)"
        cells = "".join(f"{m.get(k, float('nan')):>15.4f}" for k in cols)
        lines.append(f"{name:<24}{int(m.get('seeds', 0)):>6}" + cells)
    return "\n".join(lines)
