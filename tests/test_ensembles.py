import csv
import json
import numpy as np
import pyarrow.parquet as pq
import pytest

from mer_ray.data.constants import MER2023, MER_CLASSES as CLASSES, MODALITIES
from mer_ray.errors import InputError
from mer_ray.runs.members import write_member
from mer_ray.train.result import MASKS, MemberResult, SplitPredictions, mask_key, member_id
from mer_ray.train.presets import PRESETS
from ensembles.groups import make_groups, score_group, seed_table
from ensembles.load import load_members
from ensembles.score import evaluate, format_evaluation
from ensembles.strategies import combine, softmax
from ensembles.where import filter_members

CLASSES = list(CLASSES)
PRED_SPLITS = ("oof",) + MER2023.test_splits
TRAIN = [f"tr_{i:03d}" for i in range(60)]
TESTS = {s: [f"{s}_{i:02d}" for i in range(18)] for s in ("test1", "test2", "test3")}
_rng = np.random.default_rng(7)
LABELS = {n: int(_rng.integers(0, 6)) for names in [TRAIN, *TESTS.values()] for n in names}
VALENCE = {n: float(_rng.normal()) for names in [TRAIN, *TESTS.values()] for n in names}


def config(warmup=30, **kw):
    return PRESETS["robust_v3"].replace(warmup=warmup, **kw).to_dict()


def split_preds(split, names, logits, valence):
    names = np.asarray(names)
    label = np.array([LABELS.get(n, 0) for n in names], np.int64)
    vl = np.array([np.nan if split == "test3" else VALENCE.get(n, 0.0) for n in names],
                  np.float32)
    logits = np.asarray(logits, np.float32)
    valence = np.asarray(valence, np.float32)
    return SplitPredictions(
        names=names, logits=logits, valence=valence, label=label, valence_label=vl,
        masked={mask_key(m): (logits * (0.2 + 0.1 * i), valence) for i, m in enumerate(MASKS)})


def result(cfg, fold, seed, preds, classes=CLASSES, content_hash="hash-a"):
    return MemberResult(member_id=member_id(cfg, fold, seed), config=cfg, fold=fold, seed=seed,
                        best_epoch=1, epochs_run=2, metrics={}, history=[], classes=classes,
                        store={"content_hash": content_hash, "modalities": {}},
                        predictions=preds)


def fake_member(cfg, fold, seed, quality=1.0, shuffle_tests=False, **kw):
    """Fold `fold` holds train samples i with i % n_folds == fold. Logits: noise plus
    `quality` on the true class; valence: the label plus noise shrinking with quality."""
    rng = np.random.default_rng([fold, seed, cfg["warmup"], int(quality * 100)])
    preds = {}
    for split in PRED_SPLITS:
        if split == "oof":
            names = [n for i, n in enumerate(TRAIN) if i % cfg["n_folds"] == fold]
        else:
            names = list(TESTS[split])
            if shuffle_tests:
                names = list(rng.permutation(names))
        y = np.array([LABELS[n] for n in names])
        logits = rng.normal(size=(len(names), 6))
        logits[np.arange(len(names)), y] += quality
        valence = np.array([VALENCE[n] for n in names]) + rng.normal(size=len(names)) / quality
        preds[split] = split_preds(split, names, logits, valence)
    return result(cfg, fold, seed, preds, **kw)


def write_run(run, warmups=(30, 40), seeds=(0, 1), folds=range(5), quality=1.0):
    for w in warmups:
        for s in seeds:
            for f in folds:
                write_member(fake_member(config(w), f, s, quality), run)
    return str(run)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("ens") / "run")


def cli(argv, capsys):
    """`mer-ray ...` in this process."""
    from mer_ray.cli.main import main

    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- protocol -------------------------------------------------------------------------

