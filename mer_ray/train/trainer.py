"""The pack trainer: K members (fold, seed) sharing one TrainConfig, trained together.

Read `mer_ray/train/reference.py` first: it is the same recipe for one member in plain
PyTorch (nn.Module, torch.optim.Adam, clip_grad_norm_, ReduceLROnPlateau), and tests
check this trainer against it step by step. Here the same thing runs for a whole pack.

Each member owns a torch.Generator seeded from (seed, fold) for its init and its shuffle
order, and a key for the counter-based generator (mer_ray.train.masks) that draws its dropout
masks, modality-dropout masks and feature noise. Neither depends on which other members
share its pack, so a member's result does not either: on CPU bit for bit (where a
batched kernel rounds by pack size, the code says so and works around it; a last-bit
difference grows over a full run into a different member). On a GPU to float rounding.

Batches: each member walks its own permutation of its training rows in batches of
`batch_size`; the pack runs max-over-members steps per epoch, short batches are padded
with zero-weight rows and a member with no rows left in a step is skipped entirely
(no gradient, no Adam update).

Loss: cross-entropy (+ valence MSE where the dataset has valence, + the contrastive
term where `contrastive_weight` > 0). Optimiser: Adam with L2 weight decay on the
stacked weights (mer_ray.train.pack_adam), per-member learning rate and step count; gradient
clipping by each member's own global norm (as clip_grad_norm_); ReduceLROnPlateau
(mode max, torch's defaults: threshold 1e-4 rel) and early stopping on the held-out
fold's metric (F1 - 0.25 MSE, or F1 without valence). Early stopping never ends a
member before it has run warmup + patience epochs. A member whose loss or held-out
metric becomes non-finite stops there (its best finite epoch is kept; with none it is
saved as failed) and never takes its pack down. The best epoch's weights are kept and
predict the held-out fold and every test split (plus each modality mask of
result.mask_sets). Finished members are dropped from the pack.

Progress: after every epoch `on_epoch(EpochProgress)` gets the numbers (printing, Ray
reports, TensorBoard and the benchmark are its consumers; none parse text).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mer_ray.errors import InputError
from mer_ray.model import pack
from mer_ray.train.evaluate import member_results, predict_pack
from mer_ray.train.folds import make_folds
from mer_ray.train.masks import PackRandom, member_generator, member_key
from mer_ray.train.metrics import score
from mer_ray.train.numerics import (
    flush_denormals,
    keep_freed_memory,
    matmul_precision,
    precision_context,
)
from mer_ray.train.pack_adam import PackAdam, clip_per_member
from mer_ray.train.result import MemberResult, member_id
from mer_ray.train.train_data import TrainData, class_weights, feature_std

PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau default (rel)


flush_denormals()


# ---------------------------------------------------------------- per-member state
class _Member:
    def __init__(self, fold, seed, train_idx, val_idx, config, pseudo=None):
        self.fold, self.seed = fold, seed
        self.id = member_id(config.to_dict(), fold, seed)
        self.train_idx, self.val_idx = train_idx, val_idx
        # pseudo-labelled rows (mer_ray.runs.pseudo_labels.FoldLabels), never held out
        self.pseudo = pseudo
        self.g = member_generator(seed, fold)  # init and shuffles
        self.best = -math.inf
        self.best_epoch = -1
        self.best_weights = None
        self.plateau_best = -math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.done = False
        self.stop_reason = None
        self.perm = None


@dataclass
class EpochProgress:
    """One epoch of one pack, as the trainer reports it to `on_epoch`."""

    epoch: int  # 0-based
    epochs: int  # the recipe's maximum
    seconds: float
    member_ids: list[str]  # the members that ran this epoch
    rows: list[dict]  # their history rows (train_loss, val_f1, ..., lr), same order
    finished: list[str]  # ids that finished at this epoch
    best: list[float]  # each member's best held-out metric so far, same order
    metric: str  # "combined" or "f1"
    pack_size: int  # members in the pack at the start


@dataclass
class EpochPlan:
    """An epoch's batches for the live members, [S, K, bs] each (S: the largest member's
    number of batches; short batches are padded with weight-0 rows)."""

    idx: np.ndarray  # store row of each batch row (0 where padded)
    target: np.ndarray  # class each row learns: its label, or its pseudo-label
    weight: np.ndarray  # its loss weight: 1 (or its class weight) for a labelled row,
    #                     pseudo_weight for a pseudo-labelled one, 0 for padding
    labelled: np.ndarray  # 1 for a labelled row (the valence loss uses only those)
    soft: np.ndarray | None  # [S, K, bs, C] soft targets of pseudo rows (soft targets)

    @property
    def active(self) -> np.ndarray:
        """[S, K]: the member has rows in that step."""
        return self.weight.any(axis=2)


def _epoch_plan(live, bs: int, labels: np.ndarray, soft: bool = False,
                pseudo_weight: float = 1.0) -> EpochPlan:
    """Draw each member's shuffle of its rows for the epoch (its labelled training rows,
    then its pseudo-labelled ones, in one permutation) and lay out its batches."""
    orders, rows, targets, weights, soft_targets = [], [], [], [], []
    for m in live:
        n_real = len(m.train_idx)
        n_pseudo = 0 if m.pseudo is None else len(m.pseudo.rows)
        order = torch.randperm(n_real + n_pseudo, generator=m.g).numpy()
        all_rows, all_targets = m.train_idx, labels[m.train_idx]
        all_weights = (np.ones(n_real, np.float32) if m.class_weight is None
                       else m.class_weight[all_targets])
        if n_pseudo:
            all_rows = np.concatenate([all_rows, m.pseudo.rows])
            all_targets = np.concatenate([all_targets, m.pseudo.classes])
            all_weights = np.concatenate(
                [all_weights, np.full(n_pseudo, pseudo_weight, np.float32)])
        m.perm = all_rows[order]
        orders.append(order)
        rows.append(m.perm)
        targets.append(all_targets[order])
        weights.append(all_weights[order])
        if soft:
            q = np.zeros((len(order), len(m.class_count)), np.float32)
            if n_pseudo:
                pseudo = order >= n_real
                q[pseudo] = m.pseudo.probabilities[order[pseudo] - n_real]
            soft_targets.append(q)
    steps = max(math.ceil(len(r) / bs) for r in rows)

    def lay_out(per_member, dtype):
        tail = per_member[0].shape[1:]
        out = np.zeros((steps, len(per_member), bs) + tail, dtype=dtype)
        for i, values in enumerate(per_member):
            flat = np.zeros((steps * bs,) + tail, dtype=dtype)
            flat[: len(values)] = values
            out[:, i] = flat.reshape((steps, bs) + tail)
        return out

    labelled = [o < len(m.train_idx) for o, m in zip(orders, live)]
    return EpochPlan(lay_out(rows, np.int64), lay_out(targets, np.int64),
                     lay_out(weights, np.float32), lay_out(labelled, np.float32),
                     lay_out(soft_targets, np.float32) if soft else None)


def contrastive_loss(hidden: list, fused, weight, modality_mask, temperature: float):
    """InfoNCE of each modality's hidden vector against the fused vector, per member [K].

    Why the fused vector and not the other modalities: the heads read only the fused
    vector, so pulling every modality towards it is what makes the prediction survive
    a missing modality; it needs M terms rather than M(M-1)/2 pairs, and every sample
    has a fused vector even where modality dropout removed some of its modalities.
    Anchors are the batch's real rows whose modality is present (a dropped modality's
    hidden vector is zero: no direction to align); negatives are the other real rows'
    fused vectors. Cosine similarity over `temperature`; modalities with no anchor add 0."""
    real = weight > 0  # [K, B]
    f = F.normalize(fused, dim=-1)
    blocked = (~real).unsqueeze(1)  # [K, 1, B]: padded rows are never negatives
    total = torch.zeros(fused.shape[0], device=fused.device)
    for i, h in enumerate(hidden):
        sim = torch.bmm(F.normalize(h, dim=-1), f.transpose(1, 2)) / temperature  # [K, B, B]
        sim = sim.masked_fill(blocked, -1e4)
        per_row = torch.logsumexp(sim, dim=-1) - sim.diagonal(dim1=1, dim2=2)  # [K, B]
        anchor = real if modality_mask is None else real & (modality_mask[..., i] > 0)
        anchor = anchor.float()
        total = total + (per_row * anchor).sum(1) / anchor.sum(1).clamp(min=1)
    return total / len(hidden)


def train_pack(store, config, specs, device: str = "cpu", on_epoch=None, data=None,
               pseudo=None) -> list[MemberResult]:
    """Train members (fold, seed) of one config together; returns their MemberResults
    in the order of `specs`. `data` (TrainData) may be passed to share it between packs.
    `pseudo` (mer_ray.runs.pseudo_labels.PseudoLabels): the pseudo-labelled rows each
    fold's members add to their training rows (a self-training round >= 1)."""
    keep_freed_memory()
    flush_denormals()
    device = torch.device(device)
    data = data or TrainData(store, config, device)
    shape = data.shape
    if config.pseudo_round > 0 and pseudo is None:
        raise InputError(f"pseudo_round={config.pseudo_round}: a self-training round needs "
                         "the pseudo-labels of the round before; run it with `mer-ray "
                         "selftrain`")
    labels = np.maximum(store.emotion, 0)
    members = _pack_members(data, config, specs, labels, pseudo)
    soft = config.pseudo_targets == "soft" and pseudo is not None
    params, opt = _init_pack(shape, members, config, device)
    live = list(members)  # members in the pack, in slice order
    bs, n_mod = config.batch_size, len(shape.dims)
    widths = [d for _, d in shape.dims] + [n_mod * config.hidden_dim]
    rand = PackRandom([member_key(m.seed, m.fold) for m in members], bs, widths, device)
    drop_probs = [config.modality_dropout_of(m) for m in shape.modalities]
    noise = {m: getattr(config, f"feature_noise_{m}") for m in shape.modalities}
    noise_std = feature_std(data, members) if any(noise.values()) else None

    with matmul_precision(config.precision):
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            k = len(live)
            plan = _epoch_plan(live, bs, labels, soft, config.pseudo_weight)
            active = plan.active
            idx, target, weight, labelled = (torch.from_numpy(a).to(device) for a in (
                plan.idx, plan.target, plan.weight, plan.labelled))
            soft_target = None if plan.soft is None else torch.from_numpy(plan.soft).to(device)
            robust = epoch >= config.warmup  # modality dropout and noise from the warmup on
            mod_drop = robust and any(p > 0 for p in drop_probs)
            rand.start_epoch(epoch)
            loss_sum = torch.zeros(k, device=device)
            for s in range(len(active)):
                t = idx[s]
                # index_select copies whole rows (about 2x faster here than x[t])
                xs = {m: v.index_select(0, t.reshape(-1)).view(k, bs, -1)
                      for m, v in data.x_train.items()}
                if robust and noise_std is not None:
                    for i, m in enumerate(shape.modalities):
                        if noise[m] > 0:  # x_train is scaled by dropout_scale: so is noise
                            xs[m].addcmul_(rand.normal(s, i, (bs, xs[m].shape[-1])),
                                           noise_std[m], value=noise[m] * data.dropout_scale)
                dropout_masks = [None] * (n_mod + 1)
                if config.dropout > 0:
                    dropout_masks = rand.dropout_masks(s, config.dropout, unscaled=n_mod)
                    # the gathered rows are this step's own copies: drop inputs in place
                    for m, keep in zip(shape.modalities, dropout_masks):
                        xs[m].mul_(keep)
                    dropout_masks = [None] * n_mod + [dropout_masks[n_mod]]
                modality_mask = rand.modality_mask(s, drop_probs) if mod_drop else None
                w = weight[s]
                with precision_context(config.precision, device):
                    out = pack.forward(params, xs, modality_mask, dropout_masks)
                    logits = out.logits.float()
                    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                         target[s].reshape(-1), reduction="none")
                    if soft_target is not None:  # pseudo rows: their teachers' probabilities
                        soft_ce = -(soft_target[s] * F.log_softmax(logits, -1)).sum(-1)
                        ce = torch.where(labelled[s].reshape(-1) > 0, ce, soft_ce.reshape(-1))
                    total = w.sum(1)
                    loss = (ce.view(k, bs) * w).sum(1) / torch.where(total > 0, total, 1)  # [K]
                    if shape.valence:
                        valence_rows = data.has_valence[t].float() * labelled[s]
                        err = (out.valence.float() - data.valence[t]) ** 2
                        loss = loss + ((err * valence_rows).sum(1)
                                       / valence_rows.sum(1).clamp(min=1))
                    if config.contrastive_weight > 0:
                        loss = loss + config.contrastive_weight * contrastive_loss(
                            [h.float() for h in out.hidden], out.fused.float(), w,
                            modality_mask, config.contrastive_temperature)
                # a member with no rows in this step contributes 0 and gets no update
                for p in params.values():
                    p.grad = None
                loss.sum().backward()
                if config.grad_clip is not None:
                    clip_per_member(params, config.grad_clip)
                opt.step(active[s])
                loss_sum += loss.detach()
            # one host transfer per epoch (none per step)
            loss_mean = loss_sum.double().cpu() / torch.from_numpy(active.sum(0).clip(min=1))
            live, params = _end_of_epoch(data, config, epoch, live, params, opt, rand,
                                         loss_mean, t0, len(members), on_epoch)
            if not live:
                break
            if noise_std is not None and len(live) < k:  # members left: their rows go too
                noise_std = feature_std(data, live)
    return member_results(data, config, members)


