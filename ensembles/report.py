"""`mer-ray report`: figures and one self-contained HTML page for a run.

Writes into --out (default RUN/report), atomically like `ensemble score`:

    confusion.png       confusion matrix of the ensemble on cv and each labelled test
                        split (rows = true class, colour = row share, numbers = counts)
    per_class_f1.png    per-class F1 of the ensemble on the same
    warmup_f1.png       F1 of the labelled test splits (cv where there is none) against
                        warmup: each (config, seed) group as a dot,
                        mean +- std over them as a bar, min/max as a band, and the
                        ensemble of that warmup's groups as a star
    ensemble_size.png   cv and test F1 of the uniform mean of the k best groups
                        against k, groups added in order of cv combined (best first,
                        ties in group order), so the curve is reproducible
    robustness.png      F1 per labelled test set with each modality / pair masked;
                        with a feature store, also the domain-classifier AUC per
                        modality and test split (unlabelled ones included: shift needs
                        no labels)
    report.html         all of the above, images embedded as base64 data URIs, plus
                        the score tables and the robustness / feature-shift tables

matplotlib (the `report` extra) is imported only here, with the Agg renderer via
`matplotlib.figure.Figure`, so no display or pyplot global state is needed.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from ensembles import robustness
from ensembles.groups import cv_score
from ensembles.load import load_members, run_info
from ensembles.output import check_out, write_outputs
from ensembles.score import (
    Evaluation,
    default_out,
    evaluate,
    format_evaluation,
    prior_shifts,
    prior_text,
)
from ensembles.strategies import align, mix
from ensembles.tables import CV, columns_for, row_split, score_splits
from mer_ray.data.store import read_store
from mer_ray.errors import InputError

REPORT_DIR = "report"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def colour(row: str, rows: list[str]) -> str:
    """cv grey; test splits in the palette, in the dataset's order."""
    if row == CV:
        return "#7f7f7f"
    tests = [r for r in rows if r != CV]
    return PALETTE[tests.index(row) % len(PALETTE)] if row in tests else "#000000"


def shown_rows(ev: Evaluation) -> list[str]:
    """cv and the labelled test splits: what can be scored."""
    return [CV, *ev.dataset.scored_splits]


def test_rows(ev: Evaluation) -> list[str]:
    """The labelled test splits, or cv where the dataset has none."""
    return list(ev.dataset.scored_splits) or [CV]


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("mer-ray report needs matplotlib: pip install 'mer-ray[report]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def confusion_png(ev: Evaluation) -> bytes:
    from sklearn.metrics import confusion_matrix

    classes = ev.classes
    rows = shown_rows(ev)
    fig = _figure(5.0 * len(rows), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(rows)))
    for ax, split in zip(axes, rows):
        p = ev.ensemble.predictions[row_split(split)]
        cm = confusion_matrix(p.label, np.asarray(p.logits).argmax(1), labels=range(len(classes)))
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split} (acc {ev.scores[split]['acc']:.3f})")
    return _png(fig)


def per_class_f1(ev: Evaluation) -> dict[str, np.ndarray]:
    from sklearn.metrics import f1_score

    out = {}
    for split in shown_rows(ev):
        p = ev.ensemble.predictions[row_split(split)]
        out[split] = f1_score(p.label, np.asarray(p.logits).argmax(1),
                              labels=range(len(ev.classes)), average=None, zero_division=0)
    return out


def per_class_png(ev: Evaluation) -> bytes:
    f1 = per_class_f1(ev)
    fig = _figure(8, 4)
    ax = fig.subplots()
    x = np.arange(len(ev.classes))
    rows = shown_rows(ev)
    width = 0.8 / len(rows)
    for k, split in enumerate(rows):
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, f1[split], width, label=split,
               color=colour(split, rows))
    ax.set_xticks(x, ev.classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"per-class F1 of the ensemble ({ev.strategy})")
    ax.legend()
    return _png(fig)


