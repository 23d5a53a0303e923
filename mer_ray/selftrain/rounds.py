"""`mer-ray selftrain`: rounds of teachers -> pseudo-labels -> students.

Round 0 is the recipe (or grid) exactly as `train` / `tune` run it: its members have the
plain recipe's ids, so a run that already holds them is round 0 as it is. Round r >= 1:
round r-1's members label the store's pool (mer_ray.selftrain.pseudo: fold-matched teachers, a
threshold or top-k selection, per-class caps), and the round's students train on their
labelled rows plus the selected pseudo-labelled ones, through the same path as any
run (in this process, or Ray Train / Tune). The round is part of each member's config
and id, so a killed run resumes like any other: saved members are kept, a round's
pseudo-labels are made once.

Every choice is made on real labels only: early stopping, LR plateaus and best epochs on
the held-out fold, and the round to keep on the out-of-fold score (the mean over seeds
of each seed's fold-averaged model, as `tune` prints). A setting stops at `rounds`, or
at the first round whose out-of-fold score does not beat its best so far.
RUN/selftrain.json records each round's scores, pseudo-label counts and seconds, and the
round chosen.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ensembles.groups import trial_summary, trial_table
from mer_ray.distributed.cluster import connect, disconnect
from mer_ray.distributed.train import train_alone
from mer_ray.distributed.tune import tune_grid
from mer_ray.errors import InputError
from mer_ray.runs.preflight import preflight, replace_out
from mer_ray.runs.pseudo_labels import labels_meta
from mer_ray.runs.run import read_config_members, record_run, setting_label, train_grid_here
from mer_ray.selftrain.pseudo import candidate_splits, ensure_labels
from mer_ray.storage import join, storage_errors, write_bytes

SUMMARY_FILE = "selftrain.json"


@dataclass
class Training:
    """How each round trains: in this process, or through Ray (as `train` / `tune`)."""

    no_ray: bool = True
    device: str = "cpu"
    workers: int | None = None
    gpus_per_worker: float = 0
    pack_size: int = 10
    log_every: int = 10
    tensorboard: bool = True
    tune_verbose: int = 0
    bar: bool = False
    wait_s: float = 300.0  # Ray: how long a run waits for lost capacity (mer_ray.distributed.train)


@dataclass
class RoundRecord:
    round: int
    setting: dict
    config: dict
    scores: dict  # trial_summary of its members (cv_*, per test split, ...)
    pseudo_counts: dict = field(default_factory=dict)  # teacher fold -> per class
    pseudo_file: str | None = None
    seconds: float = 0.0


def round_config(config, round_: int, selection: dict):
    """A setting's config in round `round_`: round 0 is the recipe as it is (no
    self-training field set), round r >= 1 carries the round and the selection."""
    if round_ == 0:
        return config
    return config.replace(pseudo_round=round_, **selection)


def cv_value(scores: dict) -> float:
    """The out-of-fold objective: cv combined where there is valence, else cv F1."""
    return scores.get("cv_combined", scores.get("cv_f1", float("-inf")))


def selftrain(store_location: str, out: str, config, settings: list[dict], seeds,
              rounds: int, selection: dict, training: Training, overwrite: bool = False,
              address: str | None = None, all_rounds: bool = False,
              log=print) -> list[RoundRecord]:
    """Run the rounds (module docstring). Everything is checked before round 0 trains:
    the store (it must have a pool to label), every round's recipe, --out. `all_rounds`:
    train every round even where the out-of-fold score did not improve (to see them all;
    the round chosen is still the best on out-of-fold)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise InputError(f"{rounds!r}: expected an integer in [1, 100]", param="rounds")
    chains = [config.replace(**s) for s in settings]
    every = [round_config(c, r, selection) for c in chains for r in range(rounds + 1)]
    local = training.no_ray or not address
    checked = preflight(store_location, every, seeds, out, training.pack_size,
                        overwrite=overwrite, local=local, log=log)
    store = checked.store
    candidate_splits(store.dataset, every[-1])  # a store with nothing to label: now
    if overwrite:
        replace_out(out)
    seeds = checked.seeds
    record_run(out, store_location, chains, store.manifest, seeds=seeds)

    ray_started = False
    if not training.no_ray:
        ray_started = connect(address)
    history: list[RoundRecord] = []
    best = {i: float("-inf") for i in range(len(chains))}
    active = list(range(len(chains)))
    try:
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            configs = {i: round_config(chains[i], r, selection) for i in active}
            files = {}
            if r >= 1:
                for i, c in list(configs.items()):
                    files[i] = ensure_labels(out, store, c, seeds, training.device, log=log,
                                             progress=training.bar)
                    counts = (labels_meta(files[i]) or {}).get("counts", {})
                    if not any(sum(v) for v in counts.values()):
                        log(f"{_label(c)}: no pseudo-label selected, so this round would "
                            "train its teachers again; no further round for this setting")
                        del configs[i]
                if not configs:
                    break
            record_run(out, store_location, list(configs.values()), seeds=seeds)
            log(f"\nself-training round {r} of {rounds}: "
                + ", ".join(_label(c) for c in configs.values()))
            _train_round(store, store_location, out, configs, settings, seeds, training, log)
            took = time.perf_counter() - t0
            still = []
            for i, c in configs.items():
                members = read_config_members(out, c, seeds, log=log)
                scores = trial_summary(members) if members else {}
                meta = labels_meta(files[i]) if i in files else None
                history.append(RoundRecord(
                    r, settings[i], c.to_dict(), scores,
                    (meta or {}).get("counts", {}), files.get(i), round(took, 1)))
                value = cv_value(scores)
                improved = r == 0 or value > best[i]
                best[i] = max(best[i], value)
                if improved or all_rounds:
                    if r < rounds:
                        still.append(i)
                else:
                    log(f"{_label(c)}: out-of-fold {value:.4f} did not beat the best so far "
                        f"({best[i]:.4f}); no further round for this setting")
            log(round_table([h for h in history if h.round == r]))
            active = still
            if not active:
                break
    finally:
        if ray_started:
            disconnect()
    _write_summary(out, history, rounds)
    log(final_lines(out, history))
    return history


