"""Predict new data with a run's kept members: `mer-ray predict` and the Python API.

A run keeps every member's best-epoch weights (mer_ray.model.weights). `Predictor.load(run)`
picks members exactly as `mer-ray ensemble score` does (`where`, `strategy`: the same
members, the same group weights, fitted on the stored out-of-fold predictions only),
loads their weights and runs them in packs (one batched forward per pack of members
that share a shape and features) on the device asked for. Predictions are combined like
the ensemble: the fold members of each (config, seed) group averaged, then the groups
with the strategy's weights.

    from mer_ray.predict import Predictor
    predictor = Predictor.load("demo-run/run")               # strategy="mean"
    out = predictor.predict_features("mer2025/features")     # DIR/<feature>/<name>.npy
    out.names[:3], out.labels[:3], out.probabilities[:3]

Inputs: a MERTools feature folder (`predict_features`), a store split (`predict_store`)
or arrays (`predict_arrays`). Bad input is an InputError naming the feature, sample or
file; a sample missing in one modality is refused unless missing="zero", which zeroes
that modality for that sample through the model's modality-dropout path.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensembles.groups import group_members
from ensembles.load import load_members
from ensembles.prior import class_prior, estimate_prior
from ensembles.score import submission_csv
from ensembles.strategies import group_weights, mix_groups, softmax
from mer_ray.data.features import load_vector
from mer_ray.errors import InputError
from mer_ray.model.shape import ModelShape
from mer_ray.model.weights import from_state_dict, read_weights
from mer_ray.runs.members import weights_path
from mer_ray.storage import exists
from mer_ray.train.result import SplitPredictions

PREDICT_SPLIT = "predict"
PACK_SIZE = 25


@dataclass
class Prediction:
    names: np.ndarray  # [n]
    probabilities: np.ndarray  # [n, C], the ensemble's
    logits: np.ndarray  # [n, C], the ensemble's
    labels: list[str]  # predicted class names
    valence: np.ndarray | None  # [n], where the models predict valence
    classes: list[str]
    member_logits: dict = field(default_factory=dict)  # member id -> [n, C]
    member_valence: dict = field(default_factory=dict)  # member id -> [n]
    zeroed: dict = field(default_factory=dict)  # modality -> samples zeroed (missing="zero")
    seconds: dict = field(default_factory=dict)  # reading, model, ...
    prior: object = None  # ensembles.prior.PriorShift, where estimated


@dataclass
class _Loaded:
    member: object  # MemberResult
    shape: object  # ModelShape
    weights: dict  # pack layout


class Predictor:
    """A run's ensemble, loaded for prediction (module docstring)."""

    def __init__(self, members, loaded, group_weights, strategy, device="cpu", run=""):
        self.members, self.loaded = members, loaded
        self.group_weights, self.strategy = group_weights, strategy
        self.device, self.run = device, run
        first = members[0]
        self.classes = list(first.classes)
        self.dataset = first.description
        # (modality, feature) -> dim, over every member
        self.features = {}
        for m in members:
            for mod, info in m.store["features"].items():
                key = (mod, info["feature"])
                if self.features.setdefault(key, info["dim"]) != info["dim"]:
                    raise InputError(f"{m.path}: {mod} feature {info['feature']} has dim "
                                     f"{info['dim']}, another member's has "
                                     f"{self.features[key]}")

    @classmethod
    def load(cls, runs, where: str | None = None, strategy: str = "mean",
             device: str = "cpu") -> "Predictor":
        """The members of `runs` that `where` keeps, weighted like `ensemble score
        --strategy`."""
        runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
        members = load_members([str(r) for r in runs], where)
        lacking = [m for m in members if not m.weights_sha256 or not exists(weights_path(m.path))]
        if lacking:
            raise InputError(
                f"{lacking[0].path}: no weights file beside it ({len(lacking)} of "
                f"{len(members)} member(s) lack one): this run predates kept weights (or they "
                "were deleted), so it cannot predict; retrain it with `mer-ray train` / `tune`")
        return cls.from_members(members, strategy, device, ", ".join(map(str, runs)))

    @classmethod
    def from_members(cls, members, strategy: str = "mean", device: str = "cpu",
                     run: str = "") -> "Predictor":
        """Members already read (MemberResults with their weights beside them)."""
        # as in training: weights near zero would otherwise run a CPU's denormal path
        # (mer_ray.train.numerics); torch loads here, only when something is predicted
        from mer_ray.train.numerics import flush_denormals

        flush_denormals()
        weights = group_weights(members, strategy)
        loaded = []
        for m in members:
            state, _ = read_weights(weights_path(m.path), m.weights_sha256)
            shape = ModelShape.from_dict(m.model)
            loaded.append(_Loaded(m, shape, from_state_dict(state, shape)))
        return cls(members, loaded, weights, strategy, device, run)

    def train_prior(self) -> np.ndarray:
        """The class shares of the members' training labels (their held-out folds
        together cover the train split once per group)."""
        labels = {}
        for m in self.members:
            oof = m.predictions.get("oof")
            if oof is not None:
                labels.update(zip(map(str, oof.names), np.asarray(oof.label).tolist()))
        return class_prior(list(labels.values()), len(self.classes))

    def prior_shift(self, pred: "Prediction", apply: bool, what: str):
        """The EM estimate of the predicted samples' class prior (ensembles.prior); with
        `apply`, the prediction moved to it (probabilities, logits, labels)."""
        shift = estimate_prior(pred.probabilities, self.train_prior(), what)
        if apply:
            pred.probabilities = shift.probabilities
            pred.logits = np.log(np.clip(shift.probabilities, 1e-12, None))
            pred.labels = [self.classes[i] for i in shift.probabilities.argmax(1)]
        return shift

    # ------------------------------------------------------------ inputs
    def needed(self) -> dict[str, list[str]]:
        """modality -> feature names the members need."""
        out: dict[str, list[str]] = {}
        for mod, feat in self.features:
            out.setdefault(mod, []).append(feat)
        return out

    def predict_features(self, features, missing: str = "error", candidates=None,
                         progress: bool = True) -> Prediction:
        """Predict a MERTools feature folder: FEATURES/<feature-name>/<sample>.npy for every
        feature the members use. Samples: `candidates` (names, in that order) or every
        name found, sorted."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        root = Path(features)
        if not root.is_dir():
            raise InputError(f"{root}: not a folder", param="features")
        have = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = {}
        for (mod, feat) in self.features:
            if not (root / feat).is_dir():
                raise InputError(f"{root}: no folder {feat} ({mod} feature the "
                                 f"run's members were trained on); found "
                                 f"{', '.join(have) or 'none'}", param="features")
            files[(mod, feat)] = {e.name[:-4] for e in os.scandir(root / feat)
                                  if e.name.endswith(".npy")}
        if candidates is not None:
            names = list(candidates)
        else:
            names = sorted(set().union(*files.values()))
        if not names:
            raise InputError(f"{root}: no .npy files in "
                             f"{', '.join(f for _, f in files)}", param="features")
        present = {key: np.array([n in got for n in names]) for key, got in files.items()}
        self._check_missing(present, names, missing, root)
        arrays = {}
        with tqdm(total=sum(int(p.sum()) for p in present.values()), desc="reading",
                  unit="file", file=sys.stderr, disable=not progress) as bar:
            for (mod, feat), dim in self.features.items():
                x = np.zeros((len(names), dim), np.float32)
                for i, n in enumerate(names):
                    if present[(mod, feat)][i]:
                        v = load_vector(root / feat / f"{n}.npy", n, feat)
                        if v.size != dim:
                            raise InputError(f"{root / feat / (n + '.npy')}: {n} in {feat} has "
                                             f"{v.size} values, but the run's members were "
                                             f"trained on {feat} with {dim}")
                        x[i] = v
                        bar.update(1)
                arrays[(mod, feat)] = x
        out = self._predict(np.asarray(names), arrays, present, progress)
        out.seconds = {"reading": time.perf_counter() - t0 - out.seconds["model"], **out.seconds}
        return out

    def _check_missing(self, present, names, missing, where):
        if missing not in ("error", "zero"):
            raise InputError(f"{missing!r}: choose error or zero", param="missing")
        for (mod, feat), p in present.items():
            lacking = int((~p).sum())
            if lacking and missing == "error":
                first = names[int(np.flatnonzero(~p)[0])]
                raise InputError(f"{where}: sample {first} has no {mod} feature {feat} "
                                 f"({lacking} sample(s) lack it); add the files, or pass "
                                 "--missing zero to predict them without that modality")

    def predict_store(self, store, split: str | None = None, progress: bool = False) -> Prediction:
        """Predict one split of a store (default: its only test split)."""
        t0 = time.perf_counter()
        tests = list(store.dataset.test_splits)
        if split is None:
            if len(tests) != 1:
                raise InputError(f"{store.location}: give --split (one of {', '.join(tests)})")
            split = tests[0]
        if split not in [s.name for s in store.dataset.splits]:
            raise InputError(f"{split}: {store.location} has splits "
                             f"{', '.join(s.name for s in store.dataset.splits)}", param="split")
        rows = store.rows(split)
        arrays, present = {}, {}
        for (mod, feat), dim in self.features.items():
            if mod not in store.features or feat not in store.features[mod]:
                have = "; ".join(f"{m}: {', '.join(f)}" for m, f in store.features.items())
                raise InputError(f"{store.location}: no {mod} feature {feat} (the run's "
                                 f"members were trained on it); the store has {have}")
            x = store.features[mod][feat]
            if x.shape[1] != dim:
                raise InputError(f"{store.location}: {mod} feature {feat} has {x.shape[1]} "
                                 f"values per sample, the run's members were trained on {dim}")
            arrays[(mod, feat)] = np.asarray(x[rows], np.float32)
            present[(mod, feat)] = np.ones(len(rows), bool)
        out = self._predict(store.names[rows], arrays, present, progress)
        out.seconds = {"reading": time.perf_counter() - t0 - out.seconds["model"], **out.seconds}
        return out

    def predict_arrays(self, features: dict, names=None) -> Prediction:
        """Predict arrays: {modality: [n, D]} (each member's feature of that modality) or
        {(modality, feature): [n, D]}."""
        arrays = {}
        for (mod, feat), dim in self.features.items():
            x = features.get((mod, feat), features.get(mod))
            if x is None:
                raise InputError(f"predict_arrays: no {mod} features given (the members use "
                                 f"{feat}, {dim} values)")
            x = np.asarray(x, np.float32)
            if x.ndim != 2 or x.shape[1] != dim:
                raise InputError(f"predict_arrays: {mod} features have shape {x.shape}, the "
                                 f"members were trained on {feat} with {dim} values")
            if not np.isfinite(x).all():
                row = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
                raise InputError(f"predict_arrays: {mod} row {row} has NaN or Inf values")
            arrays[(mod, feat)] = x
        n = len(next(iter(arrays.values())))
        if any(len(x) != n for x in arrays.values()):
            raise InputError("predict_arrays: the modalities have different numbers of rows")
        names = np.asarray(names if names is not None else [f"row_{i}" for i in range(n)])
        present = {key: np.ones(n, bool) for key in arrays}
        return self._predict(names, arrays, present, progress=False)

    # ------------------------------------------------------------ the models
    def _predict(self, names, arrays, present, progress) -> Prediction:
        t0 = time.perf_counter()
        member_out = self.member_outputs(arrays, present, progress)
        seconds_model = time.perf_counter() - t0
        # the ensemble: fold members of each group averaged, then the groups mixed
        logits, valence = mix_groups(
            [(self.group_weights[label], [member_out[m.member_id] for m in members])
             for label, members in group_members(self.members)], self.strategy)
        zeroed = {f"{mod} ({feat})": int((~p).sum()) for (mod, feat), p in present.items()
                  if (~p).any()}
        probs = softmax(logits)
        return Prediction(
            names=np.asarray(names), probabilities=probs, logits=logits,
            labels=[self.classes[i] for i in probs.argmax(1)], valence=valence,
            classes=self.classes,
            member_logits={k: v[0] for k, v in member_out.items()},
            member_valence={k: v[1] for k, v in member_out.items() if v[1] is not None},
            zeroed=zeroed, seconds={"model": seconds_model})

    def member_outputs(self, arrays, present=None, progress: bool = False) -> dict:
        """member id -> (logits [n, C], valence [n] or None) of every member on `arrays`
        ({(modality, feature): [n, D]}); `present` as in _predict (None: all present)."""
        from tqdm import tqdm

        if present is None:
            present = {key: np.ones(len(x), bool) for key, x in arrays.items()}
        member_out = {}
        packs = self._packs()
        for pack in tqdm(packs, desc="members", unit="pack", file=sys.stderr,
                         disable=not progress or len(packs) < 2):
            for item, out in zip(pack, self._run_pack(pack, arrays, present)):
                member_out[item.member.member_id] = out  # (logits, valence)
        return member_out

    def _packs(self) -> list[list[_Loaded]]:
        by_kind: dict[tuple, list[_Loaded]] = {}
        for item in self.loaded:
            key = (item.shape, tuple(sorted((m, f["feature"]) for m, f in
                                            item.member.store["features"].items())))
            by_kind.setdefault(key, []).append(item)
        return [group[i : i + PACK_SIZE] for group in by_kind.values()
                for i in range(0, len(group), PACK_SIZE)]

    def _run_pack(self, pack: list[_Loaded], arrays, present):
        """Every member of `pack` on every sample, evaluated exactly as training evaluates
        (mer_ray.train.evaluate.predict_pack): on a CPU the stored logits bit for bit; on a
        GPU the pack runs batched, as training's evaluation does there."""
        import torch

        from mer_ray.train.evaluate import predict_pack

        device = torch.device(self.device)
        shape = pack[0].shape
        feats = pack[0].member.store["features"]
        params = {name: torch.stack([item.weights[name] for item in pack]).to(device)
                  for name in pack[0].weights}
        keys = [(mod, feats[mod]["feature"]) for mod in shape.modalities]
        x = {mod: torch.from_numpy(arrays[key]).to(device)
             for mod, key in zip(shape.modalities, keys)}
        keep = np.stack([present[key] for key in keys], axis=1).astype(np.float32)  # [n, M]
        rows = np.arange(len(keep))
        return predict_pack(params, x, [rows] * len(pack), keep if (keep < 1).any() else None)


# ---------------------------------------------------------------- outputs
def output_files(pred: Prediction, predictor: Predictor, source: str) -> dict[str, bytes]:
    """submission.csv, predictions.parquet (the ensemble's), member_logits.parquet (every
    member's, to recombine later without running the models) and summary.json."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    c = len(pred.classes)

    def fsl(x):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(x, np.float32).reshape(-1)), c)

    def parquet(table) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    sub = SplitPredictions(names=pred.names, logits=pred.logits, valence=pred.valence,
                           label=np.full(len(pred.names), -1), valence_label=np.array([]))
    ensemble = {"name": pa.array(pred.names.astype(str)), "probabilities": fsl(pred.probabilities),
                "logits": fsl(pred.logits), "predicted_class": pa.array(pred.labels)}
    if pred.valence is not None:
        ensemble["valence"] = pa.array(np.asarray(pred.valence, np.float32))
    meta = {"classes": pred.classes, "strategy": predictor.strategy,
            "group_weights": predictor.group_weights, "runs": predictor.run, "source": source}
    ids = list(pred.member_logits)
    members = {
        "member_id": pa.array(np.repeat(ids, len(pred.names))),
        "name": pa.array(np.tile(pred.names.astype(str), len(ids))),
        "logits": fsl(np.concatenate([pred.member_logits[i] for i in ids])),
    }
    if pred.member_valence:
        members["valence"] = pa.array(np.concatenate([pred.member_valence[i] for i in ids]))
    group_of = {m.member_id: {"config": m.config, "seed": m.seed, "fold": m.fold}
                for m in predictor.members}
    summary = {"samples": len(pred.names), "members": len(ids), "strategy": predictor.strategy,
               "runs": predictor.run, "source": source, "classes": pred.classes,
               "zeroed": pred.zeroed, "seconds": pred.seconds,
               "group_weights": predictor.group_weights}
    if pred.prior is not None:
        summary["class_prior"] = {"train": pred.prior.train.tolist(),
                                  "estimate": pred.prior.estimate.tolist(),
                                  "l1": pred.prior.l1}
    buf = io.BytesIO(json.dumps(summary, indent=1).encode())
    return {
        "submission.csv": submission_csv(sub, pred.classes),
        "predictions.parquet": parquet(pa.table(ensemble).replace_schema_metadata(
            {b"mer_ray.predict": json.dumps(meta).encode()})),
        "member_logits.parquet": parquet(pa.table(members).replace_schema_metadata(
            {b"mer_ray.predict": json.dumps({**meta, "members": group_of}).encode()})),
        "summary.json": buf.getvalue(),
    }