def warmup_spread(ev: Evaluation) -> dict:
    """{warmup: {split: [per-group F1]}} for the labelled test splits (cv without any)."""
    out = {}
    for g, s in zip(ev.groups, ev.group_scores):
        per = out.setdefault(g.warmup, {split: [] for split in test_rows(ev)})
        for split in per:
            per[split].append(s[split]["f1"])
    return out


def warmup_png(ev: Evaluation) -> bytes:
    spread = warmup_spread(ev)
    warmups = list(ev.warmups)
    numeric = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in warmups)
    pos = {w: (float(w) if numeric else float(i)) for i, w in enumerate(warmups)}
    step = (np.diff(sorted(pos.values())).min() if len(pos) > 1 else 1.0) or 1.0
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    rows = test_rows(ev)
    for k, split in enumerate(rows):
        colour_, shift = colour(split, shown_rows(ev)), (k - (len(rows) - 1) / 2) * 0.12 * step
        xs = np.array([pos[w] + shift for w in warmups])
        vals = [np.array(spread[w][split]) for w in warmups]
        for x, v in zip(xs, vals):
            ax.scatter(np.full(len(v), x), v, s=12, alpha=0.5, color=colour_)
        means = np.array([v.mean() for v in vals])
        stds = np.array([v.std() for v in vals])
        ax.fill_between(xs, [v.min() for v in vals], [v.max() for v in vals], color=colour_,
                        alpha=0.12, label=f"{split} min-max over groups")
        ax.errorbar(xs, means, yerr=stds, color=colour_, marker="o", capsize=4,
                    label=f"{split} mean +- std over groups")
        ax.scatter(xs, [ev.warmups[w][1][split]["f1"] for w in warmups], marker="*", s=120,
                   color=colour_, edgecolor="black", zorder=3, label=f"{split} warmup ensemble")
    ax.set_xticks([pos[w] for w in warmups], [str(w) for w in warmups])
    ax.set_xlabel("modality-dropout warmup (epochs)")
    ax.set_ylabel("weighted F1")
    ax.set_title("F1 against warmup, spread over seeds")
    ax.legend(fontsize=7)
    return _png(fig)


def size_curve(ev: Evaluation) -> tuple[list[int], dict[str, list[float]]]:
    """F1 of the uniform mean of the k best groups (by cv), k = 1..G, on cv and the
    labelled test splits."""
    order = sorted(range(len(ev.groups)), key=lambda i: (-cv_score(ev.group_scores[i]), i))
    parts, _ = align([ev.groups[i] for i in order])
    ks = list(range(1, len(order) + 1))
    curve = {row: [] for row in shown_rows(ev)}
    wanted = {row_split(r) for r in curve}
    for k in ks:
        preds = {split: mix(p[:k], np.full(k, 1.0 / k)) for split, p in parts.items()
                 if split in wanted}
        s = score_splits(preds, ev.dataset)
        for row in curve:
            curve[row].append(s[row]["f1"])
    return ks, curve


def size_png(ev: Evaluation) -> bytes:
    ks, curve = size_curve(ev)
    fig = _figure(7, 4)
    ax = fig.subplots()
    for row, ys in curve.items():
        ax.plot(ks, ys, marker="o", ms=3, color=colour(row, list(curve)), label=row,
                linestyle="--" if row == "cv" else "-")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of (config, seed) groups, best cv first")
    ax.set_ylabel("weighted F1 (uniform mean of logits)")
    ax.set_title("ensemble score against size")
    ax.legend()
    return _png(fig)