def _label(config) -> str:
    return setting_label(config)


def _train_round(store, store_location, out, configs: dict, settings, seeds, training, log):
    """One round's configs, trained as `train` (one setting) or `tune` (a grid) would."""
    if training.no_ray:
        for c in configs.values():
            train_grid_here(store, store_location, c, [{}], seeds, out, training.pack_size,
                            training.device, log=log, log_every=training.log_every,
                            tensorboard=training.tensorboard, bar=training.bar)
        return

    if len(configs) == 1:
        train_alone(store_location, next(iter(configs.values())), seeds, out,
                    training.workers, training.gpus_per_worker, training.pack_size,
                    log=log, log_every=training.log_every,
                    tensorboard=training.tensorboard, wait_s=training.wait_s)
        return
    base = next(iter(configs.values()))
    changes = [{k: v for k, v in c.to_dict().items() if v != getattr(base, k)}
               for c in configs.values()]
    tune_grid(store_location, base, changes, seeds, out, training.workers,
              training.gpus_per_worker, training.pack_size, log=log,
              log_every=training.log_every, tensorboard=training.tensorboard,
              verbose=training.tune_verbose, wait_s=training.wait_s)


def round_table(records: list[RoundRecord]) -> str:
    """One line per setting of a round: cv and held-out scores, pseudo-labels per class."""
    rows = [({"round": h.round, **h.setting}, h.scores) for h in records]
    text = trial_table(rows)
    for h in records:
        if h.pseudo_counts:
            per = "; ".join(f"fold {f}: {sum(c)}" for f, c in h.pseudo_counts.items())
            total = [sum(x) for x in zip(*h.pseudo_counts.values())]
            text += (f"\n  round {h.round} pseudo-labels {per} (per class, all folds: "
                     f"{total})")
    return text


def chosen(history: list[RoundRecord]) -> dict[str, RoundRecord]:
    """Per setting, the round with the best out-of-fold score (the first of equals)."""
    best: dict[str, RoundRecord] = {}
    for h in history:
        key = json.dumps(h.setting, sort_keys=True)
        if key not in best or cv_value(h.scores) > cv_value(best[key].scores):
            best[key] = h
    return best


def final_lines(out, history: list[RoundRecord]) -> str:
    lines = ["", "chosen on out-of-fold scores only (the test splits chose nothing):"]
    for h in chosen(history).values():
        setting = " ".join(f"{k}={v}" for k, v in h.setting.items()) or "the recipe"
        where = f"pseudo_round == {h.round}" + "".join(
            f" and {k} == {v}" for k, v in h.setting.items())
        lines.append(f"  {setting}: round {h.round} (cv {cv_value(h.scores):.4f})")
        lines.append(f"    mer-ray ensemble score {out} --where '{where}'")
        lines.append(f"    mer-ray predict {out} --where '{where}' --store STORE --out OUT")
    return "\n".join(lines)


def _write_summary(out, history: list[RoundRecord], rounds: int) -> None:
    best = {json.dumps(h.setting, sort_keys=True): h.round for h in chosen(history).values()}
    info = {"format": "mer-ray-selftrain/1", "rounds_asked": rounds,
            "rounds": [h.__dict__ for h in history],
            "chosen": [{"setting": json.loads(k), "round": v} for k, v in best.items()]}
    location = join(out, SUMMARY_FILE)
    with storage_errors(location):
        write_bytes(location, (json.dumps(info, indent=1) + "\n").encode())
