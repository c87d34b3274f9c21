"""The one experiment pipeline: its report (keys, kinds, intervals, no NaN), the same report.json from
`demo`, `train --backend trl` and `compare`, and the run folders and adapter configs it refuses."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY_RUN, tiny_lora_policy

from agentr1_nb import compare as cmp
from agentr1_nb import experiment, runs, trl_backend
from agentr1_nb.config import get_config
from agentr1_nb.env import build_task
from agentr1_nb.evaluate import bootstrap_ci

TINY = TINY_RUN + ["minibatch_size=4", "micro_batch_size=2", "eval_questions=2", "eval_batch_size=2"]


def _cfg(*extra):
    return get_config("cpu_demo", TINY + list(extra))


def _rec(kind, em, searches=1):
    return {"kind": kind, "em": em, "searches": searches}


# ----------------------------------------------------------------------------- the report


def test_report_keys_are_the_documented_headline():
    assert experiment.REPORT_KEYS == (
        *("backend", "em_before", "em_before_ci95", "em_after", "em_after_ci95", "n_by_kind"),
        *("em_by_kind_before", "em_by_kind_before_ci95", "em_by_kind_after", "em_by_kind_after_ci95"),
        *("multihop_em_before", "multihop_em_before_ci95", "multihop_em_after", "multihop_em_after_ci95"),
        *(
            "multihop_n",
            "answers_by_kind_before",
            "answers_by_kind_after",
            "mean_searches_before",
            "mean_searches_after",
            "reward_first",
            "reward_last",
        ),
        *("steps", "seconds_per_step", "peak_rss_mb", "minutes", "phase_minutes", "phase_peak_rss_mb"),
        *("seed", "use_process_reward"),
    )
    assert not set(experiment.REPORT_KEYS) & set(experiment.DETAIL_KEYS)


def test_build_report_counts_and_intervals_by_kind():
    cfg = get_config("cpu_demo")
    before = [_rec("single", 1), _rec("single", 0), _rec("bridge", 0, 2), _rec("3hop", 0, 3)]
    after = [_rec("single", 1), _rec("single", 1), _rec("bridge", 1, 2), _rec("3hop", 0, 2)]
    history = [{"reward": r, "step_s": 2.0} for r in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    rep = experiment.build_report(cfg, history, before, after, minutes=1.234, phases={"train": 60.0})
    assert tuple(rep) == experiment.REPORT_KEYS and rep["backend"] == "ours"
    assert rep["n_by_kind"] == {"3hop": 1, "bridge": 1, "single": 2} and rep["multihop_n"] == 2
    assert rep["em_before"] == 0.25 and rep["em_after"] == 0.75
    assert rep["em_by_kind_after"] == {"3hop": 0.0, "bridge": 1.0, "single": 1.0}
    assert rep["em_by_kind_before_ci95"]["single"] == list(bootstrap_ci([1, 0], seed=cfg.seed))
    assert rep["em_after_ci95"] == list(bootstrap_ci([1, 1, 1, 0], seed=cfg.seed))
    assert rep["multihop_em_after"] == 0.5 and rep["mean_searches_after"] == 1.5
    assert rep["reward_first"] == pytest.approx(0.2) and rep["reward_last"] == pytest.approx(0.4)
    assert rep["steps"] == 7 and rep["seconds_per_step"] == 2.0 and rep["minutes"] == 1.23
    assert rep["phase_minutes"] == {
        "load": 0.0,
        "warmup": 0.0,
        "eval_before": 0.0,
        "train": 1.0,
        "eval_after": 0.0,
    }


def test_build_report_without_an_evaluation_or_multihop_questions_is_json():
    cfg = get_config("cpu_demo")
    rep = experiment.build_report(cfg, [], None, [{"kind": None, "em": 1.0, "searches": 1}])
    assert rep["em_before"] is None and rep["em_by_kind_before_ci95"] is None
    assert rep["multihop_em_after"] is None and rep["multihop_em_after_ci95"] == [None, None]
    assert rep["n_by_kind"] == {} and rep["multihop_n"] == 0 and rep["em_after"] == 1.0
    assert rep["reward_first"] is None and rep["steps"] == 0
    text = json.dumps(rep, allow_nan=False)  # no NaN anywhere
    assert not any(isinstance(v, float) and math.isnan(v) for v in json.loads(text).values())


# ----------------------------------------------------------------------------- every entry point


@pytest.mark.timeout(900)
def test_demo_trl_and_compare_write_the_same_report(tmp_path, tokenizer, monkeypatch):
    """One step of each entry point on a tiny policy: the same report.json keys, the headline first."""
    tiny = lambda cfg, adapter=None: (tiny_lora_policy(tokenizer), tokenizer)  # noqa: E731
    monkeypatch.setattr(experiment, "load_policy", tiny)
    cfg = _cfg("steps=1", "sft_warmup_steps=1")
    demo = runs.demo(cfg, tmp_path / "demo")
    trl = trl_backend.train_trl(cfg.replace(sft_warmup_steps=0), tmp_path / "trl").report
    task = build_task(cfg, tokenizer)
    sets = {"generated": (task.eval[:2], task.tools, cfg)}
    adapter = tmp_path / "warm"
    tiny_lora_policy(tokenizer).save_pretrained(adapter)
    cmp.run_variant(cfg, tmp_path / "compare", adapter, task, sets, {"k": 1})
    reports = {e: json.loads((tmp_path / e / "report.json").read_text()) for e in ("demo", "trl", "compare")}
    for entry, rep in reports.items():
        assert tuple(rep) == experiment.REPORT_KEYS + experiment.DETAIL_KEYS, entry
        assert rep["entry"] == {"trl": "train"}.get(entry, entry) and rep["steps"] == 1
        assert rep["n_by_kind"] and sum(rep["n_by_kind"].values()) == 2, entry
    assert tuple(demo) == tuple(trl) == experiment.REPORT_KEYS
    assert reports["trl"]["backend"] == "trl" and reports["trl"]["versions"]["trl"]
    assert demo["em_before"] is not None and reports["compare"]["em_before"] is None  # no eval before RL
    assert reports["compare"]["eval_sets"]["generated"]["after"]["n"] == 2
    assert (tmp_path / "compare" / "eval_generated.jsonl").is_file()
    assert not (tmp_path / "compare" / "eval_before.jsonl").exists()


# ----------------------------------------------------------------------------- what is refused


def test_demo_refuses_a_train_run_folder_and_keeps_its_history(tmp_path, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("the demo loaded a policy before checking its folder")

    monkeypatch.setattr(experiment, "load_policy", no_loading)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(ValueError, match=f"demo: {tmp_path} holds another run's history"):
        runs.demo(get_config("cpu_demo"), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() and (tmp_path / "checkpoint").is_dir()
    assert not (tmp_path / runs.DEMO_MARKER).exists()
    # a folder a demo made may be started over: its marker, or an earlier demo's report
    runs.check_demo_folder(tmp_path / "absent")
    (tmp_path / "report.json").write_text(json.dumps({"phase_minutes": {}}))
    runs.check_demo_folder(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"phase_minutes": {}, "entry": "train"}))
    with pytest.raises(ValueError, match="another run's history"):
        runs.check_demo_folder(tmp_path)
    (tmp_path / runs.DEMO_MARKER).write_text("{}")
    runs.check_demo_folder(tmp_path)


@pytest.mark.parametrize(
    "content, match",
    [
        ({"prompt_style": "bogus"}, "bad value.*prompt_style='bogus'"),
        ({"prompt_style": "zero_shot", "lora_r": "x"}, "bad value.*lora_r='x'"),
        (b"\xff\xfe{", "not readable JSON"),
        ("{not json", "not readable JSON"),
    ],
)
def test_an_adapters_run_config_with_a_bad_value_names_the_file(tmp_path, content, match):
    run = tmp_path / "run"
    adapter = run / "checkpoint" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    path = run / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match) as err:
        runs.agent_config(get_config("cpu_demo"), runs.resolve_adapter(run))
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))  # a model's config.json: passed over
    assert runs.training_config(adapter) is None
