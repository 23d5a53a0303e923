"""Shared set-up for the Ray tests: a tiny store and a fast recipe."""

from mer_ray.data.synth_files import synthesize_store
from mer_ray.train.presets import get_preset

FAST = ["epochs=2", "hidden_dim=16", "warmup=1", "early_stop_patience=none"]


def tiny_store(path):
    return str(synthesize_store(path, seed=0, scale=0.05))


def fast_config(**changes):
    fast = dict(epochs=2, hidden_dim=16, warmup=1, early_stop_patience=None)
    return get_preset("robust_v3").replace(**{**fast, **changes})


def capture_torch_trainer(monkeypatch) -> dict:
    """Replace Ray's TorchTrainer by one that records its keyword arguments and trains
    nothing, so a test sees what mer-ray hands to Train without starting Ray."""
    import pytest

    ray_torch = pytest.importorskip("ray.train.torch")
    seen: dict = {}

    class FakeTrainer:
        def __init__(self, *args, **kw):
            seen.update(kw)

        def fit(self):
            return None

    monkeypatch.setattr(ray_torch, "TorchTrainer", FakeTrainer)
    return seen


def wait_until(condition, timeout: float, what: str, detail=lambda: "") -> None:
    """Poll `condition` until it holds; fail naming `what` (and `detail()`) after
    `timeout` seconds."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s\n{detail()}")


def set_args():
    return [a for s in FAST for a in ("--set", s)]


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of every TensorBoard event file in `folder`, read back with
    tensorboardX's protobuf classes (the `tensorboard` package is not installed here): each
    TFRecord is a length, its CRC, the event, its CRC; both CRCs are checked."""
    import struct
    from pathlib import Path

    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("*tfevents*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
            body = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == \
                masked_crc32c(body)
            pos += 16 + length
            event = Event.FromString(body)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def assert_curves(run, members) -> None:
    """Every member has its TensorBoard folder, holding one point per epoch it ran."""
    from pathlib import Path

    import pytest

    run = Path(run)
    for m in members:
        curves = tensorboard_scalars(run / "tensorboard" / m.member_id)
        steps = list(range(m.epochs_run))
        for tag in ("train/loss", "train/lr", "held_out/f1", "held_out/acc", "held_out/mse",
                    "held_out/combined"):
            assert [s for s, _ in curves[tag]] == steps, (m.member_id, tag)
        f1 = [h["val_f1"] for h in m.history]
        assert [v for _, v in curves["held_out/f1"]] == pytest.approx(f1, abs=1e-6)
