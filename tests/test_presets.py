"""Every TrainConfig field has a rule, and the rule refuses a bad value with the field
named, in the library itself (Python API, Ray workers and CLI alike): the way
scikit-learn's check_param_validation walks every declared parameter."""

import dataclasses
import math

import pytest

from mer_ray.errors import InputError
from mer_ray.train.result import member_id
from mer_ray.train.presets import (ADDED_FIELDS, PRESETS, RULES, TrainConfig, convert_field,
                             get_preset, parse_override)

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def bad_values(name):
    """Values of the wrong kind, and values just outside the field's range."""
    rule = RULES[name]
    wrong_kind = ["3", True] if rule.kind in (int, float) else [3, True]
    if rule.kind is float:
        out_of_range = [math.inf, math.nan, -1e9, 1e9]
    elif rule.kind is int:
        out_of_range = [-(2**40), 2**40, 1.5]
    else:
        out_of_range = ["", "a name with spaces and far too many characters for any field"]
    if not rule.optional:
        out_of_range.append(None)
    return wrong_kind + [v for v in out_of_range if not _valid(name, v)]


def _valid(name, value):
    try:
        TrainConfig(**{name: value})
        return True
    except InputError:
        return False


def test_every_field_has_a_rule():
    assert set(RULES) == set(FIELDS)
    for name in FIELDS:
        assert RULES[name].wanted, name


@pytest.mark.parametrize("name", FIELDS)
def test_each_field_refuses_bad_values_naming_itself(name):
    values = bad_values(name)
    assert values, name
    for value in values:
        with pytest.raises(InputError, match=rf"^{name}=.*: expected "):
            TrainConfig(**{name: value})
        with pytest.raises(InputError, match=rf"^{name}="):
            get_preset("robust_v3").replace(**{name: value})


@pytest.mark.parametrize("name", FIELDS)
def test_each_default_and_preset_value_passes_its_own_rule(name):
    for preset in PRESETS.values():
        TrainConfig(**{name: getattr(preset, name)})


def test_command_line_values_go_through_the_same_rule():
    assert convert_field("grad_clip", "none") is None
    assert convert_field("grad_clip", "1") == 1.0 and isinstance(convert_field("grad_clip", "1"), float)
    for text, needle in (("lr=inf", "lr='inf'"), ("n_folds=1", "n_folds='1'"),
                         ("precision=fp16", "precision='fp16': expected one of fp32, tf32, bf16"),
                         ("contrastive_temperature=0", "contrastive_temperature='0'"),
                         ("modality_dropout_text=1", "modality_dropout_text='1'"),
                         ("feature_noise_audio=-1", "feature_noise_audio='-1'"),
                         ("droput=0.3", "unknown field 'droput'"), ("dropout", "FIELD=VALUE")):
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            parse_override(get_preset("robust_v3"), text)


def test_ints_given_for_floats_keep_member_ids_stable():
    a = TrainConfig(grad_clip=1, lr=1)
    b = TrainConfig(grad_clip=1.0, lr=1.0)
    assert member_id(a.to_dict(), 0, 0) == member_id(b.to_dict(), 0, 0)


def test_new_fields_at_their_defaults_leave_member_ids_as_they_were():
    v3 = get_preset("robust_v3")
    old = {k: v for k, v in v3.to_dict().items() if k not in ADDED_FIELDS}
    assert member_id(v3.to_dict(), 1, 2) == member_id(old, 1, 2)
    assert member_id(v3.replace(contrastive_weight=0.1).to_dict(), 1, 2) != \
        member_id(v3.to_dict(), 1, 2)


def test_robust_v4_is_a_recipe_file_of_the_searched_trial_it_documents():
    """robust_v4, no longer a preset, is the recipe file docs/recipes/robust_v4.yaml: trial 3
    of `mer-ray search --trials 8` (search seed 0) on MER2023's modalities, as
    docs/recipes.md measured it, with the member ids its runs were trained with (so they
    resume); `--preset robust_v4` says where it went."""
    from pathlib import Path

    from mer_ray.errors import InputError
    from mer_ray.train.recipes import read_recipe
    from mer_ray.search import draw_settings

    trial3 = draw_settings(8, 0, modalities=("audio", "text", "video"))[2]
    v3_with_trial3 = get_preset("robust_v3").replace(preset="robust_v4", **trial3)
    recipe, _ = read_recipe(str(Path(__file__).parents[1] / "docs/recipes/robust_v4.yaml"))
    assert recipe.to_dict() == v3_with_trial3.to_dict()
    assert member_id(recipe.to_dict(), 0, 0) == "robust_v4-w50-f0-s0-76c3490acf8c"
    with pytest.raises(InputError, match="no longer a preset.*docs/recipes/robust_v4.yaml"):
        get_preset("robust_v4")
    assert member_id(get_preset("robust_v3").to_dict(), 2, 1) == "robust_v3-w30-f2-s1-b7e82581dfd9"
