"""benchmarks/gpu.py runs here as `--cpu --tiny --ray`, so the script a GPU session runs
unchanged on its first GPU cannot rot: every figure is there, none failed, the JSON and
the markdown table agree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
FIGURE_KEYS = {"pack_member_epoch_ms", "single_member_epoch_ms", "pack_speedup",
               "reference_epoch_ms", "fp32_member_epoch_ms", "tf32_member_epoch_ms",
               "bf16_member_epoch_ms", "memory75_gb", "grid_s", "grid_members_per_min",
               "pytest", "ray_ratio"}
TIMINGS = {"pack_member_epoch_ms", "single_member_epoch_ms", "fp32_member_epoch_ms",
           "tf32_member_epoch_ms", "bf16_member_epoch_ms", "grid_s"}


@pytest.mark.slow
def test_tiny_cpu_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--ray",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "gpu-bench.json").read_text())
    table = (out / "gpu-bench.md").read_text()

    assert report["schema"] == "mer-ray gpu-bench 1"
    assert {"profile", "machine", "total_s", "targets", "rows", "details"} <= set(report)
    assert report["profile"]["name"] == "tiny" and report["machine"]["device"] == "cpu"
    assert set(report["targets"]) == {"grid_s", "ray_ratio", "pack_speedup", "memory75_gb"}
    rows = {r["key"]: r for r in report["rows"]}
    assert FIGURE_KEYS <= set(rows), sorted(FIGURE_KEYS - set(rows))
    failed = [r for r in report["rows"] if "FAILED" in r["note"]
              or ("skipped: " in r["note"] and r["key"] != "ray_ratio")]
    assert not failed, failed
    for key in TIMINGS:
        assert rows[key]["value"] > 0, rows[key]
    # targets are shown, but judged on CUDA at full scale only
    assert rows["grid_s"]["target"] == "<= 20" and rows["pack_speedup"]["target"] == ">= 25"
    assert all(r["met"] is None for r in report["rows"])

    grid = report["details"]["grid"]["packs"]
    assert [p["warmup"] for p in grid] == [0, 1, 2] and all(p["members"] == 5 for p in grid)
    precision = report["details"]["precision"]
    assert precision["fp32"]["test1_logits_rel_to_fp32"] == 0
    assert precision["tf32"]["test1_logits_rel_to_fp32"] == 0  # the same on a CPU
    assert 0 < precision["bf16"]["test1_logits_rel_to_fp32"] < 0.05
    assert rows["memory75_gb"]["value"] is None and "CUDA only" in rows["memory75_gb"]["note"]
    pytest_run = report["details"]["pytest"]
    assert pytest_run["returncode"] == 0 and "--device cpu" in pytest_run["command"]
    assert "passed" in rows["pytest"]["value"] and "skipped" in rows["pytest"]["value"]
    try:
        import ray  # noqa: F401
    except ImportError:
        ray_row = rows["ray_ratio"]
        assert ray_row["value"] is None and "not importable" in ray_row["note"]
    else:
        assert rows["ray_ratio"]["value"] > 0 and report["details"]["ray"]["same_members"]

    # the markdown table: one line per figure, in the JSON's order, and printed last
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| figure | value | unit | target | met | note |")
    labels = [line.split(" | ")[0][2:] for line in lines[1:]]
    assert labels == [r["label"] for r in report["rows"]]
    assert done.stdout.strip().endswith(table.strip().splitlines()[-1])
