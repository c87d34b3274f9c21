"""Config: presets, key=value overrides and their coercion, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from agentr1_nb.config import PRESETS, Config, field_names, get_config, parse_overrides


def test_every_field_has_a_docstring():
    """cleanrl style: a docstring right under each field (checked in the source)."""
    import inspect

    import agentr1_nb.config as config_module

    src = inspect.getsource(config_module.Config)
    for name in field_names():
        after = src.split(f"\n    {name}:", 1)[1].split("\n", 2)[1].strip()
        assert after.startswith('"""'), f"field {name} has no docstring"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_and_only_use_real_fields(preset):
    cfg = get_config(preset)
    assert isinstance(cfg, Config)
    assert set(PRESETS[preset]) <= set(field_names())
    for key, value in PRESETS[preset].items():
        assert getattr(cfg, key) == value


def test_gpu_presets_use_qlora_and_fit_the_paper_shape():
    t4, a100 = get_config("colab_t4"), get_config("a100")
    assert t4.load_in_4bit and a100.load_in_4bit
    assert t4.compute_dtype == "fp16"  # a T4 has no bf16
    assert t4.gradient_checkpointing and a100.gradient_checkpointing
    assert t4.group_size == a100.group_size == 5 and t4.max_turns == 5


def test_overrides_are_coerced_to_the_field_type():
    cfg = get_config(
        "cpu_demo",
        ["group_size=8", "lr=3e-5", "kl_coef=0", "algo=rloo", "load_in_4bit=TRUE", "loss_mask=off"],
    )
    assert cfg.group_size == 8 and isinstance(cfg.group_size, int)
    assert cfg.lr == 3e-5 and isinstance(cfg.lr, float)
    assert cfg.kl_coef == 0.0 and isinstance(cfg.kl_coef, float)
    assert cfg.algo == "rloo"
    assert cfg.load_in_4bit is True and cfg.loss_mask is False


@pytest.mark.parametrize(
    "text,value", [("1", True), ("yes", True), ("On", True), ("0", False), ("no", False)]
)
def test_bool_parsing(text, value):
    assert get_config(overrides=[f"loss_mask={text}"]).loss_mask is value


def test_override_value_may_contain_equals_sign():
    assert get_config(overrides=["data_path=/x/a=b.json"]).data_path == "/x/a=b.json"


def test_dict_overrides_and_replace():
    cfg = get_config("colab_t4", {"steps": 3})
    assert cfg.steps == 3 and cfg.model == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.replace(steps=4).steps == 4 and cfg.steps == 3


def test_overrides_beat_the_preset():
    assert get_config("colab_t4", ["load_in_4bit=false"]).load_in_4bit is False


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_config("tpu_pod")
    msg = str(err.value)
    assert "tpu_pod" in msg and all(p in msg for p in PRESETS)


@pytest.mark.parametrize("overrides", [["group_sizee=4"], {"group_sizee": 4}], ids=["strings", "dict"])
def test_unknown_field_lists_the_valid_ones(overrides):
    with pytest.raises(ValueError) as err:
        get_config("cpu_demo", overrides)
    msg = str(err.value)
    assert "group_sizee" in msg and "group_size" in msg and "kl_coef" in msg


def test_unknown_field_in_replace():
    with pytest.raises(ValueError, match="unknown config field"):
        Config().replace(nope=1)


@pytest.mark.parametrize(
    "item,match",
    [
        ("group_size=four", "group_size.*int"),
        ("lr=fast", "lr.*float"),
        ("loss_mask=maybe", "loss_mask.*bool"),
        ("group_size", "not key=value"),
    ],
)
def test_bad_override_values_are_clear_errors(item, match):
    with pytest.raises(ValueError, match=match):
        parse_overrides([item])


def test_config_round_trips_through_json():
    cfg = get_config("a100", ["steps=7"])
    again = Config(**json.loads(cfg.to_json()))
    assert again == cfg
    assert dataclasses.asdict(again) == cfg.to_dict()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTR1_CACHE", str(tmp_path))
    assert Config().cache_dir == str(tmp_path)


# ----------------------------------------------------------------------------- checked when built


@pytest.mark.parametrize(
    "override,match",
    [
        ("algo=gpro", "algo='gpro' is not one of: grpo, rloo, reinforce\\+\\+"),
        ("dataset=trivia", "dataset='trivia' is not one of: generated, hotpotqa"),
        ("compute_dtype=fp8", "compute_dtype='fp8' is not one of"),
        ("save_every=0", "save_every=0 is out of range; valid: \\[1, inf\\)"),
        ("world_questions=0", "world_questions=0 is out of range"),
        ("micro_batch_size=0", "micro_batch_size=0 is out of range"),
        ("minibatch_size=0", "minibatch_size=0 is out of range"),
        ("questions_per_step=0", "questions_per_step=0 is out of range"),
        ("steps=-1", "steps=-1 is out of range"),
        ("ppo_epochs=0", "ppo_epochs=0 is out of range"),
        ("lr=inf", "lr=inf must be finite"),
        ("lr=nan", "lr=nan must be finite"),
        ("top_p=1.5", "top_p=1.5 is out of range; valid: \\(0, 1\\]"),
        ("temperature=0", "temperature=0.0 is out of range"),
        ("format_penalty=0.5", "format_penalty=0.5 is out of range"),
        ("eval_fraction=1", "eval_fraction=1.0 is out of range"),
    ],
)
def test_out_of_range_values_fail_when_the_config_is_built(override, match):
    with pytest.raises(ValueError, match=match):
        get_config("cpu_demo", [override])


