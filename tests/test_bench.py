import argparse
import json
import subprocess
import sys
import types

import pytest
import torch

from mer_ray import bench as B
from mer_ray.model import pack as M
from mer_ray.model.shape import ModelShape, layer_shapes
from mer_ray.bench import gemm, grid_rate, member_floor, rows, runs

TINY = ModelShape((("audio", 4), ("text", 8), ("video", 2)), 3, 6, True)


def test_flop_model_matches_a_hand_count():
    shapes = layer_shapes(TINY)
    # in*out per Linear: audio 4*3+3*3+3*3 = 30, text 24+9+9 = 42, video 6+9+9 = 24,
    # fusion (3H=9 in) 27+9+9 = 45, attention 3*3 = 9, emotion 3*6 = 18, valence 3*1 = 3
    # -> 171; first layers of the modality encoders 12 + 24 + 6 = 42.
    fwd = 2 * 171  # 342
    train = fwd + 2 * 171 + 2 * (171 - 42)  # forward + weight grads + input grads = 942
    fm = member_floor.member_flops(shapes, train_rows=10, eval_rows=4, predict_rows=4 + 5 + 6 + 7,
                        epochs=2)
    assert (fm.eval_per_row, fm.train_per_row) == (fwd, train) == (342, 942)
    assert fm.train == 2 * 10 * 942
    assert fm.eval == 2 * 4 * 342
    assert fm.final == 7 * 22 * 342
    assert fm.total == 2 * (10 * 942 + 4 * 342) + 7 * 22 * 342


def test_gemm_lists_agree_with_the_flop_model():
    shapes = layer_shapes(TINY)
    fm = member_floor.member_flops(shapes, 1, 1, 1, 1)
    assert sum(g.flops for g in gemm.train_gemms(shapes, 32)) == 32 * fm.train_per_row
    assert sum(g.flops for g in gemm.eval_gemms(shapes, 5)) == 5 * fm.eval_per_row
    # the modality encoders' first layers get no input-gradient GEMM; fusion's does
    kinds = {(g.layer, g.kind) for g in gemm.train_gemms(shapes, 32)}
    assert ("text.0", "igrad") not in kinds and ("fusion.0", "igrad") in kinds


def test_parameter_count_from_layer_shapes():
    shapes = layer_shapes(TINY)
    params = M.stack([M.init_member(TINY, torch.Generator().manual_seed(0))])
    assert M.param_count(params) == sum(fi * fo + fo for _, fi, fo in shapes)


def test_gemm_rate_is_flop_weighted_harmonic():
    a, b = gemm.Gemm("a", "fwd", 10, 10, 10), gemm.Gemm("b", "fwd", 10, 10, 30)  # 2000, 6000 FLOPs
    # 2000 FLOPs in 1 s and 6000 in 1 s: 8000 FLOPs / 2 s, not the mean of 2000 and 6000
    # weighted by FLOPs (5000)
    assert gemm.gemm_rate([a, b], [1.0, 1.0]) == pytest.approx(4000)


def test_targets():
    assert rows.target_met(1.2, "<= 1.5") is True
    assert rows.target_met(1.6, "<= 1.5") is False
    assert rows.target_met(2.0, ">= 2") is True
    assert rows.target_met(None, "< 3000") is None
    assert rows.target_met(5.0, "") is None