def _init_pack(shape, members, config, device) -> tuple[dict, PackAdam]:
    """The members' initial weights, stacked on the device, and their optimiser."""
    try:
        params = pack.stack([pack.init_member(shape, m.g) for m in members])
        params = {n: p.to(device).requires_grad_(True) for n, p in params.items()}
        return params, PackAdam(params, [config.lr] * len(members), config.weight_decay)
    except (RuntimeError, MemoryError) as e:  # e.g. a hidden size that cannot be allocated
        raise InputError(f"cannot allocate {len(members)} member(s) of hidden_dim "
                         f"{config.hidden_dim} on {device} ({str(e).splitlines()[0]}); "
                         "lower hidden_dim or --pack-size") from None


def _pack_members(data, config, specs, labels: np.ndarray, pseudo) -> list[_Member]:
    """Each (fold, seed): its training and held-out rows, its pseudo-labels, its class
    counts and (with class_weights=balanced) weights."""
    folds = make_folds(data.store.emotion[data.train_rows], config.n_folds, config.fold_seed)
    members = [_Member(fold, seed, data.train_rows[folds[fold][0]],
                       data.train_rows[folds[fold][1]], config,
                       None if pseudo is None else pseudo.for_fold(fold))
               for fold, seed in specs]
    n_classes = data.shape.n_classes
    for m in members:
        m.class_count = np.bincount(labels[m.train_idx], minlength=n_classes)
        m.class_weight = (class_weights(labels[m.train_idx], n_classes)
                          if config.class_weights == "balanced" else None)
    return members


