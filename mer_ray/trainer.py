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

import numpy as np
import torch
import torch.nn.functional as F

from mer_ray import model as M
from mer_ray.constants import MODALITIES, TEST_SPLITS
from mer_ray.folds import make_folds
from mer_ray.members import MASKS, MemberResult, SplitPredictions, mask_key, member_id
from mer_ray.metrics import score

BETAS = (0.9, 0.999)
EPS = 1e-8
PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau default (rel)
EVAL_CHUNK = 1024


def member_generator(seed: int, fold: int) -> torch.Generator:
    digest = hashlib.sha256(f"mer-ray/{int(seed)}/{int(fold)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


# ---------------------------------------------------------------- Adam on stacked weights
class PackAdam:
    """torch.optim.Adam (L2 weight decay, no amsgrad) on stacked [K, ...] weights with a
    per-member lr [K] and step count [K]; inactive members are left untouched."""

    def __init__(self, params: dict, lr, weight_decay: float, betas=BETAS, eps=EPS):
        self.params = params
        k = next(iter(params.values())).shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(k).clone()
        self.wd = weight_decay
        self.betas, self.eps = betas, eps
        self.step_count = torch.zeros(k, dtype=torch.float64)
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None):
        k = self.step_count.shape[0]
        active = torch.ones(k, dtype=torch.bool) if active is None else active.cpu()
        dev = next(iter(self.params.values())).device
        b1, b2 = self.betas
        self.step_count += active.double()
        t = self.step_count.clamp(min=1)
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        step_size = (self.lr / bc1).float().to(dev)
        bc2_sqrt = bc2.sqrt().float().to(dev)
        active_dev = active.to(dev)
        for n, p in self.params.items():
            if p.grad is None:
                continue
            shape = (k,) + (1,) * (p.dim() - 1)
            a = active_dev.view(shape)
            g = p.grad
            if self.wd:
                g = g.add(p, alpha=self.wd)
            m_new = self.m[n] * b1 + g * (1 - b1)
            v_new = self.v[n] * b2 + g * g * (1 - b2)
            denom = v_new.sqrt() / bc2_sqrt.view(shape) + self.eps
            p_new = p - step_size.view(shape) * m_new / denom
            self.m[n] = torch.where(a, m_new, self.m[n])
            self.v[n] = torch.where(a, v_new, self.v[n])
            p.copy_(torch.where(a, p_new, p))

    def select(self, keep: torch.Tensor, params: dict):
        self.params = params
        keep = keep.cpu()
        self.lr = self.lr[keep]
        self.step_count = self.step_count[keep]
        keep = keep.to(next(iter(params.values())).device)
        self.m = {n: x[keep].contiguous() for n, x in self.m.items()}
        self.v = {n: x[keep].contiguous() for n, x in self.v.items()}


def clip_per_member(params: dict, max_norm: float) -> torch.Tensor:
    """Scale each member's gradients by min(1, max_norm / (its global norm + 1e-6))."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    k = grads[0].shape[0]
    sq = torch.zeros(k, device=grads[0].device)
    for g in grads:
        sq += g.reshape(k, -1).pow(2).sum(1)
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view((k,) + (1,) * (g.dim() - 1)))
    return norm.cpu()


# ---------------------------------------------------------------- per-member state
class _Member:
    def __init__(self, fold, seed, train_idx, val_idx, config, generator):
        self.fold, self.seed = fold, seed
        self.train_idx, self.val_idx = train_idx, val_idx
        self.g = generator
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
    """[b, 3] keep-multipliers: each modality dropped with prob p, never all three
    (where all three fall, one chosen uniformly is kept). Always draws the same amount."""
    drop = torch.rand(b, 3, generator=g) < p
    keep_one = torch.randint(0, 3, (b,), generator=g)
    all3 = drop.all(1)
    drop[all3, keep_one[all3]] = False
    return (~drop).float()


def _dropout_mask(g, shape, p):
    if p <= 0:
        return torch.ones(shape)
    return (torch.rand(shape, generator=g) >= p).float() / (1 - p)


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
    device = torch.device(device)
    cfg = config.to_dict()
    dims = {m: int(store.features[m].shape[1]) for m in MODALITIES}
    feats = {}
    for m in MODALITIES:
        x = np.ascontiguousarray(store.features[m], dtype=np.float32)
        feats[m] = torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)
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
            _Member(fold, seed, train_rows[tr], train_rows[va], config, member_generator(seed, fold))
        )
    params = M.stack([M.init_member(dims, config.hidden_dim, m.g) for m in members])
    params = {n: p.to(device).requires_grad_(True) for n, p in params.items()}
    opt = PackAdam(params, [m.lr for m in members], config.weight_decay)
    live = list(members)  # members in the pack, in slice order
    bs = config.batch_size
    p_drop = config.dropout

    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        for m in live:
            m.perm = m.train_idx[torch.randperm(len(m.train_idx), generator=m.g).numpy()]
        steps = max(math.ceil(len(m.train_idx) / bs) for m in live)
        mod_drop = config.modality_dropout > 0 and epoch >= config.warmup
        k = len(live)
        loss_sum = torch.zeros(k, dtype=torch.float64)
        n_steps = torch.zeros(k)
        for s in range(steps):
            idx = np.zeros((k, bs), dtype=np.int64)
            weight = torch.zeros(k, bs)
            active = torch.zeros(k, dtype=torch.bool)
            dmasks = [[] for _ in range(4)]
            mmask = torch.ones(k, bs, 3)
            for i, m in enumerate(live):
                part = m.perm[s * bs : (s + 1) * bs]
                n = len(part)
                if n:
                    idx[i, :n] = part
                    weight[i, :n] = 1
                    active[i] = True
                    shapes = [(bs, dims[mod]) for mod in MODALITIES] + [(bs, 3 * config.hidden_dim)]
                    for j, sh in enumerate(shapes):
                        dmasks[j].append(_dropout_mask(m.g, sh, p_drop))
                    if mod_drop:
                        mmask[i] = draw_modality_mask(m.g, bs, config.modality_dropout)
                else:
                    for j, sh in enumerate([(bs, dims[mod]) for mod in MODALITIES] + [(bs, 3 * config.hidden_dim)]):
                        dmasks[j].append(torch.ones(sh))
            t = torch.from_numpy(idx).to(device)
            weight = weight.to(device)
            xs = [feats[mod][t] for mod in MODALITIES]
            dm = [torch.stack(d).to(device) for d in dmasks]
            logits, vpred = M.forward(params, xs, mmask.to(device) if mod_drop else None, dm)
            y, v, hv = emotion[t], valence[t], has_val[t].float() * weight
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            ce = (ce.view(k, bs) * weight).sum(1) / weight.sum(1).clamp(min=1)
            mse = ((vpred - v) ** 2 * hv).sum(1) / hv.sum(1).clamp(min=1)
            loss = ce + mse  # [K]
            for p in params.values():
                p.grad = None
            loss.sum().backward()
            if config.grad_clip is not None:
                clip_per_member(params, config.grad_clip)
            opt.step(active)
            loss_sum += torch.where(active, loss.detach().double().cpu(), 0.0)
            n_steps += active.float()

        # held-out evaluation, schedulers, early stopping
        preds = predict_pack(params, feats, [m.val_idx for m in live])
        finished = []
        for i, m in enumerate(live):
            lg, vp = preds[i]
            met = score(lg, store.emotion[m.val_idx], vp, store.valence[m.val_idx])
            comb = met["combined"]
            m.history.append({
                "epoch": epoch,
                "train_loss": float(loss_sum[i] / max(n_steps[i].item(), 1)),
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