def test_add_parser_options():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    B.add_parser(sub)
    a = p.parse_args(["bench"])
    assert (a.profile, a.device, a.json, a.func) == ("quick", "cpu", None, B.cmd_bench)
    a = p.parse_args(["bench", "--full", "--json", "x.json", "--device", "cuda"])
    assert (a.profile, a.device, a.json) == ("full", "cuda", "x.json")
    assert p.parse_args(["bench", "--only", "packs,reference"]).only == ["packs", "reference"]
    for bad in (["bench", "--quick", "--full"], ["bench", "--only", "packs,nope"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_cuda_unavailable_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "b.json"
    assert B.main(["--device", "cuda", "--json", str(out)]) == 0
    assert "CUDA is not available" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"skipped": "CUDA not available"}


def test_import_is_light():
    code = ("import sys, mer_ray.bench; "
            "print(*(m in sys.modules for m in ('torch', 'ray', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.mark.slow
def test_micro_profile_reports_every_figure(tmp_path, capsys):
    path = tmp_path / "bench.json"
    profile = B.PROFILES["micro"]
    result = B.run_bench(profile, json_path=path, workdir=tmp_path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert result["failures"] == []
    figures = result["figures"]
    k_peak = profile.peak_members
    required = [
        "store_read_s", "npy_read_s", "store_read_speedup",
        "gemm_gflops", "gemm_eval_gflops", "gemm_text_fwd_gflops", "gemm_text_wgrad_gflops",
        "member_params", "member_gflop", "member_floor_s", "member_wall_s",
        "member_efficiency_pct", "member_wall_over_floor",
        f"peak{k_peak}_rss_mb", f"peak{k_peak}_baseline_rss_mb", "grid_members_per_min",
        "ray_in_process_s", "ray_s", "ray_overhead",
    ]
    for k in profile.pack_sizes:
        required += [f"pack{k}_s", f"seq{k}_s", f"pack{k}_speedup", f"pack{k}_member_epoch_s"]
    required += ["reference_member_epoch_s", "step_adam_ms", "step_masks_ms"]
    required += [f"reference_over_pack{k}" for k in profile.reference_sizes]
    for key in required:
        assert figures[key]["value"] is not None and figures[key]["value"] > 0, key
    # a micro pack may stay under the process's import-time high-water mark
    assert figures[f"peak{k_peak}_pack_mb"]["value"] >= 0
    # both paths trained the same members to the same results
    assert "(set(a) == set(b): True)" in figures["ray_s"]["note"]
    # the reference loop and the K = 1 pack trained the same member (0, 0)
    assert figures["reference_pack_logit_diff"]["value"] < 1e-3
    assert "both: True" in figures["reference_pack_logit_diff"]["note"]
    assert figures["member_wall_over_floor"]["target"] == "<= 1.5"
    # the Ray target is judged on the demo grid only, never on a shortened one
    assert not figures["ray_overhead"]["target"] and "--full" in figures["ray_overhead"]["note"]
    m = result["machine"]
    assert m["cpu"] and m["cores"] and m["torch"] and m["torch_threads"]
    table = capsys.readouterr().out
    assert "profile micro" in table and "member measured / floor" in table
    assert "Ray / in-process time" in table and "reference / 3-pack per member-epoch" in table
    assert "Configuration for experiment" not in table  # Tune's output is not in the table


def _fake_bench(tmp_path, **profile_changes):
    import dataclasses

    profile = dataclasses.replace(B.PROFILES["micro"], **profile_changes)
    bench = runs.Bench(profile, "cpu", tmp_path)
    bench.store = lambda scale: None  # the fake trainer below needs no data
    bench.warm_up = lambda scale: None
    return bench


def test_grid_rate_measured_path(tmp_path):
    calls = []

    def fake_train(specs, config):
        calls.append((config.epochs, config.warmup, len(specs)))
        # 10 epochs of 2 s each (the first 3 s: setup), then 1 s of final predictions
        return runs.TrainRun(wall_s=22.0, epoch_s=[3.0] + [2.0] * 9, tail_s=1.0, cpu_s=40.0)

    bench = _fake_bench(tmp_path, grid_seeds=2, grid_run_epochs=10)
    bench.train = fake_train
    rows = {r.key: r for r in grid_rate.measure_grid_rate(bench)}
    assert calls == [(10, 3, 10), (10, 4, 10), (10, 5, 10)]  # warmups 30/40/50 scaled
    assert rows["grid_members_per_min_measured"].value == pytest.approx(30 / (66 / 60))
    # 100 epochs x 2 s / 10 members + 1 s / 10 members per member
    assert rows["grid_members_per_min"].value == pytest.approx(60 / (100 * 0.2 + 0.1))


def test_bench_train_times_each_run_once(tmp_path, monkeypatch):
    calls = []

    def fake_timed_train(store, config, specs, device):
        calls.append((tuple(specs), config.epochs))
        return runs.TrainRun(wall_s=1.0, epoch_s=[0.5, 0.5], tail_s=0.0, cpu_s=1.0)

    monkeypatch.setattr(runs, "timed_train", fake_timed_train)
    bench = _fake_bench(tmp_path)
    a, b = bench.config(2), bench.config(3)
    assert bench.train([(0, 0)], a) is bench.train([(0, 0)], a)
    bench.train([(0, 0)], b)
    bench.train([(0, 0), (1, 0)], a)
    assert calls == [(((0, 0),), 2), (((0, 0),), 3), (((0, 0), (1, 0)), 2)]


def test_timed_train_takes_epochs_from_on_epoch(tmp_path, monkeypatch):
    import mer_ray.train.trainer as T

    result = types.SimpleNamespace(weights={"w": 0})

    def fake_train_pack(store, config, specs, device, on_epoch):
        for epoch in range(config.epochs):
            on_epoch(T.EpochProgress(epoch, config.epochs, 0.0, [], [], [], [], "f1", 1))
        return [result]

    monkeypatch.setattr(T, "train_pack", fake_train_pack)
    run = runs.timed_train(None, _fake_bench(tmp_path).config(4), [(0, 0)], "cpu")
    assert len(run.epoch_s) == 4 and run.first is result
    assert result.weights is None  # a kept run holds predictions, not weights
    assert run.wall_s >= sum(run.epoch_s) and run.steady_epoch_s is not None


def test_grid_rate_extrapolated_from_the_largest_pack(tmp_path):
    bench = _fake_bench(tmp_path, pack_sizes=(2, 3), grid_seeds=5, grid_run_epochs=None)
    for k, pme in ((2, 0.5), (3, 0.4)):
        bench.figures[f"pack{k}_member_epoch_s"] = rows.Row("", "", pme, "s")
        bench.figures[f"_pack{k}_tail_per_member_s"] = rows.Row("", "", 0.1, "s")
    (row,) = grid_rate.measure_grid_rate(bench)
    assert row.value == pytest.approx(60 / (100 * 0.4 + 0.1))
    assert "EXTRAPOLATED" in row.note and "3-pack" in row.note
