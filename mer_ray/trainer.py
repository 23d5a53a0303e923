"""The pack trainer: K members (fold, seed) sharing one TrainConfig, trained together.

Each member owns a torch.Generator seeded from (seed, fold); its init, shuffle order,
dropout masks and modality-dropout masks are all drawn from it, member by member, so a
member's result does not depend on which other members share its pack (up to float
rounding of the batched matmuls).

Batches: each member walks its own permutation of its training rows in batches of
`batch_size`; the pack runs max-over-members steps per epoch, short batches are padded
with zero-weight rows and a member with no rows left in a step is skipped entirely
(no gradient, no Adam update, no random draws).

Optimiser: Adam with L2 weight decay (grad += wd * p, as torch.optim.Adam), written by
hand on the stacked weights with a per-member learning rate and step count; gradient
clipping by each member's own global norm (as clip_grad_norm_); ReduceLROnPlateau
(mode max, as torch's defaults: threshold 1e-4 rel) and early stopping on the held-out
fold's combined metric (F1 - 0.25 MSE). Early stopping never ends a member before it has
run warmup + patience epochs. The best epoch's weights are kept and predict oof/test1-3
(plus each modality mask of members.MASKS). Finished members are dropped from the pack.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adam import adam

from mer_ray import model as M
from mer_ray.constants import MODALITIES, TEST_SPLITS
from mer_ray.folds import make_folds
from mer_ray.members import MASKS, MemberResult, SplitPredictions, mask_key, member_id
from mer_ray.metrics import score

BETAS = (0.9, 0.999)
EPS = 1e-8
PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau default (rel)
EVAL_CHUNK = 1024


def member_generator(seed: int, fold: int, device="cpu", stream: str = "") -> torch.Generator:
    """The member's own random stream (on `device`): its result never depends on who
    else shares the pack."""
    digest = hashlib.sha256(f"mer-ray/{int(seed)}/{int(fold)}{stream}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


# ---------------------------------------------------------------- Adam on stacked weights
class PackAdam:
    """torch.optim.Adam (L2 weight decay, no amsgrad) on stacked [K, ...] weights with a
    per-member lr [K] and step count [K]; inactive members are left untouched.

    Members are updated by torch's own fused Adam kernel (torch.optim.adam.adam,
    fused=True): one call per run of neighbouring members that share learning rate and
    step count, over the contiguous slice [i:j] of every stacked weight. The update is
    element-wise, so a member's result is the same whichever run it lands in; in the
    common case (one lr, every member active) a whole pack is one call instead of one
    per member and weight (Adam is memory-bound at batch 32)."""

    def __init__(self, params: dict, lr, weight_decay: float, betas=BETAS, eps=EPS):
        self.params = params
        k = next(iter(params.values())).shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(k).clone()
        self.wd = weight_decay
        self.betas, self.eps = betas, eps
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.count = [0] * k  # Adam steps taken by each member

    @property
    def step_count(self) -> torch.Tensor:
        return torch.tensor(self.count, dtype=torch.float64)

    @torch.no_grad()
    def step(self, active=None):
        k = len(self.count)
        active = [True] * k if active is None else [bool(a) for a in active]
        lrs = self.lr.tolist()
        names = [n for n, p in self.params.items() if p.grad is not None]
        dev = self.params[names[0]].device
        i = 0
        while i < k:
            if not active[i]:
                i += 1
                continue
            j = i + 1
            while j < k and active[j] and lrs[j] == lrs[i] and self.count[j] == self.count[i]:
                j += 1
            # The kernel reads (and increments) one step tensor per weight; torch.full
            # makes them without a host-to-device copy on a GPU.
            steps = torch.full((len(names),), float(self.count[i]), device=dev).unbind()
            adam([self.params[n].detach()[i:j] for n in names],
                 [self.params[n].grad[i:j] for n in names],
                 [self.m[n][i:j] for n in names], [self.v[n][i:j] for n in names], [],
                 list(steps), fused=True, amsgrad=False, beta1=self.betas[0],
                 beta2=self.betas[1], lr=lrs[i], weight_decay=self.wd, eps=self.eps,
                 maximize=False)
            for x in range(i, j):
                self.count[x] += 1
            i = j

    def select(self, keep: torch.Tensor, params: dict):
        self.params = params
        keep_list = keep.cpu().tolist()
        self.lr = self.lr[keep.cpu()]
        self.count = [self.count[i] for i in keep_list]
        keep = keep.to(next(iter(params.values())).device)
        self.m = {n: x[keep].contiguous() for n, x in self.m.items()}
        self.v = {n: x[keep].contiguous() for n, x in self.v.items()}


def clip_per_member(params: dict, max_norm: float) -> torch.Tensor:
    """Scale each member's gradients by min(1, max_norm / (its global norm + 1e-6))."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    k = grads[0].shape[0]
    # one [n_weights, K] stack instead of a pow and an add per weight (K = 1 is mostly
    # small-op overhead)
    per_weight = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads])
    norm = per_weight.square().sum(0).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [coef.view((k,) + (1,) * (g.dim() - 1)) for g in grads])
    return norm


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


