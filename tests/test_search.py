"""Beyond robust v3: the new knobs change training visibly, and the recipe search chooses
on out-of-fold scores only."""

import numpy as np
import pytest

from mer_ray.cli.main import main
from mer_ray.data.store import read_store
from mer_ray.train.result import member_id
from mer_ray.train.presets import TrainConfig, get_preset
from mer_ray.search import SPACE, best_trials, draw_settings
from raytools import set_args, tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("st") / "store")


def test_draws_are_deterministic_distinct_and_valid():
    a, b = draw_settings(12, 3), draw_settings(12, 3)
    assert a == b and a != draw_settings(12, 4)
    assert len({tuple(sorted(s.items())) for s in a}) == 12
    for s in a:
        get_preset("robust_v3").replace(**s)  # every draw passes the fields' own rules
        assert set(s) == {d.field for d in SPACE}
    two = draw_settings(3, 0, modalities=["audio", "text"])
    assert not any("video" in k for s in two for k in s)


def test_the_best_trial_is_chosen_on_oof_only():
    rows = [({"warmup": 30}, {"cv_combined": 0.20, "test2_f1": 0.55}),
            ({"warmup": 40}, {"cv_combined": 0.25, "test2_f1": 0.50}),
            # planted: the best test2 by far, a worse oof: must not be chosen
            ({"warmup": 50}, {"cv_combined": 0.10, "test2_f1": 0.90})]
    assert best_trials(rows) == [1]
    assert best_trials(rows, 2) == [1, 0]
    assert best_trials([({}, {"cv_f1": 0.3, "test_f1": 0.1}), ({}, {"cv_f1": 0.4})]) == [1]


def test_an_eight_trial_search_finishes_and_marks_what_chose(store, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--store", store, "--out", str(out), "--trials", "8", "--no-ray",
                 "--pack-size", "5", *set_args(), "--set", "epochs=2", "--set",
                 "warmup=0"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n* trial=") == 3 and "trial 8: warmup=" in text
    assert "chosen on cv (out-of-fold) only; the test columns are held out" in text
    # the same command again trains nothing (the draws come from the search seed)
    assert main(["search", "--store", store, "--out", str(out), "--trials", "8", "--no-ray",
                 "--pack-size", "5", *set_args(), "--set", "epochs=2"]) == 0
    assert "0 to train" in capsys.readouterr().out


def test_contrastive_weight_changes_training_and_the_member_id(store):
    from mer_ray.train.trainer import train_pack

    st = read_store(store)
    base = get_preset("robust_v3").replace(epochs=2, hidden_dim=16, warmup=0)
    plain = train_pack(st, base, [(0, 0)])[0]
    with_cl = train_pack(st, base.replace(contrastive_weight=0.5), [(0, 0)])[0]
    assert with_cl.config["contrastive_weight"] == 0.5
    assert with_cl.member_id != plain.member_id
    assert not np.allclose(with_cl.predictions["test1"].logits, plain.predictions["test1"].logits)
    assert with_cl.history[0]["train_loss"] > plain.history[0]["train_loss"]  # the extra term


def test_per_modality_dropout_and_noise_change_training(store):
    from mer_ray.train.trainer import train_pack

    st = read_store(store)
    base = get_preset("robust_v3").replace(epochs=2, hidden_dim=16, warmup=0)
    ref = train_pack(st, base, [(1, 0)])[0].predictions["test2"].logits
    for change in ({"modality_dropout_audio": 0.9 * 0.5}, {"feature_noise_video": 1.0}):
        got = train_pack(st, base.replace(**change), [(1, 0)])[0].predictions["test2"].logits
        assert not np.allclose(got, ref), change
    # the shorthand stays the default for every modality
    assert TrainConfig(modality_dropout=0.2).modality_dropout_of("text") == 0.2
    assert TrainConfig(modality_dropout=0.2, modality_dropout_text=0.4).modality_dropout_of(
        "text") == 0.4
    assert member_id(TrainConfig(modality_dropout_text=0.2).to_dict(), 0, 0) != \
        member_id(TrainConfig().to_dict(), 0, 0)


def test_robustness_suggestion_comes_from_features_alone(tmp_path):
    """The synthetic test2 degrades audio and video hard and text mildly (like MER-NOISE):
    the suggestion, made without any test label, drops text least."""
    from ensembles import robustness
    from mer_ray.data.synth_files import synthesize_store

    st = read_store(synthesize_store(tmp_path / "st", seed=0, scale=0.1))
    st.emotion[st.split != "train"] = 0  # labels of the test splits play no part
    shift = robustness.feature_shift(st)
    setting, why = robustness.suggest_recipe(shift)
    assert "test2" in why and "no test2 label used" in why
    assert setting["modality_dropout_text"] < min(setting["modality_dropout_audio"],
                                                  setting["modality_dropout_video"])
    get_preset("robust_v3").replace(**setting)  # a valid recipe
    assert "mer-ray tune" in "\n".join(robustness.suggestion_lines(shift))
