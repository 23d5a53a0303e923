"""A feature store's manifest: the store's file names and format, reading (and upgrading)
its manifest.json, and the dataset summary printed from it.

A store folder (mer_ray.data.store) holds::

    STORE/samples.parquet   name, split, emotion, valence, one column per feature
    STORE/manifest.json     format, dataset (classes, splits and their roles),
                            modalities (their features: name, dim, column), source,
                            counts, content_hash

The manifest alone answers what a store holds (its dataset, features, counts and
content hash) without reading the samples. The first store format (`mer-ray-store/1`,
MER2023 only) is read and upgraded in memory.
"""

from __future__ import annotations

import json

from mer_ray.data.constants import MER2023
from mer_ray.data.dataset import MODALITIES, Dataset
from mer_ray.errors import InputError
from mer_ray.storage import exists, join, missing_bucket, read_bytes, storage_errors

FORMAT = "mer-ray-store/2"
OLD_FORMATS = ("mer-ray-store/1",)
SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"


def _is_store_hint(location: str) -> str:
    bucket = missing_bucket(location)
    if bucket:
        return bucket
    return (f"{location} is not a feature store (expected {SAMPLES_FILE} and "
            f"{MANIFEST_FILE}); create one with `mer-ray data import` or `mer-ray data synth`")


def read_manifest(location) -> dict:
    """The manifest (upgraded in memory from the first store format)."""
    location = str(location)
    mf = join(location, MANIFEST_FILE)
    with storage_errors(location, "reading"):
        if not exists(mf) or not exists(join(location, SAMPLES_FILE)):
            raise InputError(_is_store_hint(location))
        raw = read_bytes(mf)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{mf} is not valid JSON ({e}); re-create the store") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mf} is not a store manifest; re-create the store")
    fmt = manifest.get("format")
    if fmt in OLD_FORMATS:
        manifest = _upgrade_v1(manifest, mf)
    elif fmt != FORMAT:
        raise InputError(f"{mf} has format {fmt!r}, expected {FORMAT!r}")
    try:
        Dataset.from_dict(manifest["dataset"], str(mf))
        for m, feats in manifest["modalities"].items():
            if m not in MODALITIES:
                raise InputError(f"{mf}: unknown modality {m!r}; expected some of "
                                 f"{', '.join(MODALITIES)}")
            if not feats:
                raise InputError(f"{mf}: modality {m} lists no feature")
            for f in feats:
                if not isinstance(f["dim"], int) or f["dim"] < 1:
                    raise InputError(f"{mf}: {m} feature {f['feature']} has dim {f['dim']!r}")
                str(f["feature"]), str(f["column"])
        if not manifest["modalities"]:
            raise InputError(f"{mf}: the store lists no modality")
        str(manifest["content_hash"])
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{mf}: incomplete manifest ({type(e).__name__}: {e}); re-create "
                         "the store") from None
    return manifest


def _upgrade_v1(manifest: dict, where: str) -> dict:
    """The first format: MER2023 only, one feature per modality in a column named after
    the modality, no unlabelled splits."""
    try:
        classes = list(manifest["classes"])
        present = list(manifest["counts"])
        if classes != list(MER2023.classes):
            raise InputError(f"{where}: a first-format store with classes {classes}; "
                             "re-create it with `mer-ray data import`")
        return {
            "format": FORMAT, "upgraded_from": manifest["format"],
            "dataset": MER2023.restricted_to(present).to_dict(),
            "modalities": {m: [{"feature": i["feature"], "dim": i["dim"], "column": m}]
                           for m, i in manifest["modalities"].items()},
            "source": manifest.get("source", ""),
            "sizes": {s: int(sum(c)) for s, c in manifest["counts"].items()},
            "counts": manifest["counts"],
            "content_hash": manifest["content_hash"],
        }
    except (KeyError, TypeError) as e:
        raise InputError(f"{where}: incomplete manifest ({e}); re-create the store") from None


def summary_table(store_or_manifest) -> str:
    """The dataset summary: split, role, count and count per class."""
    manifest = getattr(store_or_manifest, "manifest", store_or_manifest)
    dataset = Dataset.from_dict(manifest["dataset"])
    classes = dataset.classes
    counts, sizes = manifest["counts"], manifest.get("sizes", {})
    width = max(8, *(len(c) for c in classes))
    head = (f"{'split':<12}{'role':<11}{'count':>7}"
            + "".join(f"{c:>{width + 1}}" for c in classes))
    lines = [f"dataset: {dataset.name}, {dataset.n_classes} classes, "
             f"{'with' if dataset.has_valence else 'no'} valence", head, "-" * len(head)]
    for s in dataset.splits:
        role = s.role + ("" if s.valence or not s.labelled else "*")
        if s.name in counts:
            row = counts[s.name]
            lines.append(f"{s.name:<12}{role:<11}{sum(row):>7}"
                         + "".join(f"{c:>{width + 1}}" for c in row))
        else:
            lines.append(f"{s.name:<12}{role:<11}{sizes.get(s.name, 0):>7}  (no labels)")
    if any(s.labelled and not s.valence for s in dataset.splits):
        lines.append("* no valence labels")
    mods = "; ".join(f"{m} " + ", ".join(f"{f['feature']} ({f['dim']})" for f in feats)
                     for m, feats in manifest["modalities"].items())
    lines.append(f"features: {mods}")
    lines.append(f"source: {manifest['source']}  content hash: {manifest['content_hash'][:16]}")
    return "\n".join(lines)