def test_fold_average_hand_values():
    cfg = config(n_folds=2)
    e = np.eye(6)

    def member(fold, seed, t1_names, t1_logits, t1_val, oof_name, oof_logits):
        preds = {"oof": split_preds("oof", [oof_name], [oof_logits], [0.5])}
        for s in ("test1", "test2", "test3"):
            preds[s] = split_preds(s, t1_names, t1_logits, t1_val)
        return result(cfg, fold, seed, preds)

    # fold 1 lists the test samples in the other order: averaging must align by name.
    members = [member(0, 0, ["a", "b"], [1 * e[0], 2 * e[1]], [1.0, 2.0], "t1", 5 * e[3]),
               member(1, 0, ["b", "a"], [4 * e[2], 3 * e[0]], [4.0, 3.0], "t0", 6 * e[4])]
    (g,) = make_groups(members)
    p = g.predictions["test1"]
    assert list(p.names) == ["a", "b"]
    np.testing.assert_allclose(p.logits, [2 * e[0], e[1] + 2 * e[2]])
    np.testing.assert_allclose(p.valence, [2.0, 3.0])
    oof = g.predictions["oof"]
    assert list(oof.names) == ["t0", "t1"]  # concatenation, one row per sample, by name
    np.testing.assert_allclose(oof.logits, [6 * e[4], 5 * e[3]])
    assert g.warnings == []

    # a second seed with known logits: mean and prob strategies by hand
    other = [member(0, 1, ["a", "b"], [3 * e[0], 0 * e[1]], [0.0, 0.0], "t1", e[3]),
             member(1, 1, ["a", "b"], [1 * e[0], 2 * e[5]], [2.0, 1.0], "t0", e[4])]
    groups = make_groups(members + other)
    assert [gr.seed for gr in groups] == [0, 1]
    mean = combine(groups, "mean")
    second = np.array([2 * e[0], e[5]])
    np.testing.assert_allclose(mean.predictions["test1"].logits,
                               (np.array([2 * e[0], e[1] + 2 * e[2]]) + second) / 2)
    np.testing.assert_allclose(mean.predictions["test1"].valence,
                               [(2.0 + 1.0) / 2, (3.0 + 0.5) / 2])
    prob = combine(groups, "prob")
    expected = np.log((softmax([2 * e[0], e[1] + 2 * e[2]]) + softmax(second)) / 2)
    np.testing.assert_allclose(prob.predictions["test1"].logits, expected, rtol=1e-6)
    np.testing.assert_allclose(mean.weights, [0.5, 0.5])


def test_group_reproduces_mertools_fold_average(tmp_path):
    cfg = config(30)
    members = [fake_member(cfg, f, 3, shuffle_tests=(f == 2)) for f in range(5)]
    for m in members:
        write_member(m, tmp_path / "run")
    loaded = load_members(tmp_path / "run")
    (g,) = make_groups(loaded)
    assert g.folds == [0, 1, 2, 3, 4] and g.warnings == []
    for split in ("test1", "test2", "test3"):
        ref = members[0].predictions[split].names
        stack = []
        for m in members:
            p = m.predictions[split]
            order = [list(p.names).index(n) for n in ref]
            stack.append(p.logits[order])
        np.testing.assert_array_equal(g.predictions[split].names, ref)
        expected = np.mean(stack, axis=0, dtype=np.float64)  # MERTools: mean of 5 folds
        np.testing.assert_allclose(g.predictions[split].logits, expected, rtol=1e-12)
    oof = g.predictions["oof"]
    assert list(oof.names) == sorted(TRAIN)  # every train sample exactly once
    for m in members:
        p = m.predictions["oof"]
        rows = np.searchsorted(oof.names, p.names)
        np.testing.assert_allclose(oof.logits[rows], p.logits)
        np.testing.assert_allclose(oof.valence[rows], p.valence)
    s = score_group(g)
    assert set(s) == {"cv", "test1", "test2", "test3"}
    assert "mse" in s["test1"] and "mse" not in s["test3"] and "combined" in s["cv"]


