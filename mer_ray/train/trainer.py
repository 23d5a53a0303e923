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

import contextlib
import hashlib
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mer_ray.model import pack
from mer_ray.model.shape import ModelShape
from mer_ray.errors import InputError
from mer_ray.train.folds import make_folds
from mer_ray.train.masks import PackRandom, dropout_threshold, member_key
from mer_ray.train.result import MemberResult, SplitPredictions, mask_key, mask_sets, member_id
from mer_ray.train.metrics import score
from mer_ray.train.pack_adam import PackAdam, clip_per_member

PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau default (rel)
EVAL_CHUNK = 1024


def member_generator(seed: int, fold: int, device="cpu", stream: str = "") -> torch.Generator:
    """The member's own random stream for its init and shuffles: its result never
    depends on who else shares the pack."""
    digest = hashlib.sha256(f"mer-ray/{int(seed)}/{int(fold)}{stream}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def flush_denormals() -> None:
    """Flush denormal floats to zero (FTZ/DAZ) on the CPU.

    Adam with L2 weight decay walks the weights and moments of dead ReLU units down
    geometrically into the denormal range (below 1.2e-38), where every x86 multiply
    takes a microcode assist: a 5-member pack's epoch grew from 2.2 s to 6-7 s by
    epoch 30 (1.7 % of weights and 4.7 % of Adam's first moments denormal), and a matmul
    over denormal inputs ran 220x slower. Flushed, epochs stay at 2.2 s. Numerically
    nothing is lost (GPUs flush too). Threads inherit the setting only when they are
    created after it, so this runs when the trainer is imported, before torch's thread
    pools exist in our entry points, and again at every train_pack."""
    torch.set_flush_denormal(True)


flush_denormals()

_MALLOC_TUNED = False


def keep_freed_memory():
    """Ask glibc to keep freed large blocks for reuse instead of returning them to the OS.

    A pack's weight gradients are tens of MB each step; above glibc's mmap threshold
    every step maps fresh pages and page-faults through them, which measured at a 3.5x
    slower weight-gradient matmul for a 25-member pack on CPU (40 vs 138 GFLOP/s).
    No-op where glibc is absent."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks below 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not trim the heap eagerly
    except (OSError, AttributeError):
        pass


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


# ---------------------------------------------------------------- per-member state
class _Member:
    def __init__(self, fold, seed, train_idx, val_idx, config, pseudo=None):
        self.fold, self.seed = fold, seed
        self.id = member_id(config.to_dict(), fold, seed)
        self.train_idx, self.val_idx = train_idx, val_idx
        # pseudo-labelled rows (mer_ray.selftrain.pseudo.FoldLabels), never held out
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


@torch.no_grad()
def predict_pack(params: dict, x: dict, rows: list[np.ndarray], mask=None):
    """Eval-mode predictions of each member k on rows[k] (numpy indices into x's rows).
    mask: None or a length-M keep vector applied to every row.
    Returns [(logits [n_k, C], valence [n_k] or None)] as numpy."""
    k = len(rows)
    n_max = max(len(r) for r in rows)
    out_l = [[] for _ in range(k)]
    out_v = [[] for _ in range(k)]
    dev = next(iter(params.values())).device
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
        if mask is not None:
            modality_mask = torch.as_tensor(mask, dtype=torch.float32, device=dev).expand(
                k, idx.shape[1], len(x))
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


def _precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(precision: str):
    """TF32 matmuls for `tf32` (CUDA only; on the CPU fp32 and tf32 are the same)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def feature_std(data: TrainData, members) -> dict:
    """Per modality [K, 1, D]: each member's training rows' standard deviation per
    feature dimension (the unit of `feature_noise_<modality>`)."""
    out = {}
    for m, x in data.x.items():
        out[m] = torch.stack([x[torch.from_numpy(mb.train_idx).to(x.device)].std(0)
                              for mb in members]).unsqueeze(1)
    return out


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights of these labels: n / (C x n_c) (0 where absent)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes),
                        where=counts > 0)
    return weights.astype(np.float32)