# ---------------------------------------------------------------- per-member state
class _Member:
    def __init__(self, fold, seed, train_idx, val_idx, config, device):
        self.fold, self.seed = fold, seed
        self.train_idx, self.val_idx = train_idx, val_idx
        # init and shuffles on the CPU; dropout masks where the model runs, so a GPU
        # step needs no host-to-device copy (on CPU both are the same stream)
        self.g = member_generator(seed, fold)
        self.mask_g = self.g if device.type == "cpu" else member_generator(seed, fold, device, "/masks")
        self.lr = config.lr
        self.best = -math.inf
        self.best_epoch = -1
        self.best_weights = None
        self.plateau_best = -math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.done = False
        self.perm = None


def draw_modality_mask(g: torch.Generator, b: int, p: float) -> torch.Tensor:
    """[b, 3] keep-multipliers on g's device: each modality dropped with prob p, never all
    three (where all three fall, one chosen uniformly is kept). Always draws the same amount."""
    drop = torch.rand(b, 3, generator=g, device=g.device) < p
    keep_one = torch.randint(0, 3, (b,), generator=g, device=g.device)
    all3 = drop.all(1)
    drop[all3, keep_one[all3]] = False
    return (~drop).float()


def dropout_threshold(p: float) -> tuple[int, float]:
    """Inverted dropout from 16-bit uniforms: a unit is kept when its int16 draw >= thr.
    Returns (thr, 1/P(keep)). p is rounded to a multiple of 2**-16 (exact for 0.5; 0.35
    becomes 0.350006). Why not torch.rand: one 64-bit draw gives four 16-bit uniforms,
    and drawing the masks was the largest non-matmul cost of a step (0.85 -> 0.26 ms per
    member-step on this CPU for robust_v3's 233k dropout units)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    thr = min(round(p * 65536), 65535) - 32768
    return thr, 65536 / (32768 - thr)


class DropoutBits:
    """Per-member random int16 words for every dropout unit of a step: [K, n] drawn
    member by member (64 bits = four units per draw) from each member's own generator,
    turned into the scaled keep-masks (0 or 1/(1-p)) of the four encoder inputs."""

    def __init__(self, k: int, bs: int, widths: list[int], p: float, device):
        self.thr, self.scale = dropout_threshold(p)
        n = bs * sum(widths)
        n += -n % 4  # whole 64-bit words
        self.bits = torch.empty(k, n, dtype=torch.int16, device=device)
        self.words = self.bits.view(torch.int64)
        self.views, at = [], 0
        for w in widths:
            self.views.append(self.bits[:, at : at + bs * w].view(k, bs, w))
            at += bs * w
        # reused every step (the previous step's backward is done with them)
        self.out = [torch.empty(k, bs, w, device=device) for w in widths]

    def draw(self, i: int, g: torch.Generator):
        self.words[i].random_(-(2**63), None, generator=g)  # the full 64-bit range

    def masks(self) -> list[torch.Tensor]:
        for v, out in zip(self.views, self.out):
            torch.ge(v, self.thr, out=out)  # straight to float: no bool tensor to convert
            out.mul_(self.scale)
        return self.out


def _epoch_plan(live, bs: int):
    """Draw each member's shuffle for the epoch and lay out its batches: idx [S, K, bs]
    row indices (0-padded), weight [S, K, bs] (1 for a real row), active [S, K] (the member
    has rows in that step). S is the largest member's number of batches."""
    for m in live:
        m.perm = m.train_idx[torch.randperm(len(m.train_idx), generator=m.g).numpy()]
    steps = max(math.ceil(len(m.train_idx) / bs) for m in live)
    idx = np.zeros((steps, len(live), bs), dtype=np.int64)
    weight = np.zeros((steps, len(live), bs), dtype=np.float32)
    for i, m in enumerate(live):
        n = len(m.perm)
        flat_idx = np.zeros(steps * bs, dtype=np.int64)
        flat_idx[:n] = m.perm
        idx[:, i] = flat_idx.reshape(steps, bs)
        flat_w = np.zeros(steps * bs, dtype=np.float32)
        flat_w[:n] = 1
        weight[:, i] = flat_w.reshape(steps, bs)
    return idx, weight, weight.any(axis=2)


