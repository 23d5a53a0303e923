"""The MERBench attention model as a plain torch.nn.Module, and its recipe as one plain
training loop: the readable definition.

`mer_ray/model/pack.py` is the same model as a pack of K members with stacked weights, and
`mer_ray/train/trainer.py` trains such packs (fast); this file is a single member, written the
way a researcher would. Tests prove the two agree member by member, forward pass,
every optimizer step and the whole recipe (`pytest -k reference`), and the weights files
a run keeps (`RUN/members/<id>.safetensors`) hold this module's `state_dict`, so a saved
member loads straight into it::

    model = AttentionModel(shape, dropout=0.35)
    model.load_state_dict(state_dict)

Per modality an `Encoder`: dropout on the input, then three Linear + ReLU to `hidden`.
Fusion: the hidden vectors concatenated, an `Encoder` of the same kind to `hidden`,
then `attention` (Linear hidden -> M) gives M raw weights (no softmax); the fused
vector is the weighted sum of the hidden vectors. Heads: `emotion` (hidden -> classes)
and `valence` (hidden -> 1, only where the dataset has valence).

`train_member` is the recipe (robust v3, or any TrainConfig) for one member:
torch.optim.Adam with L2 weight decay, clip_grad_norm_, ReduceLROnPlateau on the
held-out metric, early stopping never before warmup + patience epochs, the best epoch's
weights. Its randomness is injected (`MemberRandom`: by default the pack's own
counter-based draws), so it trains a member exactly as the pack does: same init, same
shuffles, same masks and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mer_ray.model.module import AttentionModel
from mer_ray.model.pack import init_member
from mer_ray.model.shape import ModelShape
from mer_ray.model.weights import to_state_dict
from mer_ray.train.folds import make_folds
from mer_ray.train.masks import PackRandom, member_generator, member_key
from mer_ray.train.metrics import score
from mer_ray.train.train_data import TrainData
from mer_ray.train.trainer import contrastive_loss


# ---------------------------------------------------------------- the recipe, one member
class MemberRandom:
    """One member's dropout masks, modality masks and feature noise, drawn by the pack's
    counter-based generator (mer_ray.train.masks.PackRandom under member_key(seed, fold)): the
    very numbers this member gets in any pack. Anything with these four methods can take
    its place (recorded masks in a test; `dropout_masks` returning None lets nn.Dropout
    draw its own)."""

    def __init__(self, config, shape: ModelShape, seed: int, fold: int, device="cpu"):
        widths = [d for _, d in shape.dims] + [len(shape.dims) * shape.hidden]
        self.pack = PackRandom([member_key(seed, fold)], config.batch_size, widths, device)
        self.dropout = config.dropout
        self.drop_probs = [config.modality_dropout_of(m) for m in shape.modalities]

    def start_epoch(self, epoch: int):
        self.pack.start_epoch(epoch)

    def dropout_masks(self, step: int, n: int):  # M + 1 masks [n, w], or None
        if self.dropout == 0:
            return None
        return [mask[0, :n] for mask in self.pack.dropout_masks(step, self.dropout)]

    def modality_mask(self, step: int, n: int):  # [n, M]
        return self.pack.modality_mask(step, self.drop_probs)[0, :n]

    def normal(self, step: int, modality_index: int, n: int, dim: int):  # [n, dim]
        return self.pack.normal(step, modality_index, (self.pack.batch, dim))[0, :n]


@dataclass
class ReferenceResult:
    fold: int
    seed: int
    best_epoch: int
    epochs_run: int
    history: list  # one row per epoch: train_loss, lr, val_f1, val_combined, ...
    state_dict: dict  # the best epoch's weights
    predictions: dict  # "oof" and each test split -> (logits [n, C], valence [n] or None)


@torch.no_grad()
def predict(model: AttentionModel, data: TrainData, rows, keep=None):
    """Eval-mode (logits, valence) of store rows as numpy; keep: a length-M 0/1 vector
    that masks modalities on every row."""
    model.eval()
    index = torch.from_numpy(rows).to(data.device)
    xs = {m: data.x[m][index] for m in data.shape.modalities}
    mask = None if keep is None else torch.tensor(
        keep, dtype=torch.float32, device=data.device).expand(len(rows), -1)
    out = model(xs, mask)
    return out.logits.cpu().numpy(), None if out.valence is None else out.valence.cpu().numpy()


def train_member(store, config, fold: int, seed: int, device="cpu", random=None, data=None,
                 on_epoch=None) -> ReferenceResult:
    """Train member (fold, seed) of `config` the way trainer.train_pack trains it in a
    pack, in plain PyTorch. `random`: where masks and noise come from (default
    MemberRandom, the pack's own draws); `on_epoch(epoch, model, optimizer)` runs after
    every epoch; `data` (train_data.TrainData) may be shared between members. float32
    only (`config.precision` is the pack's), and no guard for a diverging member."""
    data = data or TrainData(store, config, device)
    shape, batch_size = data.shape, config.batch_size
    folds = make_folds(store.emotion[data.train_rows], config.n_folds, config.fold_seed)
    train_idx, val_idx = (data.train_rows[i] for i in folds[fold])
    generator = member_generator(seed, fold)  # the init, then one shuffle per epoch
    model = AttentionModel(shape, config.dropout).to(device)
    model.load_state_dict(to_state_dict(init_member(shape, generator)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay, fused=True)
    plateau = None if config.plateau_patience is None else ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience)
    random = random or MemberRandom(config, shape, seed, fold, device)
    noise = {m: getattr(config, f"feature_noise_{m}") for m in shape.modalities}
    train_rows = torch.from_numpy(train_idx).to(device)
    noise_std = {m: data.x[m][train_rows].std(0) for m in shape.modalities if noise[m] > 0}
    drops_modalities = any(config.modality_dropout_of(m) > 0 for m in shape.modalities)
    best, best_epoch, best_state, history = -math.inf, -1, None, []

    for epoch in range(config.epochs):
        model.train()
        robust = epoch >= config.warmup  # modality dropout and feature noise from here on
        random.start_epoch(epoch)
        order = train_rows[torch.randperm(len(train_rows), generator=generator).to(device)]
        loss_sum = torch.zeros((), device=device)
        steps = range(math.ceil(len(order) / batch_size))  # the last batch may be short
        for step in steps:
            rows = order[step * batch_size : (step + 1) * batch_size]
            xs = {m: data.x[m][rows] for m in shape.modalities}  # each [n, D_m]
            for i, m in enumerate(shape.modalities):
                if robust and noise[m] > 0:
                    z = random.normal(step, i, len(rows), xs[m].shape[1])
                    xs[m] = xs[m].addcmul(z, noise_std[m], value=noise[m])
            modality_mask = random.modality_mask(step, len(rows)) \
                if robust and drops_modalities else None
            out = model(xs, modality_mask, random.dropout_masks(step, len(rows)))
            loss = F.cross_entropy(out.logits, data.emotion[rows])
            if out.valence is not None:  # MSE over the rows whose valence is known
                known = data.has_valence[rows].float()
                error = (out.valence - data.valence[rows]) ** 2
                loss = loss + (error * known).sum() / known.sum().clamp(min=1)
            if config.contrastive_weight > 0:  # trainer's InfoNCE, as a pack of one
                loss = loss + config.contrastive_weight * contrastive_loss(
                    [h[None] for h in out.hidden], out.fused[None],
                    torch.ones(1, len(rows), device=device),
                    None if modality_mask is None else modality_mask[None],
                    config.contrastive_temperature)[0]
            optimizer.zero_grad()
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            loss_sum += loss.detach()

        # held-out fold: keep the best epoch's weights, cut the LR on a plateau, stop early
        logits, valence = predict(model, data, val_idx)
        metrics = score(logits, store.emotion[val_idx], valence, store.valence[val_idx])
        history.append({"epoch": epoch, "train_loss": float(loss_sum) / len(steps),
                        "lr": optimizer.param_groups[0]["lr"],
                        **{f"val_{k}": v for k, v in metrics.items()}})
        value = metrics[data.metric]  # F1 - 0.25 MSE with valence, else F1
        if value > best:
            best, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if plateau is not None:
            plateau.step(value)
        if on_epoch is not None:
            on_epoch(epoch, model, optimizer)
        patience = config.early_stop_patience  # never before warmup + patience epochs
        if (patience is not None and epoch - best_epoch >= patience
                and epoch + 1 >= config.warmup + patience):
            break

    model.load_state_dict(best_state)
    splits = {"oof": val_idx, **{s: store.rows(s) for s in data.dataset.test_splits}}
    return ReferenceResult(fold, seed, best_epoch, len(history), history, best_state,
                           {s: predict(model, data, rows) for s, rows in splits.items()})