def train_pack(store, config, specs, device: str = "cpu", on_epoch=None, data=None,
               pseudo=None) -> list[MemberResult]:
    """Train members (fold, seed) of one config together; returns their MemberResults
    in the order of `specs`. `data` (TrainData) may be passed to share it between packs.
    `pseudo` (mer_ray.runs.pseudo_labels.PseudoLabels): the pseudo-labelled rows each fold's members
    add to their training rows (a self-training round >= 1)."""
    keep_freed_memory()
    flush_denormals()
    device = torch.device(device)
    data = data or TrainData(store, config, device)
    shape = data.shape
    if config.pseudo_round > 0 and pseudo is None:
        raise InputError(f"pseudo_round={config.pseudo_round}: a self-training round needs "
                         "the pseudo-labels of the round before; run it with `mer-ray "
                         "selftrain`")
    folds = make_folds(store.emotion[data.train_rows], config.n_folds, config.fold_seed)
    members = [_Member(fold, seed, data.train_rows[folds[fold][0]],
                       data.train_rows[folds[fold][1]], config,
                       None if pseudo is None else pseudo.for_fold(fold))
               for fold, seed in specs]
    labels = np.maximum(store.emotion, 0)
    for m in members:
        m.class_count = np.bincount(labels[m.train_idx], minlength=shape.n_classes)
        m.class_weight = (class_weights(labels[m.train_idx], shape.n_classes)
                          if config.class_weights == "balanced" else None)
    soft = config.pseudo_targets == "soft" and pseudo is not None
    try:
        params = pack.stack([pack.init_member(shape, m.g) for m in members])
        params = {n: p.to(device).requires_grad_(True) for n, p in params.items()}
        opt = PackAdam(params, [config.lr] * len(members), config.weight_decay)
    except (RuntimeError, MemoryError) as e:  # e.g. a hidden size that cannot be allocated
        raise InputError(f"cannot allocate {len(members)} member(s) of hidden_dim "
                         f"{config.hidden_dim} on {device} ({str(e).splitlines()[0]}); "
                         "lower hidden_dim or --pack-size") from None
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
                with _precision_context(config.precision, device):
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
    return _results(data, config, members)


def _end_of_epoch(data, config, epoch, live, params, opt, rand, loss_mean, t0, pack_size,
                  on_epoch):
    """Held-out evaluation, plateau LR cuts, early stopping, non-finite guards; drops the
    members that finished. Returns (live members, their params)."""
    preds = predict_pack(params, data.x, [m.val_idx for m in live])
    finished = []
    for i, m in enumerate(live):
        lg, vp = preds[i]
        row = {"epoch": epoch, "train_loss": float(loss_mean[i]), "lr": float(opt.lr[i])}
        if not math.isfinite(row["train_loss"]) or not np.isfinite(lg).all() or (
                vp is not None and not np.isfinite(vp).all()):
            m.stop_reason = f"non-finite training loss or predictions at epoch {epoch}"
            m.done = True
            m.history.append(row)
            finished.append(i)
            continue
        met = score(lg, data.store.emotion[m.val_idx], vp, data.store.valence[m.val_idx])
        row.update({f"val_{k}": v for k, v in met.items()})
        m.history.append(row)
        value = met[data.metric]
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


def _results(data: TrainData, config, members) -> list[MemberResult]:
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
                lg, vp = preds[s][i]
                predictions[s] = SplitPredictions(
                    names=store.names[r], logits=lg.astype(np.float32),
                    valence=None if vp is None else vp.astype(np.float32),
                    label=store.emotion[r], valence_label=store.valence[r].astype(np.float32),
                    masked={key: d[s][i] for key, d in masked.items()},
                )
                if s == "oof" or data.dataset.split(s).labelled:
                    with_valence = s == "oof" or data.dataset.scores_valence(s)
                    metrics[s] = score(lg, store.emotion[r], vp if with_valence else None,
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