@torch.no_grad()
def predict_pack(params: dict, feats, rows: list[np.ndarray], mask=None):
    """Eval-mode predictions of each member k on rows[k] (numpy indices into feats).
    mask: None or a length-3 keep vector applied to every row.
    Returns [(logits [n_k, 6], valence [n_k])] as numpy."""
    k = len(rows)
    n_max = max(len(r) for r in rows)
    out_l = [[] for _ in range(k)]
    out_v = [[] for _ in range(k)]
    for start in range(0, n_max, EVAL_CHUNK):
        idx = np.zeros((k, min(EVAL_CHUNK, n_max - start)), dtype=np.int64)
        lens = []
        for i, r in enumerate(rows):
            part = r[start : start + idx.shape[1]]
            idx[i, : len(part)] = part
            lens.append(len(part))
        dev = next(iter(params.values())).device
        if all(r is rows[0] for r in rows):
            # Test splits: every member sees the same rows; one gathered copy viewed K
            # times instead of K copies (a 25-pack's test chunk: 28 MB, not 700 MB).
            t = torch.from_numpy(idx[0]).to(dev)
            xs = [feats[m][t].expand(k, -1, -1) for m in MODALITIES]
        else:
            t = torch.from_numpy(idx).to(dev)
            xs = [feats[m][t] for m in MODALITIES]
        mm = None
        if mask is not None:
            mm = torch.as_tensor(mask, dtype=torch.float32, device=dev).expand(k, idx.shape[1], 3)
        lg, va = M.forward(params, xs, mm)
        for i, n in enumerate(lens):
            out_l[i].append(lg[i, :n].cpu().numpy())
            out_v[i].append(va[i, :n].cpu().numpy())
    return [(np.concatenate(a), np.concatenate(b)) for a, b in zip(out_l, out_v)]


def train_pack(store, config, specs, device: str = "cpu", log=print) -> list[MemberResult]:
    """Train members (fold, seed) of one config together; returns their MemberResults
    in the order of `specs`."""
    keep_freed_memory()
    flush_denormals()
    device = torch.device(device)
    cfg = config.to_dict()
    dims = {m: int(store.features[m].shape[1]) for m in MODALITIES}
    feats = {}
    for m in MODALITIES:
        x = np.ascontiguousarray(store.features[m], dtype=np.float32)
        with warnings.catch_warnings():
            # The store's arrays are read-only views of the Parquet buffers; the trainer
            # only ever reads features, so share them instead of copying 139 MB per pack.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            feats[m] = torch.from_numpy(x).to(device)
    emotion = torch.from_numpy(store.emotion.astype(np.int64))
    valence = torch.from_numpy(store.valence.astype(np.float32))
    has_val = (~torch.isnan(valence)).to(device)
    valence = torch.nan_to_num(valence).to(device)
    emotion = emotion.to(device)
    train_rows = store.rows("train")
    folds = make_folds(store.emotion[train_rows], config.n_folds, config.fold_seed)

    members = []
    for fold, seed in specs:
        tr, va = folds[fold]
        members.append(
            _Member(fold, seed, train_rows[tr], train_rows[va], config, device)
        )
    params = M.stack([M.init_member(dims, config.hidden_dim, m.g) for m in members])
    params = {n: p.to(device).requires_grad_(True) for n, p in params.items()}
    opt = PackAdam(params, [m.lr for m in members], config.weight_decay)
    live = list(members)  # members in the pack, in slice order
    bs = config.batch_size
    p_drop = config.dropout

    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        k = len(live)
        idx, weight, active = _epoch_plan(live, bs)
        steps = len(active)
        idx, weight = torch.from_numpy(idx).to(device), torch.from_numpy(weight).to(device)
        mod_drop = config.modality_dropout > 0 and epoch >= config.warmup
        # Reused per step: 16 random bits per (member, row, input unit).
        widths = [dims[mod] for mod in MODALITIES] + [3 * config.hidden_dim]
        bits = DropoutBits(k, bs, widths, p_drop, device) if p_drop > 0 else None
        loss_sum = torch.zeros(k, device=device)
        for s in range(steps):
            mmask = torch.ones(k, bs, 3, device=device) if mod_drop else None
            for i, m in enumerate(live):
                if not active[s, i]:  # a member with no rows left draws nothing
                    continue
                if bits is not None:
                    bits.draw(i, m.mask_g)
                if mod_drop:
                    mmask[i] = draw_modality_mask(m.mask_g, bs, config.modality_dropout)
            dm = bits.masks() if bits is not None else [None] * 4
            t = idx[s]
            # index_select copies whole rows (about 2x faster here than feats[mod][t])
            xs = [feats[mod].index_select(0, t.reshape(-1)).view(k, bs, -1) for mod in MODALITIES]
            if bits is not None:
                # the gathered rows are this step's own copies: drop inputs in place
                # and leave the model only the fusion input's mask
                for x, keep in zip(xs, dm):
                    x.mul_(keep)
                dm = [None, None, None, dm[3]]
            logits, vpred = M.forward(params, xs, mmask, dm)
            w = weight[s]
            y, v, hv = emotion[t], valence[t], has_val[t].float() * w
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            ce = (ce.view(k, bs) * w).sum(1) / w.sum(1).clamp(min=1)
            mse = ((vpred - v) ** 2 * hv).sum(1) / hv.sum(1).clamp(min=1)
            loss = ce + mse  # [K]; a member with no rows contributes 0 and gets no update
            for p in params.values():
                p.grad = None
            loss.sum().backward()
            if config.grad_clip is not None:
                clip_per_member(params, config.grad_clip)
            opt.step(active[s])
            loss_sum += loss.detach()
        # one host transfer per epoch (none per step)
        loss_sum = loss_sum.double().cpu() / torch.from_numpy(active.sum(0).clip(min=1))

        # held-out evaluation, schedulers, early stopping
        preds = predict_pack(params, feats, [m.val_idx for m in live])
        finished = []
        for i, m in enumerate(live):
            lg, vp = preds[i]
            met = score(lg, store.emotion[m.val_idx], vp, store.valence[m.val_idx])
            comb = met["combined"]
            m.history.append({
                "epoch": epoch,
                "train_loss": float(loss_sum[i]),
                "val_f1": met["f1"], "val_acc": met["acc"], "val_mse": met["mse"],
                "val_combined": comb, "lr": float(opt.lr[i]),
            })
            if comb > m.best:
                m.best, m.best_epoch = comb, epoch
                m.best_weights = M.unstack(params, i)
            if config.plateau_patience is not None:
                if m.plateau_best == -math.inf or comb > m.plateau_best * (1 + PLATEAU_THRESHOLD):
                    m.plateau_best, m.bad_epochs = comb, 0
                else:
                    m.bad_epochs += 1
                if m.bad_epochs > config.plateau_patience:
                    new = float(opt.lr[i]) * config.plateau_factor
                    if float(opt.lr[i]) - new > 1e-8:
                        opt.lr[i] = new
                    m.bad_epochs = 0
            p_es = config.early_stop_patience
            if (
                p_es is not None
                and epoch - m.best_epoch >= p_es
                and epoch + 1 >= config.warmup + p_es
            ):
                m.done = True
            if epoch == config.epochs - 1:
                m.done = True
            if m.done:
                finished.append(i)
        log(
            f"epoch {epoch}: {len(live)} member(s), {time.perf_counter() - t0:.1f}s, "
            "val combined " + ", ".join(f"{m.history[-1]['val_combined']:.4f}" for m in live)
        )
        if finished:
            keep = torch.tensor([i for i in range(len(live)) if i not in finished], dtype=torch.long)
            live = [live[i] for i in keep.tolist()]
            if not live:
                break
            params = {n: p.detach()[keep.to(device)].contiguous().requires_grad_(True) for n, p in params.items()}
            opt.select(keep, params)

    return _results(store, config, cfg, members, feats)


