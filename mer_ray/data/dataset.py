"""What a dataset is, as the store describes it: class names in order, and its splits.

Every part of mer-ray (trainer, member files, ensembles, report, CLI) reads the
description from the store's manifest or from the member files, never from MER2023's
constants, so MER2024/2025, MELD-like class sets or a four-class toy set run through the
same code. `constants.MER2023` is one built-in description.

A split has a role:

- ``train``: the one split that is cross-validated and trained on;
- ``test``: labelled test split, predicted by every member and scored;
- ``unlabelled``: handed out without labels (the live MER challenges' test sets):
  predicted, written to a submission, never scored;
- ``pool``: unlabelled samples that are not to be submitted (the live challenges' large
  unlabelled pools): never predicted by a member, only labelled by `mer-ray selftrain`'s
  teachers for the next round's students.

and says whether it has valence labels. The model gets a valence head (and the
combined metric F1 - 0.25 MSE) only when the train split has valence; datasets
without valence train on cross-entropy alone and select epochs on weighted F1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mer_ray.errors import InputError

ROLES = ("train", "test", "unlabelled", "pool")
TRAIN = "train"
NO_LABEL = -1  # the class index of a sample of an unlabelled or pool split, in memory
# Modalities the model knows; a dataset has one or more of them.
MODALITIES = ("audio", "text", "video")
# A split name also becomes part of file names (submission_<split>.csv).
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Split:
    name: str
    role: str  # one of ROLES
    valence: bool = False  # valence labels present

    @property
    def labelled(self) -> bool:
        return self.role not in ("unlabelled", "pool")


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    splits: tuple[Split, ...]  # train first, then the test splits in their order

    def __post_init__(self):
        where = f"dataset {self.name!r}"
        if len(self.classes) < 2:
            raise InputError(f"{where}: needs at least 2 classes, has {list(self.classes)}")
        dup = sorted({c for c in self.classes if list(self.classes).count(c) > 1})
        if dup:
            raise InputError(f"{where}: class name(s) {dup} listed twice")
        if any(not str(c).strip() for c in self.classes):
            raise InputError(f"{where}: an empty class name in {list(self.classes)}")
        names = [s.name for s in self.splits]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"{where}: split(s) {dup} named twice")
        for s in self.splits:
            if s.role not in ROLES:
                raise InputError(f"{where}: split {s.name!r} has role {s.role!r}; "
                                 f"expected one of {', '.join(ROLES)}")
            if not _SPLIT_NAME.match(s.name) or s.name == "oof":
                raise InputError(f"{where}: split name {s.name!r} is not usable (letters, "
                                 "digits, '_', '-', '.'; not 'oof')")
            if not s.labelled and s.valence:
                raise InputError(f"{where}: {s.role} split {s.name!r} cannot have valence")
        trains = [s for s in self.splits if s.role == "train"]
        if len(trains) != 1 or trains[0].name != TRAIN:
            raise InputError(f"{where}: needs exactly one training split named {TRAIN!r}, "
                             f"has {[s.name for s in trains]}")

    # ------------------------------------------------------------ derived facts
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def has_valence(self) -> bool:
        """Whether models get a valence head: the train split has valence labels."""
        return self.split(TRAIN).valence

    @property
    def test_splits(self) -> tuple[str, ...]:
        """Every split a member predicts besides its held-out fold, labelled or not."""
        return tuple(s.name for s in self.splits if s.role in ("test", "unlabelled"))

    @property
    def scored_splits(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits if s.role == "test")

    @property
    def unlabelled_splits(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits if s.role == "unlabelled")

    @property
    def pool_splits(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits if s.role == "pool")

    def split(self, name: str) -> Split:
        for s in self.splits:
            if s.name == name:
                return s
        raise InputError(f"dataset {self.name!r} has no split {name!r}; "
                         f"splits: {', '.join(s.name for s in self.splits)}")

    def has_split(self, name: str) -> bool:
        return any(s.name == name for s in self.splits)

    def scores_valence(self, split: str) -> bool:
        """Valence is scored on a split when the model predicts it and the split has it."""
        return self.has_valence and self.split(split).valence

    def metric_name(self) -> str:
        """The held-out metric that picks best epochs: combined with valence, else F1."""
        return "combined" if self.has_valence else "f1"

    # ------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes),
                "splits": [{"name": s.name, "role": s.role, "valence": s.valence}
                           for s in self.splits]}

    @classmethod
    def from_dict(cls, d: dict, where: str = "dataset") -> "Dataset":
        try:
            return cls(name=str(d["name"]), classes=tuple(str(c) for c in d["classes"]),
                       splits=tuple(Split(str(s["name"]), str(s["role"]), bool(s["valence"]))
                                    for s in d["splits"]))
        except (KeyError, TypeError) as e:
            raise InputError(f"{where}: not a dataset description ({type(e).__name__}: {e})") \
                from None

    def restricted_to(self, present) -> "Dataset":
        """The same description with only the splits in `present` (train always kept)."""
        present = set(present) | {TRAIN}
        return Dataset(self.name, self.classes,
                       tuple(s for s in self.splits if s.name in present))
