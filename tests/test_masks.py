"""The counter-based generator behind every member's dropout, modality-dropout and noise."""

import random

import pytest
import torch

from mer_ray.train.masks import PackRandom, dropout_threshold, hash32, member_key

WIDTHS = [64, 96, 32, 48]


def reference_hash(x: int) -> int:
    """lowbias32 in plain Python uint32 arithmetic."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_matches_plain_uint32_arithmetic():
    rng = random.Random(0)
    values = [rng.getrandbits(32) for _ in range(20000)] + [0, 1, 2**31 - 1, 2**31, 2**32 - 1]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    got = [h & 0xFFFFFFFF for h in hash32(signed).tolist()]
    assert got == [reference_hash(v) for v in values]


def pack(keys, batch=16):
    r = PackRandom(keys, batch, WIDTHS, "cpu")
    r.start_epoch(3)
    return r


def test_dropout_rate_scale_and_shapes():
    keys = [member_key(0, f) for f in range(3)]
    masks = pack(keys, batch=256).dropout_masks(7, 0.35)
    assert [tuple(m.shape) for m in masks] == [(3, 256, w) for w in WIDTHS]
    thr, scale = dropout_threshold(0.35)
    for m in masks:
        assert torch.all((m == 0) | (m == scale))
    dropped = torch.cat([(m == 0).float().flatten() for m in masks]).mean().item()
    assert abs(dropped - 0.35) < 0.01, dropped
    assert not torch.equal(masks[1][0], masks[1][1])  # members differ


def test_a_members_draws_do_not_depend_on_its_pack():
    keys = [member_key(s, f) for s, f in [(0, 0), (2, 3), (1, 4)]]
    big = pack(keys)
    alone = pack([keys[1]])
    for step in (0, 5):
        a = big.dropout_masks(step, 0.3)
        b = alone.dropout_masks(step, 0.3)
        for x, y in zip(a, b):
            assert torch.equal(x[1], y[0])
        assert torch.equal(big.modality_mask(step, [0.2, 0.4, 0.1])[1],
                           alone.modality_mask(step, [0.2, 0.4, 0.1])[0])
        assert torch.equal(big.normal(step, 1, (4, 8))[1], alone.normal(step, 1, (4, 8))[0])
    # members leaving the pack do not shift the others' streams
    big.select(torch.tensor([1, 2]))
    assert torch.equal(big.dropout_masks(9, 0.3)[0][0], alone.dropout_masks(9, 0.3)[0][0])


def test_draws_change_with_step_epoch_and_stream():
    r = pack([member_key(0, 0)])
    a = r.dropout_masks(1, 0.5)[0].clone()
    assert not torch.equal(a, r.dropout_masks(2, 0.5)[0])
    r.start_epoch(4)
    assert not torch.equal(a, r.dropout_masks(1, 0.5)[0])
    assert not torch.equal(r.normal(1, 0, (8, 8)), r.normal(1, 1, (8, 8)))


def test_modality_mask_rates_and_never_all_dropped():
    r = pack([member_key(0, f) for f in range(4)], batch=5000)
    probs = [0.1, 0.5, 0.3]
    mask = r.modality_mask(2, probs)
    assert mask.shape == (4, 5000, 3)
    assert (mask.sum(-1) >= 1).all()
    rate = 1 - mask.mean((0, 1))
    # where all three fall (1.5 %) one is kept again, so rates sit just under p
    for got, p in zip(rate.tolist(), probs):
        assert p - 0.02 < got < p + 0.01, rate


def test_normal_draws_are_standard():
    z = pack([member_key(0, 0)]).normal(0, 0, (200, 500))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


@pytest.mark.parametrize("p", [0.0, 0.5, 0.999])
def test_dropout_threshold(p):
    thr, scale = dropout_threshold(p)
    assert -32768 <= thr <= 32767 and scale >= 1
    with pytest.raises(ValueError):
        dropout_threshold(1.0)