def _results(store, config, cfg, members, feats) -> list[MemberResult]:
    best = M.stack([m.best_weights for m in members])
    split_rows = {"oof": [m.val_idx for m in members]}
    for s in TEST_SPLITS:
        split_rows[s] = [store.rows(s)] * len(members)
    preds = {s: predict_pack(best, feats, rows) for s, rows in split_rows.items()}
    masked = {}
    for mods in MASKS:
        keep = [0.0 if mod in mods else 1.0 for mod in MODALITIES]
        masked[mask_key(mods)] = {
            s: predict_pack(best, feats, rows, keep) for s, rows in split_rows.items()
        }
    results = []
    for i, m in enumerate(members):
        predictions, metrics = {}, {}
        for s, rows in split_rows.items():
            r = rows[i]
            lg, vp = preds[s][i]
            vl = store.valence[r].astype(np.float32)
            predictions[s] = SplitPredictions(
                names=store.names[r], logits=lg.astype(np.float32), valence=vp.astype(np.float32),
                label=store.emotion[r], valence_label=vl,
                masked={key: (d[s][i][0], d[s][i][1]) for key, d in masked.items()},
            )
            metrics[s] = score(lg, store.emotion[r], vp, vl)
        results.append(MemberResult(
            member_id=member_id(cfg, m.fold, m.seed), config=cfg, fold=m.fold, seed=m.seed,
            best_epoch=m.best_epoch, epochs_run=len(m.history), metrics=metrics,
            history=m.history, classes=list(store.manifest["classes"]),
            store={"content_hash": store.manifest["content_hash"],
                   "modalities": store.manifest["modalities"]},
            predictions=predictions,
        ))
    return results