def _end_of_epoch(data, config, epoch, live, params, opt, rand, loss_mean, t0, pack_size,
                  on_epoch):
    """Held-out evaluation, plateau LR cuts, early stopping, non-finite guards; drops the
    members that finished. Returns (live members, their params)."""
    preds = predict_pack(params, data.x, [m.val_idx for m in live])
    finished = []
    for i, m in enumerate(live):
        logits, valence_pred = preds[i]
        row = {"epoch": epoch, "train_loss": float(loss_mean[i]), "lr": float(opt.lr[i])}
        if not math.isfinite(row["train_loss"]) or not np.isfinite(logits).all() or (
                valence_pred is not None and not np.isfinite(valence_pred).all()):
            m.stop_reason = f"non-finite training loss or predictions at epoch {epoch}"
            m.done = True
            m.history.append(row)
            finished.append(i)
            continue
        held_out = score(logits, data.store.emotion[m.val_idx], valence_pred,
                         data.store.valence[m.val_idx])
        row.update({f"val_{k}": v for k, v in held_out.items()})
        m.history.append(row)
        value = held_out[data.metric]
        if value > m.best:
            m.best, m.best_epoch = value, epoch
            m.best_weights = pack.unstack(params, i)
        if config.plateau_patience is not None:
            if m.plateau_best == -math.inf or value > m.plateau_best * (1 + PLATEAU_THRESHOLD):
                m.plateau_best, m.bad_epochs = value, 0
            else:
                m.bad_epochs += 1
            if m.bad_epochs > config.plateau_patience:
                new = float(opt.lr[i]) * config.plateau_factor
                if float(opt.lr[i]) - new > 1e-8:
                    opt.lr[i] = new
                m.bad_epochs = 0
        patience = config.early_stop_patience
        if (patience is not None and epoch - m.best_epoch >= patience
                and epoch + 1 >= config.warmup + patience):
            m.done = True
        if epoch == config.epochs - 1:
            m.done = True
        if m.done:
            finished.append(i)
    if on_epoch is not None:
        on_epoch(EpochProgress(
            epoch=epoch, epochs=config.epochs, seconds=time.perf_counter() - t0,
            member_ids=[m.id for m in live], rows=[m.history[-1] for m in live],
            finished=[live[i].id for i in finished], best=[m.best for m in live],
            metric=data.metric, pack_size=pack_size))
    if not finished:
        return live, params
    keep = torch.tensor([i for i in range(len(live)) if i not in finished], dtype=torch.long)
    live = [live[i] for i in keep.tolist()]
    if not live:
        return live, params
    device = next(iter(params.values())).device
    params = {n: p.detach()[keep.to(device)].contiguous().requires_grad_(True)
              for n, p in params.items()}
    opt.select(keep, params)
    rand.select(keep)
    return live, params


