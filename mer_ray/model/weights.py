"""A member's best-epoch weights: `RUN/members/<member_id>.safetensors`.

safetensors holds tensors and a str -> str header, nothing executable (no pickle), and
loads anywhere. The tensors are the reference module's `state_dict`
(mer_ray.model.module.AttentionModel), so a saved member loads straight into it; the
header key `mer_ray` holds JSON with what rebuilds the model without the store:
member id, config, model shape (dims, hidden, classes, valence head), the feature
name and dim per modality, the class names in order, the dataset description, the
store's content hash and the format version.

The weights file is written before the member's Parquet file, which stays the "done"
marker: a member is complete only when both exist, and the Parquet file records the
weights' SHA-256, so a reader never pairs predictions with other weights.
"""

from __future__ import annotations

import hashlib
import json

from mer_ray.errors import InputError
from mer_ray.model.shape import FUSION, ModelShape, layer_shapes
from mer_ray.storage import read_bytes, storage_errors, write_bytes

FORMAT = "mer-ray-weights/1"
META_KEY = "mer_ray"
SUFFIX = ".safetensors"


# ---------------------------------------------------------------- pack <-> state_dict
def _module_name(pack_name: str) -> str:
    """'audio.0' -> 'encoders.audio.layers.0', 'fusion.1' -> 'fusion.layers.1',
    'emotion' -> 'emotion'."""
    head, _, index = pack_name.rpartition(".")
    if not head:
        return pack_name
    return f"{FUSION}.layers.{index}" if head == FUSION else f"encoders.{head}.layers.{index}"


def to_state_dict(member: dict) -> dict:
    """One member's pack weights ('audio.0.W' [in, out], 'audio.0.b' [1, out]) as the
    module's state_dict ('encoders.audio.layers.0.weight' [out, in], '.bias' [out])."""
    out = {}
    for name, value in member.items():
        layer, kind = name.rsplit(".", 1)
        if kind == "W":
            out[f"{_module_name(layer)}.weight"] = value.detach().t().contiguous()
        else:
            out[f"{_module_name(layer)}.bias"] = value.detach().reshape(-1).clone()
    return out


def from_state_dict(state: dict, shape: ModelShape) -> dict:
    """The inverse of to_state_dict, in model.layer_shapes order."""
    out = {}
    for layer, _, fan_out in layer_shapes(shape):
        module = _module_name(layer)
        out[f"{layer}.W"] = state[f"{module}.weight"].t().contiguous()
        out[f"{layer}.b"] = state[f"{module}.bias"].reshape(1, fan_out).clone()
    return out


def weights_bytes(member_weights: dict, meta: dict) -> bytes:
    """Pack-layout weights of one member -> safetensors bytes (state_dict layout)."""
    from safetensors.torch import save  # loads torch: only where weights are written

    state = {k: v.detach().float().cpu().contiguous() for k, v in
             to_state_dict(member_weights).items()}
    return save(state, metadata={META_KEY: json.dumps({"format": FORMAT, **meta})})


def write_weights(location: str, data: bytes) -> str:
    """Write (atomically) and return the SHA-256 the member file records."""
    with storage_errors(location):
        write_bytes(location, data)
    return hashlib.sha256(data).hexdigest()


def read_weights(location: str, expected_sha256: str | None = None) -> tuple[dict, dict]:
    """(state_dict, meta) of a weights file; a missing, damaged or mismatched file is an
    InputError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        with storage_errors(location, "reading"):
            data = read_bytes(location)
    except FileNotFoundError:
        raise InputError(f"{location}: weights file missing; this member predates kept "
                         "weights or its run was damaged: retrain it (delete its .parquet "
                         "and run the same training command)") from None
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise InputError(f"{location}: these weights are not the ones the member file "
                         "records (SHA-256 differs); retrain that member")
    try:
        state = load(data)
        # the header's metadata: an 8-byte length, then JSON (the safetensors format)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{location}: not a readable mer-ray weights file ({e}); retrain "
                         "that member") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{location}: weights format {meta.get('format')!r}, expected "
                         f"{FORMAT!r}")
    return state, meta