def robustness_png(masked: dict, shift: dict | None) -> bytes:
    fig = _figure(12 if shift else 8, 4.2)
    axes = fig.subplots(1, 2 if shift else 1)
    ax = axes[0] if shift else axes
    keys = list(masked)
    rows = list(masked[robustness.UNMASKED])
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(rows))
    for k, split in enumerate(rows):
        ax.bar(x + (k - (len(rows) - 1) / 2) * width,
               [masked[key].get(split, {}).get("f1", np.nan) for key in keys],
               width, label=split, color=colour(split, [CV, *rows]))
    ax.set_xticks(x, [robustness.mask_label(k) for k in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("weighted F1")
    ax.set_title("ensemble with modalities masked at inference")
    if rows:
        ax.legend()
    if shift:
        ax2 = axes[1]
        mods = list(shift)
        splits = list(dict.fromkeys(s for per in shift.values() for s in per))
        x = np.arange(len(mods))
        width = 0.8 / max(1, len(splits))
        for k, split in enumerate(splits):
            ax2.bar(x + (k - (len(splits) - 1) / 2) * width,
                    [shift[m].get(split, {}).get("domain_auc", np.nan) for m in mods],
                    width, label=split, color=PALETTE[k % len(PALETTE)])
        ax2.axhline(0.5, color="black", lw=0.8, ls=":")
        ax2.set_xticks(x, mods)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("domain-classifier AUC (0.5 = no shift)")
        ax2.set_title("feature shift from train")
        ax2.legend()
    return _png(fig)


# --- HTML --------------------------------------------------------------------------

def _score_table_html(title: str, scores: dict) -> str:
    cols = columns_for(scores)
    head = "".join(f"<th>{name}</th>" for name, _ in cols)
    rows = []
    for row in scores:
        cells = "".join(f"<td>{scores[row][key]:.4f}</td>" if key in scores[row] else "<td></td>"
                        for _, key in cols)
        rows.append(f"<tr><th>{row}</th>{cells}</tr>")
    return (f"<h3>{html.escape(title)}</h3><table><tr><th></th>{head}</tr>"
            + "".join(rows) + "</table>")


def _masked_html(masked: dict) -> str:
    splits = list(masked[robustness.UNMASKED])
    head = "".join(f"<th>{s} F1</th><th>{s} acc</th>" for s in splits)
    rows = []
    for key, per in masked.items():
        cells = "".join(f"<td>{per[s]['f1']:.4f}</td><td>{per[s]['acc']:.4f}</td>"
                        if s in per else "<td></td><td></td>" for s in splits)
        rows.append(f"<tr><th>{html.escape(robustness.mask_label(key))}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _shift_html(shift: dict) -> str:
    keys = (("mean shift", "mean_shift"), ("spread ratio", "spread_ratio"),
            ("domain AUC", "domain_auc"), ("off-manifold", "off_manifold"))
    splits = list(dict.fromkeys(s for per in shift.values() for s in per))
    head = "".join(f"<th>{s} {name}</th>" for s in splits for name, _ in keys)
    rows = []
    for m, per in shift.items():
        cells = "".join(f"<td>{per[s][k]:.3f}</td>" if s in per else "<td></td>"
                        for s in splits for _, k in keys)
        rows.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>'


CSS = ("body{font-family:sans-serif;max-width:1250px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
       "padding:3px 8px;text-align:right}img{max-width:100%}pre{background:#f6f6f6;padding:.5em}")


def report_html(run: str, ev: Evaluation, pngs: dict[str, bytes], masked: dict,
                shift: dict | None, notes: list[str], priors=()) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mer-ray report: "
             f"{html.escape(run)}</title><style>{CSS}</style></head><body>",
             f"<h1>mer-ray report</h1><p>run <code>{html.escape(run)}</code>: "
             f"{len(ev.members)} members in {len(ev.groups)} (config, seed) groups; "
             f"strategy <b>{ev.strategy}</b>.</p>",
             "<h2>Scores</h2>",
             _score_table_html(f"ensemble ({ev.strategy}, {len(ev.groups)} groups)", ev.scores),
             _score_table_html(f"best single group: {ev.groups[ev.best].label}",
                               ev.group_scores[ev.best])]
    for w, (e, s) in ev.warmups.items():
        parts.append(_score_table_html(f"warmup {w} ({len(e.groups)} groups)", s))
    if priors:
        parts += ["<h2>Class prior of the test splits</h2>",
                  "<pre>" + html.escape("\n".join(priors)) + "</pre>"]
    parts += ["<h2>Confusion matrices</h2>", _img("confusion", pngs["confusion.png"]),
              "<h2>Per-class F1</h2>", _img("per-class F1", pngs["per_class_f1.png"]),
              "<h2>F1 against warmup</h2>", _img("warmup", pngs["warmup_f1.png"]),
              "<h2>Ensemble size</h2><p>Uniform mean of the k best groups by cv.</p>",
              _img("ensemble size", pngs["ensemble_size.png"]),
              "<h2>Robustness</h2><h3>Modalities masked at inference</h3>", _masked_html(masked)]
    if shift:
        parts += ["<h3>Feature shift from train</h3><p>mean shift = ||mu_test - mu_train|| / "
                  "sqrt(trace Cov_train) (0 = same mean); spread ratio = sqrt(trace Cov_test / "
                  "trace Cov_train) (1 = same spread); domain AUC = cross-validated ROC AUC of "
                  "a logistic regression telling test from train on the "
                  f"{robustness.PCA_DIM} leading principal components and their squares "
                  "(0.5 = no shift, 1 = fully separable); off-manifold = the share of "
                  "test variance outside train's leading principal axes beyond what unseen "
                  "train rows show (0 = as on train's manifold as train itself).</p>",
                  _shift_html(shift),
                  "<p>" + "<br>".join(html.escape(x) for x in
                                      robustness.suggestion_lines(shift)) + "</p>"]
    parts.append(_img("robustness", pngs["robustness.png"]))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- entry point --------------------------------------------------------------------

def load_store_for(run: str, store_arg: str | None, content_hash: str | None):
    """(Store or None, note). An explicit --store must be right; run.json's may be missing."""
    if store_arg:
        store = read_store(store_arg)
        if content_hash and store.content_hash != content_hash:
            raise InputError(f"{store_arg}: content hash {store.content_hash} is not "
                             f"the one the members were trained on ({content_hash})", param="store")
        return store, None
    path = run_info(run).get("store")
    if not path:
        return None, "feature shift skipped: no --store given and no store in RUN/run.json"
    try:
        store = read_store(path)
    except InputError as e:
        return None, f"feature shift skipped: the store in run.json is unusable ({e})"
    if content_hash and store.content_hash != content_hash:
        return None, (f"feature shift skipped: {path} (from run.json) is not the store the "
                      "members were trained on (content hash differs); pass --store")
    return store, None


def build_report(run: str, out: str | None = None, store: str | None = None,
                 strategy: str = "mean", where: str | None = None,
                 prior_shift: str = "none", prior_splits=None) -> tuple[str, str]:
    """Compute, render and write the report; returns (printed text, output folder)."""
    run = str(run)
    out = default_out([run], out, REPORT_DIR)
    check_out(out)
    _figure(1, 1)  # fail early, before any work, when matplotlib is missing
    warnings = []
    members = load_members([run], where, warn=warnings.append)
    st, note = load_store_for(run, store, members[0].store.get("content_hash"))
    ev = evaluate(members, strategy)
    shifts = prior_shifts(ev, prior_shift, prior_splits)
    priors = prior_text(ev, shifts)
    masked = robustness.masked_scores(ev.ensemble, ev.dataset)
    used = {m: f["feature"] for m, f in (members[0].store.get("features") or {}).items()}
    shift = robustness.feature_shift(st, used) if st is not None else None
    notes = (list(ev.ensemble.notes) + ev.warnings + warnings + ev.notes_for(ev.ensemble)
             + ([note] if note else []))
    pngs = {
        "confusion.png": confusion_png(ev),
        "per_class_f1.png": per_class_png(ev),
        "warmup_f1.png": warmup_png(ev),
        "ensemble_size.png": size_png(ev),
        "robustness.png": robustness_png(masked, shift),
    }
    page = report_html(run, ev, pngs, masked, shift, notes, priors)
    written = write_outputs(out, {**pngs, "report.html": page.encode()})
    text = [format_evaluation(ev), *priors, "modalities masked at inference:",
            robustness.format_masked(masked)]
    if shift:
        text += ["feature shift from train (mean shift, spread ratio, domain-classifier AUC):",
                 robustness.format_shift(shift), *robustness.suggestion_lines(shift)]
    if note:
        text.append(f"note: {note}")
    return "\n".join(text), written
