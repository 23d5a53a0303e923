"""Recipe files: a recipe chosen on a user's own data, kept as that user's file.

The presets are the published recipes only (baseline, robust_v1/v2/v3). A recipe found
by `mer-ray search` belongs to the data it was searched on (docs/recipes.md: the best of
8 draws on one synthetic generator lost 3.6 points of cv F1 to robust_v3 on another), so
the search writes it to a file in its run, and `train`, `tune`, `search` and `selftrain`
take it with `--recipe FILE` wherever they take `--preset`:

    format: mer-ray-recipe/1
    base: robust_v3            # the preset whose values the fields change
    name: robust_v3            # the config's preset field (part of member ids; default base)
    fields:                    # only what differs from the base
      warmup: 50
      dropout: 0.25
    chosen_on:                 # what chose it (information, never read back as a setting)
      store: /data/store
      store_content_hash: 3fd2...
      objective: cv_combined
      ...

Every field goes through the same rule as `--set` (mer_ray.train.presets); an unknown key or
field, a bad value or a newer format is an InputError naming the file and the key. A
recipe chosen on another store is used with a one-line warning naming both stores.
"""

from __future__ import annotations

import yaml

from mer_ray.errors import InputError
from mer_ray.storage import read_bytes, storage_errors, write_bytes
from mer_ray.train.presets import PRESETS, RULES, check_field, field_value, get_preset

FORMAT = "mer-ray-recipe/1"
KEYS = ("format", "base", "name", "fields", "chosen_on")
RECIPE_FILE = "recipe.yaml"  # what `mer-ray search` writes into its run


def recipe_text(config, base: str, chosen_on: dict, comment: str = "") -> str:
    """The YAML of `config` as the fields that differ from preset `base`."""
    reference = get_preset(base).to_dict()
    fields = {k: v for k, v in config.to_dict().items()
              if k != "preset" and v != reference.get(k)}
    body = {"format": FORMAT, "base": base, "name": config.preset, "fields": fields,
            "chosen_on": chosen_on}
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def write_recipe(location: str, config, base: str, chosen_on: dict, comment: str = "") -> str:
    with storage_errors(location):
        write_bytes(location, recipe_text(config, base, chosen_on, comment).encode())
    return location


def read_recipe(location: str):
    """(TrainConfig, the file's dict) of a recipe file; InputError naming what is wrong."""
    try:
        with storage_errors(location, "reading"):
            raw = read_bytes(location)
    except FileNotFoundError:
        raise InputError(f"{location}: no such file", param="recipe") from None
    try:
        info = yaml.safe_load(raw.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{location}: not valid YAML ({str(e).splitlines()[0]})", param="recipe") \
            from None
    if not isinstance(info, dict):
        raise InputError(f"{location}: expected a mapping with keys "
                         f"{', '.join(KEYS)}", param="recipe")
    unknown = sorted(set(map(str, info)) - set(KEYS))
    if unknown:
        raise InputError(f"{location}: unknown key(s) {', '.join(unknown)}; a recipe "
                         f"file has {', '.join(KEYS)}", param="recipe")
    fmt = info.get("format")
    if fmt != FORMAT:
        newer = isinstance(fmt, str) and fmt.startswith("mer-ray-recipe/")
        raise InputError(f"{location}: format {fmt!r}, expected {FORMAT!r}"
                         + ("; it was written by a newer mer-ray: upgrade to read it"
                            if newer else ""), param="recipe")
    base = info.get("base")
    if base not in PRESETS:
        raise InputError(f"{location}: base {base!r} is not a preset; choose one of "
                         f"{', '.join(PRESETS)}", param="recipe")
    fields = info.get("fields") or {}
    if not isinstance(fields, dict):
        raise InputError(f"{location}: fields must be a mapping of field: value", param="recipe")
    config = PRESETS[base]
    changes = {}
    for key, value in fields.items():
        key = str(key)
        where = f"{location}: field {key}"
        try:
            if key not in RULES or key == "preset":
                field_value(key, "", where)  # the unknown-field message, naming them all
            changes[key] = (field_value(key, value, where) if isinstance(value, str)
                            else check_field(key, value))
        except InputError as e:
            raise InputError(str(e) if str(e).startswith(where) else f"{where}: {e}",
                             param="recipe") from None
    name = info.get("name", base)
    try:
        config = config.replace(**changes, preset=check_field("preset", name))
    except InputError as e:
        raise InputError(f"{location}: name: {e}", param="recipe") from None
    return config, info


def store_warning(location: str, info: dict, store_location: str, content_hash: str):
    """The one line for a recipe chosen on another store, or None."""
    chosen = (info.get("chosen_on") or {})
    known = chosen.get("store_content_hash")
    if known and known != content_hash:
        return (f"warning: --recipe {location} was chosen on store {chosen.get('store', '?')} "
                f"({str(known)[:16]}), not on {store_location} ({content_hash[:16]}): a recipe "
                "searched on one dataset may not be the best on another")
    return None
