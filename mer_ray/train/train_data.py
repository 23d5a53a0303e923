"""What a recipe trains on: the store's chosen features as tensors on the device, labels,
valence and the model's shape (TrainData), each member's feature spread and the balanced
class weights."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mer_ray.model.shape import ModelShape
from mer_ray.train.masks import dropout_threshold


# ---------------------------------------------------------------- the data a recipe sees
class TrainData:
    """The store as one recipe trains on it: the chosen feature of each modality as a
    tensor on the device, labels, valence, the split rows, the model's shape."""

    def __init__(self, store, config, device):
        device = torch.device(device)
        self.store, self.device = store, device
        self.dataset = store.dataset
        self.modalities = store.modalities
        self.feature_names = {m: config.feature_of(m) or store.feature_names(m)[0]
                              for m in self.modalities}
        self.x = {}
        for m in self.modalities:
            arr = np.ascontiguousarray(store.feature(m, self.feature_names[m]), np.float32)
            with warnings.catch_warnings():
                # The store's arrays are read-only views of the Parquet buffers; the
                # trainer only reads features, so share them instead of copying 139 MB.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.x[m] = torch.from_numpy(arr).to(device)
        # What training steps gather from: with dropout, the features scaled once by
        # inverted dropout's 1/(1-p), so a step only zeroes the dropped units (masks.py).
        self.dropout_scale = dropout_threshold(config.dropout)[1] if config.dropout > 0 else 1.0
        self.x_train = {m: x * self.dropout_scale if config.dropout > 0 else x
                        for m, x in self.x.items()}
        self.shape = ModelShape(tuple((m, int(self.x[m].shape[1])) for m in self.modalities),
                                config.hidden_dim, self.dataset.n_classes,
                                self.dataset.has_valence)
        self.emotion = torch.from_numpy(np.maximum(store.emotion, 0)).to(device)
        valence = torch.from_numpy(store.valence.astype(np.float32))
        self.has_valence = (~torch.isnan(valence)).to(device)
        self.valence = torch.nan_to_num(valence).to(device)
        self.train_rows = store.rows("train")
        self.metric = self.dataset.metric_name()

    def features_info(self) -> dict:
        return {m: {"feature": self.feature_names[m], "dim": d} for m, d in self.shape.dims}


def feature_std(data: TrainData, members) -> dict:
    """Per modality [K, 1, D]: each member's training rows' standard deviation per
    feature dimension (the unit of `feature_noise_<modality>`)."""
    out = {}
    for modality, x in data.x.items():
        rows = [torch.from_numpy(member.train_idx).to(x.device) for member in members]
        out[modality] = torch.stack([x[r].std(0) for r in rows]).unsqueeze(1)
    return out


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights of these labels: n / (C x n_c) (0 where absent)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes),
                        where=counts > 0)
    return weights.astype(np.float32)
