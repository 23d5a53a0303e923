import subprocess
import sys


def test_import_is_light():
    code = ("import sys, mer_ray, ensembles, mer_ray.data, mer_ray.members, mer_ray.presets;"
            "bad=[m for m in ('torch','ray') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_each_command():
    for args in ([], ["data"], ["data", "synth"], ["data", "import"], ["data", "summary"],
                 ["demo"]):
        r = subprocess.run([sys.executable, "-m", "mer_ray.cli", *args, "--help"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "usage: mer-ray" in r.stdout, (args, r.stderr)
