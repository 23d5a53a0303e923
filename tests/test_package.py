import subprocess
import sys


def test_import_is_light():
    code = ("import sys, mer_ray, ensembles, mer_ray.data, mer_ray.runs.members, mer_ray.train.presets,"
            "mer_ray.cli.main, mer_ray.bench, mer_ray.runs.run, ensembles.score, ensembles.report, ensembles.cli;"
            "bad=[m for m in ('torch','ray') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_each_command():
    for args in ([], ["data"], ["data", "synth"], ["data", "import"], ["data", "summary"],
                 ["demo"], ["train"], ["tune"], ["ensemble"], ["ensemble", "score"], ["report"],
                 ["bench"]):
        r = subprocess.run([sys.executable, "-m", "mer_ray.cli", *args, "--help"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "usage: mer-ray" in r.stdout, (args, r.stderr)


def test_cli_bad_recipe_input_exits_2_without_traceback(tmp_path):
    for args, needle in (
        (["train", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--no-ray"],
         "not a feature store"),
        (["train", "--preset", "robust_v9", "--store", "x", "--out", "r", "--no-ray"],
         "unknown preset"),
        (["tune", "--store", "x", "--out", "r", "--set", "dropout=high", "--no-ray"],
         "dropout='high'"),
        (["train", "--store", "x", "--out", "r", "--set", "dropout=1.0", "--no-ray"],
         "dropout='1.0': expected a probability in [0, 1)"),
        (["tune", "--store", "x", "--out", "r", "--grid", "n_folds=5,1", "--no-ray"],
         "n_folds='1': expected an integer in [2, 1000]"),
        (["tune", "--store", "x", "--out", "r", "--grid", "dropout", "--no-ray"],
         "expected FIELD=V1,V2"),
        (["tune", "--store", "x", "--out", "r", "--grid", "droput=0.1,0.2", "--no-ray"],
         "unknown field 'droput'"),
        (["train", "--store", "x", "--out", "r", "--pack-size", "0", "--no-ray"],
         "--pack-size 0"),
    ):
        r = subprocess.run([sys.executable, "-m", "mer_ray.cli", *args], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (
            args, r.stderr)
        assert not (tmp_path / "r").exists()
