"""Recipe files: what `mer-ray search` chose on a user's data, kept as that user's file,
and taken by train / tune / selftrain with --recipe. Bad files stop before anything
trains, naming the file and the field."""

from __future__ import annotations

import pytest
import yaml

from mer_ray.cli.main import main
from mer_ray.data.synth_files import synthesize_store
from mer_ray.runs.members import existing_member_ids, list_member_files, read_member
from mer_ray.train.recipes import read_recipe
from raytools import set_args, tiny_store


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 3-trial search with two seeds per trial on a tiny store."""
    root = tmp_path_factory.mktemp("rec")
    store = tiny_store(root / "store")
    run = root / "search"
    assert main(["search", "--store", store, "--out", str(run), "--trials", "3", "--seeds",
                 "0", "1", "--no-ray", "--pack-size", "10", "--no-tensorboard", *set_args(),
                 "--set", "n_folds=2"]) == 0
    return store, run


def test_search_writes_its_winner_as_a_recipe_file_with_its_spread(searched, capsys):
    store, run = searched
    config, info = read_recipe(str(run / "recipe.yaml"))
    chosen = info["chosen_on"]
    assert chosen["seeds"] == [0, 1] and len(chosen["per_seed"]) == 2
    assert chosen["standard_error"] is not None and chosen["within_seed_noise"] in (True, False)
    assert chosen["store_content_hash"] and info["base"] == "robust_v3"
    text = (run / "recipe.yaml").read_text()
    assert text.startswith("# chosen by `mer-ray search`")
    # the fields are only those that differ from the base, and they are the trial's
    trial = read_member(list_member_files(run)[0]).config  # any trial's member
    assert set(info["fields"]) <= set(trial)
    # training it into the search run finds its members already there (same ids)
    assert main(["train", "--recipe", str(run / "recipe.yaml"), "--store", store, "--out",
                 str(run), "--seeds", "0", "1", "--no-ray", "--no-tensorboard"]) == 0
    assert "0 to train" in capsys.readouterr().out


def test_search_says_whether_the_winner_leads_by_more_than_seed_noise(tmp_path, capsys):
    store = tiny_store(tmp_path / "store")
    assert main(["search", "--store", store, "--out", str(tmp_path / "one"), "--trials", "2",
                 "--no-ray", "--no-tensorboard", *set_args(), "--set", "n_folds=2"]) == 0
    out = capsys.readouterr().out
    assert "with one seed per trial: how much of that is seed noise is unknown" in out
    assert "--seeds 0 1 2 measures it" in out


def test_a_recipe_from_another_store_warns_naming_both(searched, tmp_path, capsys):
    store, run = searched
    other = synthesize_store(tmp_path / "other", seed=5, scale=0.05)
    assert main(["train", "--recipe", str(run / "recipe.yaml"), "--store", other, "--out",
                 str(tmp_path / "run"), "--no-ray", "--no-tensorboard", "--set",
                 "n_folds=2"]) == 0
    err = capsys.readouterr().err
    assert err.count("was chosen on store") == 1 and str(other) in err and store in err
    assert existing_member_ids(tmp_path / "run")


BAD = [
    ("fields: [", "not valid YAML"),
    ("format: mer-ray-recipe/1\nbase: robust_v3\ncolour: red\n", "unknown key(s) colour"),
    ("format: mer-ray-recipe/2\nbase: robust_v3\n", "newer mer-ray"),
    ("format: mer-ray-recipe/1\nbase: robust_v9\n", "base 'robust_v9' is not a preset"),
    ("format: mer-ray-recipe/1\nbase: robust_v3\nfields:\n  dropuot: 0.3\n",
     "field dropuot: unknown field 'dropuot'"),
    ("format: mer-ray-recipe/1\nbase: robust_v3\nfields:\n  dropout: 1.5\n",
     "field dropout: dropout=1.5: expected a probability in [0, 1)"),
    ("format: mer-ray-recipe/1\nbase: robust_v3\nfields:\n  epochs: many\n",
     "field epochs: epochs='many'"),
    ("format: mer-ray-recipe/1\nbase: robust_v3\nname: 'a b'\n", "name: preset='a b'"),
    ("- just\n- a list\n", "expected a mapping"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_recipe_files_exit_2_naming_file_and_field(searched, tmp_path, capsys, text,
                                                       message):
    store, _ = searched
    path = tmp_path / "r.yaml"
    path.write_text(text)
    run = tmp_path / "run"
    for command in ("train", "tune", "selftrain"):
        assert main([command, "--recipe", str(path), "--store", store, "--out", str(run),
                     "--no-ray"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and "Traceback" not in err, (command, err)
        assert not run.exists()


def test_preset_and_recipe_together_and_a_missing_file(searched, tmp_path, capsys):
    store, run = searched
    assert main(["train", "--preset", "robust_v3", "--recipe", str(run / "recipe.yaml"),
                 "--store", store, "--out", str(tmp_path / "x"), "--no-ray"]) == 2
    assert "--preset or --recipe, not both" in capsys.readouterr().err
    assert main(["train", "--recipe", str(tmp_path / "nope.yaml"), "--store", store,
                 "--out", str(tmp_path / "x"), "--no-ray"]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    assert main(["train", "--preset", "robust_v4", "--store", store, "--out",
                 str(tmp_path / "x"), "--no-ray"]) == 2
    assert "docs/recipes/robust_v4.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_recipe_round_trips_through_yaml(searched):
    _, run = searched
    config, info = read_recipe(str(run / "recipe.yaml"))
    assert yaml.safe_load((run / "recipe.yaml").read_text())["name"] == config.preset