def test_seed_table_and_incomplete_group(run):
    members = load_members(run)
    text = seed_table(members)
    assert text.count("cv ") == 4 and "robust_v3 warmup=40 seed=1" in text
    row3 = next(line for line in text.splitlines() if line.startswith("test3"))
    assert len(row3.split()) == 3  # test3: F1 and acc only
    partial = [m for m in members if m.config["warmup"] == 30 and m.seed == 0 and m.fold < 3]
    (g,) = make_groups(partial)
    assert g.warnings and "3 of 5 folds" in g.warnings[0]
    # which members are missing, what cv covers, how to train them
    assert "member(s) f3s0 f4s0 missing" in g.warnings[0] and "about 60 % of train" in g.warnings[0]
    assert "trains only the missing members" in g.warnings[0]
    assert format_evaluation(evaluate(partial, "mean")).startswith(f"warning: {g.warnings[0]}")
    assert len(g.predictions["oof"].names) == 36  # the held-out samples of folds 0-2
    assert "warning:" in seed_table(partial)


def test_greedy_and_weighted_pick_the_good_group():
    members = [fake_member(config(30), f, s, quality=0.4) for s in (0, 1, 2) for f in range(5)]
    members += [fake_member(config(40), f, 0, quality=4.0) for f in range(5)]
    groups = make_groups(members)
    good = next(i for i, g in enumerate(groups) if g.warmup == 40)
    greedy = combine(groups, "greedy")
    weighted = combine(groups, "weighted")
    mean = combine(groups, "mean")
    assert int(np.argmax(greedy.weights)) == good and greedy.weights[good] >= 0.5
    assert int(np.argmax(weighted.weights)) == good
    for e in (greedy, weighted):
        assert np.all(e.weights >= 0) and abs(e.weights.sum() - 1) < 1e-9
        assert any("optimistic" in n for n in e.notes)
    from ensembles.tables import score_splits

    g_cv = score_splits(greedy.predictions, MER2023)["cv"]["combined"]
    m_cv = score_splits(mean.predictions, MER2023)["cv"]["combined"]
    assert g_cv >= m_cv
    assert combine(groups, "greedy").weights.tolist() == greedy.weights.tolist()  # deterministic


# --- where ------------------------------------------------------------------------------