def test_group_algorithms_need_a_group():
    for algo in ("grpo", "rloo", "reinforce++_baseline"):
        with pytest.raises(
            ValueError, match=re.escape(f"group_size=1 with algo='{algo}'") + ".*always be zero"
        ):
            get_config("cpu_demo", [f"algo={algo}", "group_size=1"])
    assert get_config("cpu_demo", ["algo=ppo", "group_size=1"]).group_size == 1


def test_replace_and_direct_construction_are_checked_too():
    with pytest.raises(ValueError, match="save_every=0"):
        Config().replace(save_every=0)
    with pytest.raises(ValueError, match="micro_batch_size=True must be an int"):
        Config(micro_batch_size=True)
    assert Config(lr=1).lr == 1.0 and isinstance(Config(lr=1).lr, float)


def test_every_numeric_field_has_a_range():
    from agentr1_nb.config import RANGES

    numeric = [f.name for f in dataclasses.fields(Config) if f.type in ("int", "float")]
    assert sorted(set(numeric) - set(RANGES)) == []


def test_the_name_tuples_are_the_literal_choices():
    from agentr1_nb import config

    assert config.ALGOS == ("grpo", "rloo", "reinforce++", "reinforce++_baseline", "ppo")
    assert config.PROMPT_STYLES == ("zero_shot", "few_shot")
    assert set(config.GROUP_ALGOS) < set(config.ALGOS)


# ----------------------------------------------------------------------------- numbers at the edges


@pytest.mark.parametrize(
    "override,match",
    [
        ("seed=" + "1" * 401, r"seed=1111.*\(401 characters\) is out of range; valid: \[0, 4294967296\)"),
        (f"seed={2**64}", r"seed=18446744073709551616 is out of range; valid: \[0, 4294967296\)"),
        (f"seed={2**32}", r"seed=4294967296 is out of range"),
        ("seed=-1", r"seed=-1 is out of range; valid: \[0, 4294967296\)"),
        (f"world_seed={2**32}", r"world_seed=4294967296 is out of range"),
        ("steps=" + "9" * 401, r"steps=9999.* is out of range; valid: \[0, 9223372036854775808\)"),
        ("max_turns=-" + "9" * 30, r"max_turns=-999.* is out of range"),
        ("tool_timeout_s=1e10", r"tool_timeout_s=10000000000.0 is out of range; valid: \(0, 3600\]"),
        ("steps=" + "9" * 5000, r"config field 'steps' needs an int; got '9999.*\(5002 characters\)"),
        ("lr=1e400", "lr=inf must be finite"),
    ],
)
def test_numbers_at_the_edges_name_the_field(override, match):
    """A huge int or seed is a one-line error naming the field and its range, never an OverflowError."""
    with pytest.raises(ValueError, match=match) as err:
        get_config("cpu_demo", [override])
    assert len(str(err.value)) < 200


def test_largest_valid_seed_and_timeout_are_accepted():
    cfg = get_config("cpu_demo", [f"seed={2**32 - 1}", f"world_seed={2**32 - 1}", "tool_timeout_s=3600"])
    assert cfg.seed == cfg.world_seed == 2**32 - 1 and cfg.tool_timeout_s == 3600.0


def test_huge_numbers_in_a_dict_or_direct_construction_name_the_field():
    with pytest.raises(ValueError, match=r"lr=1000.* is out of range; valid: \(0, 1\]"):
        get_config("cpu_demo", {"lr": 10**401})
    with pytest.raises(ValueError, match=r"seed=.* is out of range"):
        Config(seed=10**30)


def test_a_key_given_twice_with_two_values_is_an_error_on_the_command_line():
    with pytest.raises(ValueError, match="seed is given twice, as 1 and 2"):
        parse_overrides(["seed=1", "seed=2"], strict=True)
    assert parse_overrides(["seed=1", "seed=01"], strict=True) == {
        "seed": 1
    }  # the same value twice is harmless


def test_code_extends_a_list_of_overrides_and_the_last_value_wins():
    assert parse_overrides(["seed=1", "seed=2"]) == {"seed": 2}
    assert get_config("cpu_demo", ["data_path=a.json", "data_path=b.json"]).data_path == "b.json"
