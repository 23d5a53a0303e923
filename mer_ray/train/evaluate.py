"""Evaluating a pack: every member's eval-mode predictions on its own rows (held-out
fold, test splits, masked modalities), and the MemberResults a finished pack returns."""

from __future__ import annotations

import numpy as np
import torch

from mer_ray.model import pack
from mer_ray.train.metrics import score
from mer_ray.train.result import MemberResult, SplitPredictions, mask_key, mask_sets
from mer_ray.train.train_data import TrainData

EVAL_CHUNK = 1024


@torch.no_grad()
def predict_pack(params: dict, x: dict, rows: list[np.ndarray], mask=None):
    """Eval-mode predictions of each member k on rows[k] (numpy indices into x's rows).
    mask: None, a length-M keep vector applied to every row, or an [n, M] keep matrix
    over x's rows (`mer-ray predict --missing zero`: a sample lacking a modality).
    Returns [(logits [n_k, C], valence [n_k] or None)] as numpy."""
    k = len(rows)
    n_max = max(len(r) for r in rows)
    if n_max == 0:  # nothing to predict (an empty split): empty arrays of the right width
        valence = np.zeros(0, np.float32) if "valence.W" in params else None
        return [(np.zeros((0, params["emotion.W"].shape[-1]), np.float32), valence)] * k
    out_l = [[] for _ in range(k)]
    out_v = [[] for _ in range(k)]
    dev = next(iter(params.values())).device
    keep = None if mask is None else torch.as_tensor(np.asarray(mask, np.float32), device=dev)
    for start in range(0, n_max, EVAL_CHUNK):
        idx = np.zeros((k, min(EVAL_CHUNK, n_max - start)), dtype=np.int64)
        lens = []
        for i, r in enumerate(rows):
            part = r[start : start + idx.shape[1]]
            idx[i, : len(part)] = part
            lens.append(len(part))
        if all(r is rows[0] for r in rows):
            # Test splits: every member sees the same rows; one gathered copy viewed K
            # times instead of K copies (a 25-pack's test chunk: 28 MB, not 700 MB).
            t = torch.from_numpy(idx[0]).to(dev)
            xs = {m: v[t].expand(k, -1, -1) for m, v in x.items()}
        else:
            t = torch.from_numpy(idx).to(dev)
            xs = {m: v[t] for m, v in x.items()}
        modality_mask = None
        if keep is not None and keep.ndim == 1:
            modality_mask = keep.expand(k, idx.shape[1], len(x))
        elif keep is not None:  # [n, M]: each row its own, gathered like the features
            modality_mask = keep[t] if t.ndim == 2 else keep[t].expand(k, -1, -1)
        if k > 1 and dev.type == "cpu":
            # On CPU one member at a time (views of the same rows, no copies): batched
            # matmuls round a narrow head's output (the 6 emotion logits) differently for
            # some pack sizes, so a member's evaluation, and the best epoch chosen from
            # it, would depend on its pack. Same FLOPs. On a GPU the pack stays batched
            # (K times the kernel launches would cost more than the evaluation).
            outs = [pack.forward({n: p[i : i + 1] for n, p in params.items()},
                                 {m: v[i : i + 1] for m, v in xs.items()},
                                 None if modality_mask is None else modality_mask[i : i + 1])
                    for i in range(k)]
            logits = torch.cat([o.logits for o in outs])
            valence = None if outs[0].valence is None else torch.cat([o.valence for o in outs])
        else:
            out = pack.forward(params, xs, modality_mask)
            logits, valence = out.logits, out.valence
        for i, n in enumerate(lens):
            out_l[i].append(logits[i, :n].float().cpu().numpy())
            if valence is not None:
                out_v[i].append(valence[i, :n].float().cpu().numpy())
    return [(np.concatenate(a), np.concatenate(b) if b else None) for a, b in zip(out_l, out_v)]


def member_results(data: TrainData, config, members) -> list[MemberResult]:
    store = data.store
    cfg = config.to_dict()
    common = dict(classes=list(data.dataset.classes), dataset=data.dataset.to_dict(),
                  model=data.shape.to_dict(),
                  store={"content_hash": store.content_hash, "features": data.features_info(),
                         "location": store.location})
    trained = [m for m in members if m.best_weights is not None]
    out = {}
    if trained:
        best = pack.stack([m.best_weights for m in trained])
        split_rows = {"oof": [m.val_idx for m in trained]}
        for s in data.dataset.test_splits:
            split_rows[s] = [store.rows(s)] * len(trained)
        preds = {s: predict_pack(best, data.x, rows) for s, rows in split_rows.items()}
        masked = {}
        for mods in mask_sets(data.shape.modalities):
            keep = [0.0 if mod in mods else 1.0 for mod in data.shape.modalities]
            masked[mask_key(mods)] = {s: predict_pack(best, data.x, rows, keep)
                                      for s, rows in split_rows.items()}
        for i, m in enumerate(trained):
            predictions, metrics = {}, {}
            for s, rows in split_rows.items():
                r = rows[i]
                logits, valence_pred = preds[s][i]
                predictions[s] = SplitPredictions(
                    names=store.names[r], logits=logits.astype(np.float32),
                    valence=None if valence_pred is None else valence_pred.astype(np.float32),
                    label=store.emotion[r], valence_label=store.valence[r].astype(np.float32),
                    masked={key: d[s][i] for key, d in masked.items()},
                )
                if s == "oof" or data.dataset.split(s).labelled:
                    with_valence = s == "oof" or data.dataset.scores_valence(s)
                    metrics[s] = score(logits, store.emotion[r],
                                       valence_pred if with_valence else None,
                                       store.valence[r] if with_valence else None)
            out[m.id] = MemberResult(
                member_id=m.id, config=cfg, fold=m.fold, seed=m.seed,
                best_epoch=m.best_epoch, epochs_run=len(m.history), metrics=metrics,
                history=m.history, predictions=predictions, stop_reason=m.stop_reason,
                weights={n: p.cpu() for n, p in m.best_weights.items()},
                pseudo=None if m.pseudo is None else m.pseudo.source, **common)
    for m in members:
        if m.id not in out:  # never had a finite held-out metric
            out[m.id] = MemberResult(
                member_id=m.id, config=cfg, fold=m.fold, seed=m.seed, best_epoch=-1,
                epochs_run=len(m.history), metrics={}, history=m.history, predictions={},
                status="failed", stop_reason=m.stop_reason or "no finite epoch",
                pseudo=None if m.pseudo is None else m.pseudo.source, **common)
    return [out[m.id] for m in members]