def test_where_on_an_unknown_field_lists_the_fields(run, tmp_path, capsys):
    rc, _, err = cli(["ensemble", "score", run, "--where", "contrastive_wieght > 0",
                      "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "unknown field 'contrastive_wieght'" in err and "warmup" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, _, err = cli(["ensemble", "score", a_file, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "is a file, not a run folder" in err
    assert not (tmp_path / "o").exists()


def test_where_filter(run):
    members = load_members(run)
    assert len(filter_members(members, "warmup in (30,40,50)")) == 20
    kept = filter_members(members, "preset == robust_v3 and seed != 1 and warmup == 40")
    assert len(kept) == 5 and {(m.seed, m.config["warmup"]) for m in kept} == {(0, 40)}
    assert {m.fold for m in filter_members(members, "fold >= 3")} == {3, 4}
    assert len(filter_members(members, "warmup not in (30) and lr == 5e-4")) == 10
    assert len(filter_members(members, "preset == 'robust_v3'")) == 20
    with pytest.raises(InputError, match="unknown field 'wramup'"):
        filter_members(members, "wramup == 30")
    for bad in ("warmup in 30", "seed = 1", "seed == 1 or fold == 2", "warmup ==",
                "__import__('os')", "preset < robust"):
        with pytest.raises(InputError, match="^where "):
            filter_members(members, bad)
    with pytest.raises(InputError, match="keeps none"):
        load_members(run, "seed == 9")


# --- CLI: score ---------------------------------------------------------------------------

def test_score_cli_outputs(run, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text, err = cli(["ensemble", "score", run, "--out", out], capsys)
    assert rc == 0, err
    for title in ("ensemble (mean, 4 group(s) of 20 member(s))", "best single group",
                  "warmup 30", "warmup 40"):
        assert title in text
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.parquet", "scores.json", "submission_test1.csv", "submission_test2.csv",
        "submission_test3.csv"]
    for split, names in TESTS.items():
        with open(out / f"submission_{split}.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["name", "discrete", "valence"]
        assert sorted(r[0] for r in rows[1:]) == sorted(names)  # each sample exactly once
        assert all(r[1] in CLASSES for r in rows[1:])
        assert all(np.isfinite(float(r[2])) for r in rows[1:])
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n_members"] == 20 and len(scores["groups"]) == 4
    assert set(scores["ensemble"]["scores"]) == {"cv", "test1", "test2", "test3"}
    assert set(scores["warmups"]) == {"30", "40"}
    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == len(TRAIN) + sum(map(len, TESTS.values()))
    probs = np.array(table["probabilities"].to_pylist())
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert set(table["predicted_class"].to_pylist()) <= set(CLASSES)

    rc, text, err = cli(["ensemble", "score", run, "--out", out, "--strategy", "greedy",
                         "--where", "warmup == 30"], capsys)
    assert rc == 0, err
    assert "greedy weights" in text
    assert json.loads((out / "scores.json").read_text())["n_members"] == 10

    rc, _, err = cli(["ensemble", "score", run, run], capsys)  # several runs need --out
    assert rc == 2 and "--out" in err


def _bad_member(kind, run_dir):
    good = write_run(run_dir, warmups=(30,), seeds=(0,), folds=range(2))
    cfg = config(30)
    if kind == "empty":
        (run_dir / "members").mkdir(parents=True, exist_ok=True)
        for p in (run_dir / "members").iterdir():
            p.unlink()
        return str(run_dir)
    if kind == "classes":
        return write_member(fake_member(cfg, 2, 0, classes=CLASSES[::-1]), good)
    if kind == "hash":
        return write_member(fake_member(cfg, 2, 0, content_hash="hash-b"), good)
    if kind == "missing_split":
        m = fake_member(cfg, 2, 0)
        p = m.predictions["test2"]
        m.predictions["test2"] = SplitPredictions(
            names=p.names[:0], logits=p.logits[:0], valence=p.valence[:0], label=p.label[:0],
            valence_label=p.valence_label[:0], masked={k: (a[:0], b[:0]) for k, (a, b) in
                                                       p.masked.items()})
        return write_member(m, good)
    if kind == "corrupt":
        path = run_dir / "members" / "garbage.parquet"
        path.write_bytes(b"this is not parquet" * 50)
        return str(path)
    if kind == "nan":  # scoring never sees NaN: the member is named instead
        m = fake_member(cfg, 2, 0)
        m.predictions["test1"].logits[3, 2] = np.nan
        return write_member(m, good)
    if kind == "other_dataset":
        m = fake_member(cfg, 2, 0)
        m.dataset = MER2023.restricted_to(["test1", "test2", "test3"]).to_dict() | {"name": "X"}
        return write_member(m, good)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "classes", "hash", "missing_split", "corrupt", "nan",
                                  "other_dataset"])
def test_score_refusals(kind, tmp_path, capsys):
    run_dir = tmp_path / "run"
    culprit = _bad_member(kind, run_dir)
    out = tmp_path / "out"
    rc, text, err = cli(["ensemble", "score", run_dir, "--out", out], capsys)
    assert rc == 2, (text, err)
    assert err.startswith("mer-ray: error:") and culprit in err and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left
    rc, _, err = cli(["ensemble", "score", run_dir], capsys)  # default --out: RUN/ensemble
    assert rc == 2 and not (run_dir / "ensemble").exists()
    with pytest.raises(InputError, match=culprit):
        load_members(run_dir)


# --- report ---------------------------------------------------------------------------------

def _store_for(where, seed=0):
    """A tiny feature store over the fake samples, test2's features shifted."""
    from mer_ray.data.store import read_store, write_store

    rng = np.random.default_rng(seed)
    names = TRAIN + [n for s in TESTS.values() for n in s]
    split = ["train"] * len(TRAIN) + [s for s, ns in TESTS.items() for _ in ns]
    feats = {m: rng.normal(size=(len(names), d)).astype(np.float32)
             for m, d in zip(MODALITIES, (12, 20, 8))}
    is2 = np.array(split) == "test2"
    for m in MODALITIES:
        feats[m][is2] = feats[m][is2] * 3 + 2
    path = write_store(where / "store", names, split, [LABELS[n] for n in names],
                       [np.nan if s == "test3" else VALENCE[n] for n, s in zip(names, split)],
                       feats, {m: m for m in MODALITIES}, source="test")
    return read_store(path)


def test_report(tmp_path, capsys):
    from matplotlib.image import imread

    run_dir = tmp_path / "run"
    store = _store_for(tmp_path)
    for w in (30, 40):
        for s in (0, 1):
            for f in range(5):
                write_member(fake_member(config(w), f, s, content_hash=store.content_hash),
                             run_dir)
    (run_dir / "run.json").write_text(json.dumps({"store": str(tmp_path / "store")}))
    rc, text, err = cli(["report", run_dir], capsys)
    assert rc == 0, err
    assert "audio+text masked" in text and "feature shift from train" in text
    out = run_dir / "report"
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["confusion.png", "ensemble_size.png", "per_class_f1.png",
                                      "robustness.png", "warmup_f1.png"]
    for p in pngs:
        assert p.stat().st_size > 5000, p
        assert imread(p).std() > 0, p
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and 'src="confusion.png"' not in page
    assert "domain AUC" in page and "text+video masked" in page

    from ensembles.robustness import feature_shift
    shift = feature_shift(store)
    for m in MODALITIES:  # test2 was moved and spread out, test1 was not
        assert shift[m]["test2"]["mean_shift"] > 5 * shift[m]["test1"]["mean_shift"]
        assert shift[m]["test2"]["domain_auc"] > 0.9
        assert shift[m]["test2"]["spread_ratio"] > 2

    # no store anywhere: the shift part is skipped with a note
    from ensembles.report import load_store_for

    (run_dir / "run.json").unlink()
    st, note = load_store_for(str(run_dir), None, store.content_hash)
    assert st is None and "feature shift skipped" in note
    # a --store that is not the members' store is refused
    other = tmp_path / "other"
    _store_for(other, seed=1)
    rc, _, err = cli(["report", run_dir, "--store", other / "store", "--out", tmp_path / "r3"],
                     capsys)
    assert rc == 2 and "content hash" in err and not (tmp_path / "r3").exists()



def test_greedy_never_ends_below_the_uniform_mean_on_its_own_objective():
    """One group clearly best alone, eight weaker ones with independent errors: adding any
    single weak group to the best one hurts (signal to noise (1 + .4) / sqrt(2) < 1),
    the mean of all nine helps ((1 + 8 x .4) / 3 > 1). A climb started from the best
    group alone stops there, below the uniform mean on the very oof objective it
    climbs (as on the demo: 1 of 9 groups, cv F1 .6828 against the mean's .6990);
    greedy must end at least as high as the mean there."""
    from ensembles.tables import score_splits

    members = [fake_member(config(w), f, s, quality=1.0 if (w, s) == (40, 0) else 0.4)
               for w in (30, 40, 50) for s in (0, 1, 2) for f in range(5)]
    groups = make_groups(members)
    cv = {strategy: score_splits(combine(groups, strategy).predictions, MER2023)["cv"]
          for strategy in ("greedy", "mean")}
    best_alone = max(score_splits(g.predictions, MER2023)["cv"]["combined"] for g in groups)
    assert cv["mean"]["combined"] > best_alone  # the case described above
    assert cv["greedy"]["combined"] >= cv["mean"]["combined"] - 1e-12
    assert sum(w > 0 for w in combine(groups, "greedy").weights) > 1
