"""The comparison of notebook 06: intervals, read-back keys, the table, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest

from agentr1_nb import compare as cmp
from agentr1_nb import experiment
from agentr1_nb.config import get_config
from agentr1_nb.evaluate import bootstrap_ci

# ----------------------------------------------------------------------------- hier_ci


def hier_ci_of(per_seed):
    return cmp.hier_ci(per_seed, n_boot=500)


def test_hier_ci_with_one_seed_is_the_plain_bootstrap():
    ems = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1] * 3
    assert hier_ci_of([ems]) == list(bootstrap_ci(ems, n_boot=500))
    assert cmp.hier_ci([ems, []], seed=4) == list(bootstrap_ci(ems, seed=4))  # empty seeds are dropped


def test_hier_ci_degenerate_inputs():
    assert hier_ci_of([[1.0] * 5, [1.0] * 7]) == [1.0, 1.0]
    assert hier_ci_of([[0.0] * 3, [0.0] * 3, [0.0] * 3]) == [0.0, 0.0]
    for empty in ([], [[]], [[], []]):
        lo, hi = hier_ci_of(empty)
        assert math.isnan(lo) and math.isnan(hi)


def test_hier_ci_holds_the_seed_to_seed_noise():
    # two seeds that disagree completely: resampling seeds can pick the same one twice, so the interval
    # spans both; pooling the questions would hide that (about [0.4, 0.6])
    lo, hi = cmp.hier_ci([[0.0] * 50, [1.0] * 50], n_boot=400)
    assert lo == 0.0 and hi == 1.0
    plo, phi = bootstrap_ci([0.0] * 50 + [1.0] * 50, n_boot=400)
    assert 0.3 < plo < phi < 0.7
    assert cmp.hier_ci([[0, 1, 1], [1, 0, 1]], n_boot=200, seed=1) == cmp.hier_ci(
        [[0, 1, 1], [1, 0, 1]], n_boot=200, seed=1
    )


# ----------------------------------------------------------------------------- read-back keys


def test_read_back_needs_the_same_config_eval_n_and_warm_up(tmp_path):
    cfg = get_config("cpu_demo")
    key = cmp.run_key(cfg, 4, 2)
    path = tmp_path / "result.json"
    assert cmp.read_back(path, key) is None  # nothing saved
    path.write_text(json.dumps(dict(key, eval={"generated": [1.0, 0.0]})))
    assert cmp.read_back(path, key)["eval"] == {"generated": [1.0, 0.0]}
    assert cmp.read_back(path, json.loads(json.dumps(key))) is not None  # survives a JSON round trip
    assert cmp.read_back(path, cmp.run_key(cfg.replace(steps=3), 4, 2)) is None
    assert cmp.read_back(path, cmp.run_key(cfg.replace(algo="rloo"), 4, 2)) is None
    assert cmp.read_back(path, cmp.run_key(cfg, 5, 2)) is None  # another EVAL_N
    assert cmp.read_back(path, cmp.run_key(cfg, 4, 8)) is None  # another warm-up
    # a result saved when the key held the evaluation sets (before the real sets were added) still reads back:
    # the sets it lacks are evaluated from its adapter (`complete_sets`), it is not trained again
    path.write_text(json.dumps(dict(key, agent_sets=["generated"], eval={"generated": [1.0]})))
    assert cmp.read_back(path, key)["eval"] == {"generated": [1.0]}
    path.write_text('{"config": ')  # half a file
    with pytest.warns(UserWarning, match=f"ignoring the saved result {path}"):
        assert cmp.read_back(path, key) is None


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b'{"config": {}}', b'{"eval": [0, 1]}', b'{"eval": {"generated": ["x"]}}', b"\xff\xfe{}"],
    ids=["a list", "no eval", "eval a list", "eval not numbers", "not utf-8"],
)
def test_a_saved_result_of_the_wrong_shape_is_run_again_with_a_warning(tmp_path, content):
    path = tmp_path / "GRPO_seed0" / "result.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.warns(UserWarning, match=f"ignoring the saved result {path} \\(it will be computed again\\)"):
        assert cmp.read_back(path, {}, cmp.run_shape) is None
    base = tmp_path / "baselines_generated.json"
    base.write_bytes(content)
    with pytest.warns(UserWarning, match="baselines_generated.json"):
        assert cmp.read_back(base, {}, cmp.baseline_shape) is None
    # compare: a damaged file is not saved (with `saved_only` it is listed as missing, not a traceback)
    kw = dict(fast=True, variants=["GRPO"], baseline_sets=["generated"], progress=False, saved_only=True)
    with pytest.warns(UserWarning, match="ignoring the saved result"):
        res = cmp.compare(get_config("cpu_demo"), tmp_path, **kw)
    assert res["missing"] == ["GRPO seed 0", "baselines generated"] and res["rows"] == []


def test_can_resume_only_the_same_training_with_no_fewer_steps():
    cfg = get_config("cpu_demo")
    saved = {"config": cfg.to_dict(), "warm_start": "sft_seed0_abc"}
    assert cmp.can_resume(saved, cfg)
    assert cmp.can_resume(saved, cfg.replace(steps=cfg.steps + 20))  # train on from where it stopped
    assert not cmp.can_resume(saved, cfg.replace(steps=cfg.steps - 1))  # its checkpoint is past the end
    assert cmp.can_resume(saved, cfg.replace(micro_batch_size=1))  # how it runs, not what it learns
    assert not cmp.can_resume(saved, cfg.replace(algo="rloo"))
    assert not cmp.can_resume(saved, cfg.replace(lr=cfg.lr * 2))
    assert not cmp.can_resume(None, cfg) and not cmp.can_resume({"warm_start": "x"}, cfg)


def test_baseline_key_ignores_the_rl_fields_and_the_seed():
    cfg = get_config("cpu_demo")
    key = cmp.baseline_key(cfg, 4)
    assert cmp.baseline_key(cfg.replace(steps=3, algo="ppo", loss_mask=False, seed=2), 4) == key
    assert cmp.baseline_key(cfg.replace(use_process_reward=False), 4) == key
    assert cmp.baseline_key(cfg.replace(top_k=4), 4) != key
    assert cmp.baseline_key(cfg, 8) != key


# ----------------------------------------------------------------------------- the table


def test_table_rows_from_fabricated_runs():
    runs = {
        ("RLOO", "generated"): [[1, 0, 0, 0], [1, 1, 0, 0]],
        ("my method", "generated"): [[0, 0]],
        ("GRPO", "generated"): [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
        ("Naive RAG", "generated"): [[0, 1, 0, 1]],
        ("Naive RAG", "hotpotqa"): [[0, 0, 1]],
    }
    rows = cmp.table_rows(runs, n_boot=200)
    assert [(r["method"], r["dataset"]) for r in rows] == [
        ("Naive RAG", "generated"),
        ("Naive RAG", "hotpotqa"),
        ("GRPO", "generated"),
        ("RLOO", "generated"),
        ("my method", "generated"),
    ]  # baselines, then VARIANTS order, then the rest
    rloo = rows[3]
    assert rloo["em"] == pytest.approx(0.375) and rloo["em_per_seed"] == [0.25, 0.5]
    assert rloo["seeds"] == 2 and rloo["n"] == 4
    assert rows[2]["ci"] == [1.0, 1.0] and rows[2]["seeds"] == 3
    assert rows[1]["n"] == 3 and rows[0]["ci"] == list(bootstrap_ci([0, 1, 0, 1], n_boot=200))
    table = cmp.markdown_table(rows)
    assert "ours: generated (n=4)" in table and "ours: hotpotqa (n=3)" in table
    assert "| GRPO | 1.000 [1.00, 1.00] |  | 0.4405 | 0.5741 | 0.1485 | 0.3877 |" in table
    assert len(table.splitlines()) == 2 + 4  # header, rule, one line per method


def _write_eval(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_kind_rows_from_fabricated_eval_files(tmp_path):
    def rec(kind, em, searches):
        return {"kind": kind, "em": em, "searches": searches}

    _write_eval(
        tmp_path / "GRPO_seed0" / "eval_generated.jsonl",
        [rec("single", 1, 1), rec("bridge", 1, 2), rec("bridge", 0, 1), rec("3hop", 0, 2)],
    )
    _write_eval(
        tmp_path / "GRPO_seed1" / "eval_generated.jsonl",
        [rec("single", 0, 1), rec("bridge", 1, 2), rec("bridge", 1, 2), rec("3hop", 1, 3)],
    )
    _write_eval(tmp_path / "PPO_w_o_adv_mask_seed0" / "eval_hotpotqa.jsonl", [{"em": 1, "searches": 1}])
    _write_eval(tmp_path / "GRPO_seed2" / "eval_generated.jsonl", [rec("bridge", 1, 2)])  # not a finished run
    done = [("GRPO", 0), ("GRPO", 1), ("PPO w/o adv mask", 0), ("RLOO", 0)]
    rows = cmp.kind_rows(tmp_path, done, ["generated", "hotpotqa"])
    # PPO's file has no question kinds, RLOO has no file: one row
    assert [(r["method"], r["dataset"]) for r in rows] == [("GRPO", "generated")]
    (row,) = rows
    assert row["multihop_per_seed"] == pytest.approx([1 / 3, 1.0]) and row["multihop_n"] == 3
    assert row["multihop_em"] == pytest.approx(2 / 3) and row["seeds"] == 2
    lo, hi = row["multihop_ci"]
    assert 0.0 <= lo < row["multihop_em"] < hi <= 1.0
    assert row["em_by_kind"] == pytest.approx({"3hop": 0.5, "bridge": 0.75, "single": 0.5})
    assert row["searches"] == pytest.approx((1.5 + 2.0) / 2)
    table = cmp.kind_markdown(rows)
    (tmp_path / "GRPO_seed1" / "eval_generated.jsonl").write_text('{"kind": "bridge", "em"')  # cut short
    with pytest.warns(UserWarning, match="GRPO_seed1"):
        (damaged,) = cmp.kind_rows(tmp_path, [("GRPO", 0), ("GRPO", 1)], ["generated"])
    assert damaged["seeds"] == 1 and damaged["multihop_per_seed"] == pytest.approx([1 / 3])
    assert "| GRPO | generated | 0.67 [" in table and "| 0.33 / 1.00 | 0.50 | 0.75 | 0.50 | 1.75 |" in table


def test_export_and_read_the_shipped_comparison(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        cmp.export_comparison(tmp_path / "nothing", tmp_path / "c.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps({"note": "FAST smoke run: not results", "steps": 1, "rows": []})
    )
    with pytest.raises(ValueError, match="FAST smoke run"):
        cmp.export_comparison(run, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()
    real = {"note": "", "steps": 20, "rows": [{"method": "GRPO", "dataset": "generated", "em": 0.3}]}
    (run / "results.json").write_text(json.dumps(real))
    assert cmp.shipped_comparison(cmp.export_comparison(run, tmp_path / "c.json")) == real
    assert cmp.shipped_comparison(tmp_path / "absent.json") is None
    (tmp_path / "c.json").write_text('{"rows": [')
    with pytest.warns(UserWarning, match="skipping the shipped comparison"):
        assert cmp.shipped_comparison(tmp_path / "c.json") is None


def test_paper_and_variants_are_consistent():
    ours_only = {"GRPO w/o process reward"}  # a row the paper does not have
    assert set(cmp.PAPER) == {"Base Tool Call", "Naive RAG", *cmp.VARIANTS} - ours_only
    assert cmp.PAPER["GRPO w/o loss mask"] == {"avg": 0.3722}
    assert set(cmp.FAST_VARIANTS) <= set(cmp.VARIANTS)
    cfg = get_config("cpu_demo")
    for over in cmp.VARIANTS.values():
        cfg.replace(**over)  # every variant is a valid Config
    fast = cmp.fast_config(cfg)
    assert fast.steps == 1 and fast.group_size == 2 and fast.sft_warmup_steps == 2
    # trained on the generated world: the agents on the real samples too, as the baselines
    assert cmp.default_sets(cfg) == (["generated", "hotpotqa", "2wiki"], ["generated", "hotpotqa", "2wiki"])
    assert cmp.default_sets(get_config("colab_t4"))[0] == ["hotpotqa", "2wiki", "musique"]


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(variants=["GRPO", "DPO"]), "unknown variant"),
        (dict(seeds=[0, 0]), "seeds lists 0 more than once"),
        (dict(variants=["GRPO", "GRPO"]), "variants lists GRPO more than once"),
        (dict(baseline_sets=["2wiki", "2wiki"]), "baseline_sets lists 2wiki"),
        (dict(eval_n=0), "eval_n must be at least 1, not 0"),
        (dict(eval_n=-3), "eval_n must be at least 1"),
        (dict(eval_n=2.5), "eval_n must be an int"),
        (dict(sft_batch=0), "sft_batch must be at least 1"),
        (dict(seeds=[-1]), "seed=-1"),
        (dict(fresh=True, saved_only=True), "contradict"),
    ],
)
def test_compare_rejects_a_bad_spec_before_loading_anything(tmp_path, monkeypatch, options, match):
    def no_loading(*a, **k):
        raise AssertionError("compare loaded something before checking its spec")

    monkeypatch.setattr(cmp, "load_policy", no_loading)
    monkeypatch.setattr(cmp, "build_task", no_loading)
    with pytest.raises(ValueError, match=match):
        cmp.compare(get_config("cpu_demo"), tmp_path, **options)
    assert not (tmp_path / "results.json").exists()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.timeout(900)
def test_compare_end_to_end_then_reads_back(tmp_path, monkeypatch, tokenizer):
    """Warm-up, one variant, the baselines, results.json, then a second call that reads everything back. On
    a tiny policy (the real CPU default runs the same in notebook 06's FAST run, which CI executes)."""
    from conftest import tiny_lora_policy

    tiny = lambda cfg, adapter=None: (tiny_lora_policy(tokenizer), tokenizer)  # noqa: E731
    monkeypatch.setattr(cmp, "load_policy", tiny)  # the warm-up and the baselines
    monkeypatch.setattr(experiment, "load_policy", tiny)  # the variants' runs
    cfg = get_config("cpu_demo")
    kw = dict(
        fast=True, variants=["GRPO"], agent_sets=["generated"], baseline_sets=["generated"], progress=False
    )
    res = cmp.compare(cfg, tmp_path, **kw)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == res["rows"]
    assert [(r["method"], r["dataset"]) for r in res["rows"]] == [
        *((m, "generated") for m in cmp.BASELINE_METHODS),
        ("GRPO", "generated"),
    ]
    assert all(r["n"] == cmp.FAST_EVAL_N and 0.0 <= r["em"] <= 1.0 for r in res["rows"])
    assert res["reused"] == [] and res["steps"] == 1 and res["config"]["group_size"] == 2
    assert res["seconds_per_run"]["GRPO seed 0"] > 0
    assert (tmp_path / "GRPO_seed0" / "eval_generated.jsonl").is_file()
    (kinds,) = res["kind_rows"]  # the generated world's questions have kinds
    assert kinds["method"] == "GRPO" and kinds["seeds"] == 1 and 0.0 <= kinds["searches"] <= cfg.max_turns
    assert len(list(tmp_path.glob("sft_seed0_*/adapter_config.json"))) == 1
    report = json.loads((tmp_path / "GRPO_seed0" / "report.json").read_text())  # the demo's report keys
    assert tuple(report) == experiment.REPORT_KEYS + experiment.DETAIL_KEYS and report["entry"] == "compare"

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment, "train", no_training)
    monkeypatch.setattr(cmp, "load_policy", no_training)
    monkeypatch.setattr(experiment, "load_policy", no_training)
    again = cmp.compare(cfg, tmp_path, **kw)
    assert again["reused"] == ["GRPO seed 0", "baselines generated"]
    assert again["rows"] == res["rows"] and again["seconds_per_run"] == res["seconds_per_run"]
    assert again["missing"] == [] and again["kind_rows"] == res["kind_rows"]

    # the table so far: RLOO and the 2Wiki baselines are not saved, so they are left out, not run
    kw_more = dict(kw, variants=["GRPO", "RLOO"], baseline_sets=["generated", "2wiki"])
    so_far = cmp.compare(cfg, tmp_path, saved_only=True, **kw_more)
    assert so_far["missing"] == ["RLOO seed 0", "baselines 2wiki"]
    assert so_far["rows"] == res["rows"] and so_far["reused"] == again["reused"]
    with pytest.raises(ValueError, match="contradict"):
        cmp.compare(cfg, tmp_path, saved_only=True, fresh=True, **kw)


def test_compare_with_more_steps_trains_a_finished_run_on(tmp_path, monkeypatch, tokenizer):
    """`compare(steps=2)` over a finished 1-step run resumes it from its checkpoint and runs step 2 only;
    asking for 1 step again cannot use the 2-step training and starts over."""
    from conftest import tiny_lora_policy

    tiny = lambda cfg, adapter=None: (tiny_lora_policy(tokenizer), tokenizer)  # noqa: E731
    monkeypatch.setattr(cmp, "load_policy", tiny)  # the warm-up and the baselines
    monkeypatch.setattr(experiment, "load_policy", tiny)  # the variants' runs
    calls = []
    real_train = experiment.train

    def train(c, run_dir, resume=True, **kw):
        calls.append((c.steps, resume))
        return real_train(c, run_dir, resume=resume, **kw)

    monkeypatch.setattr(experiment, "train", train)
    cfg = get_config("cpu_demo")
    kw = dict(fast=True, variants=["GRPO"], agent_sets=["generated"], baselines=False, progress=False)
    metrics = tmp_path / "GRPO_seed0" / "metrics.jsonl"
    cmp.compare(cfg, tmp_path, steps=1, **kw)
    (step1,) = metrics.read_text().splitlines()
    two = cmp.compare(cfg, tmp_path, steps=2, **kw)
    assert calls == [(1, False), (2, True)] and two["reused"] == [] and two["steps"] == 2
    lines = metrics.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == step1 and json.loads(lines[1])["step"] == 2
    saved = json.loads((tmp_path / "GRPO_seed0" / "result.json").read_text())
    assert saved["config"]["steps"] == 2 and len(saved["eval"]["generated"]) == cmp.FAST_EVAL_N
    cmp.compare(cfg, tmp_path, steps=1, **kw)
    assert calls[-1] == (1, False) and len(metrics.read_text().splitlines()) == 1


# ----------------------------------------------------------------------------- trained adapters, real sets


def _no_samples(monkeypatch, tmp_path):
    """A clone alone: $AGENTR1_DATA an empty folder, the hub off."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("AGENTR1_DATA", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _saved_adapters(tokenizer, root, seeds=(0, 1)):
    from conftest import tiny_lora_policy

    folders = []
    for seed in seeds:
        folder = root / f"adapter_s{seed}"
        tiny_lora_policy(tokenizer, seed=seed).save_pretrained(folder)
        folders.append(str(folder))
    return folders


def _tiny_loader(tokenizer, calls):
    """`load_policy` for tests: the tiny base model with the adapter folder it is given, recorded in `calls`."""
    from conftest import make_tiny_model
    from peft import PeftModel

    def load(cfg, adapter=None):
        calls.append(None if adapter is None else str(adapter))
        base = make_tiny_model(len(tokenizer))
        base.config.pad_token_id = tokenizer.pad_token_id
        return PeftModel.from_pretrained(base, str(adapter)), tokenizer

    return load


def test_adapter_rows_are_evaluated_then_read_back_on_a_clone(tmp_path, monkeypatch, tokenizer, capsys):
    """Two adapter folders are two seeds of one row; with no samples (a clone alone) the real sets are skipped
    with a line, the generated world is evaluated; asked again, nothing loads; another EVAL_N evaluates again."""
    _no_samples(monkeypatch, tmp_path)
    folders = _saved_adapters(tokenizer, tmp_path)
    calls: list = []
    monkeypatch.setattr(cmp, "load_policy", _tiny_loader(tokenizer, calls))
    cfg = get_config("cpu_demo")
    label = "GRPO (tiny adapter)"
    kw = dict(fast=True, adapters={label: folders}, baselines=False, progress=False)
    res = cmp.compare(cfg, tmp_path / "cmp", **kw)
    assert res["variants"] == [] and res["agent_sets"] == ["generated", "hotpotqa", "2wiki"]
    assert "skipping hotpotqa" in capsys.readouterr().err
    assert calls == folders  # one load per folder, with its adapter
    (row,) = res["rows"]
    assert (row["method"], row["dataset"], row["seeds"], row["n"]) == (label, "generated", 2, cmp.FAST_EVAL_N)
    (entry,) = res["per_question"]
    assert entry["method"] == label and len(entry["em"]) == 2
    assert row["ci"] == cmp.hier_ci(entry["em"]) and row["em_per_seed"] == [
        sum(x) / len(x) for x in entry["em"]
    ]
    assert [a["sha256"] for a in res["adapters"][label]] == [cmp.adapter_hash(f) for f in folders]
    sha = res["adapters"][label][0]["sha256"]
    assert (tmp_path / "cmp" / "adapters" / sha[:16] / "eval_generated.jsonl").is_file()
    table = cmp.markdown_table(res["rows"])
    assert f"| {label} | " in table and "| 0.4405 | 0.5741 |" in table  # beside the paper's GRPO

    def no_loading(*a, **k):
        raise AssertionError("a saved adapter evaluation was loaded again")

    monkeypatch.setattr(cmp, "load_policy", no_loading)
    again = cmp.compare(cfg, tmp_path / "cmp", **kw)
    assert again["rows"] == res["rows"] and again["per_question"] == res["per_question"]
    assert again["reused"] == [f"{label} ({f}) on generated" for f in folders]
    monkeypatch.setattr(cmp, "load_policy", _tiny_loader(tokenizer, calls))
    cmp.compare(cfg, tmp_path / "cmp", **dict(kw, eval_n=3))  # another key: evaluated again
    assert calls == folders * 2
    with pytest.raises(ValueError, match="no row on a real set"):
        cmp.export_real(tmp_path / "cmp", tmp_path / "real.json")


@pytest.mark.parametrize(
    "adapters, match",
    [
        ({"A": []}, "needs its folders"),
        ({"A": ["missing/run"]}, "missing/run not found"),
        ({" ": ["shipped"]}, "label ' ' is empty"),
        ({"GRPO": ["shipped"]}, "'GRPO' is also the name"),
        ({"A": ["shipped", "shipped"]}, "more than once"),
        (["shipped"], "must map a label"),
    ],
)
def test_bad_adapters_are_refused_before_loading(tmp_path, monkeypatch, adapters, match):
    def no_loading(*a, **k):
        raise AssertionError("compare loaded something before checking its adapters")

    monkeypatch.setattr(cmp, "load_policy", no_loading)
    variants = ["GRPO"] if "GRPO" in adapters else None
    with pytest.raises(ValueError if "not found" not in match else FileNotFoundError, match=match):
        cmp.compare(get_config("cpu_demo"), tmp_path / "cmp", adapters=adapters, variants=variants)
    assert not (tmp_path / "cmp").exists()
    not_adapter = tmp_path / "plain"
    not_adapter.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        cmp.compare(get_config("cpu_demo"), tmp_path / "cmp", adapters={"A": [str(not_adapter)]})


def test_default_sets_with_and_without_the_samples(tmp_path, monkeypatch, capsys, shared_data):
    cfg_with = get_config("cpu_demo", {"data_dir": str(shared_data)})
    questions, tools, c = cmp.load_eval_set(cfg_with, "hotpotqa", 3)
    assert len(questions) == 3 and c.dataset == "hotpotqa" and tools
    assert cmp.load_eval_set(cfg_with, "2wiki", 2)[2].dataset == "2wiki"
    _no_samples(monkeypatch, tmp_path)
    cfg = get_config("cpu_demo")
    assert cmp.default_sets(cfg)[0] == ["generated", "hotpotqa", "2wiki"]
    assert cmp.load_eval_set(cfg, "hotpotqa", 3) is None
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line naming the set and the folder
    assert line.startswith("skipping hotpotqa: ") and str(tmp_path / "no-data") in line


def test_an_adapter_row_on_a_real_sample(tmp_path, monkeypatch, tokenizer, shared_data):
    folders = _saved_adapters(tokenizer, tmp_path, seeds=[0])
    calls: list = []
    monkeypatch.setattr(cmp, "load_policy", _tiny_loader(tokenizer, calls))
    cfg = get_config("cpu_demo", {"data_dir": str(shared_data)})
    kw = dict(fast=True, adapters={"A": folders}, agent_sets=["hotpotqa"], baselines=False, progress=False)
    res = cmp.compare(cfg, tmp_path / "cmp", **dict(kw, eval_n=2))
    (row,) = res["rows"]
    assert (row["method"], row["dataset"], row["n"], row["seeds"]) == (
        "A",
        "hotpotqa",
        2,
        1,
    ) and calls == folders
    sha = res["adapters"]["A"][0]["sha256"]
    saved = json.loads((tmp_path / "cmp" / "adapters" / sha[:16] / "eval_hotpotqa.json").read_text())
    assert saved["dataset"] == "hotpotqa" and saved["eval_n"] == 2 and len(saved["em"]) == 2


def test_a_saved_run_without_a_set_is_evaluated_from_its_adapter_not_trained(
    tmp_path, monkeypatch, tokenizer
):
    """A run saved before the real sets were asked for (its result.json holds `generated` only) gets the new
    set evaluated from its final checkpoint's adapter, added to result.json; it is not trained again."""
    from agentr1_nb.evaluate import load_eval_questions
    from agentr1_nb.retrieval import build_retriever
    from agentr1_nb.tools import make_tools

    cfg = get_config("cpu_demo")
    out = tmp_path / "cmp"
    run_dir = out / "GRPO_seed0"
    adapter = run_dir / "checkpoint" / "adapter"
    from conftest import tiny_lora_policy

    tiny_lora_policy(tokenizer).save_pretrained(adapter)  # the run's final checkpoint
    c = cmp.fast_config(cfg).replace(seed=0, **cmp.VARIANTS["GRPO"])
    key = cmp.run_key(c, cmp.FAST_EVAL_N, cmp.FAST_SFT_BATCH)
    (run_dir / "result.json").write_text(
        json.dumps(dict(key, agent_sets=["generated"], eval={"generated": [1.0] * 4}))
    )

    def fake_set(
        cfg_, ds, eval_n
    ):  # the generated world's questions stand in for a real set; no 2Wiki sample
        if ds == "2wiki":
            return None
        qs, passages = load_eval_questions(cfg_.replace(dataset="generated"), eval_n)
        return qs, make_tools(cfg_, build_retriever(cfg_, passages)), cfg_.replace(dataset="generated")

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    calls: list = []
    monkeypatch.setattr(cmp, "load_eval_set", fake_set)
    monkeypatch.setattr(cmp, "find_checkpoint", lambda d: d / "checkpoint")
    monkeypatch.setattr(cmp, "read_state", lambda ckpt: {"step": c.steps})
    monkeypatch.setattr(cmp, "load_policy", _tiny_loader(tokenizer, calls))
    monkeypatch.setattr(cmp, "run_variant", no_training)
    monkeypatch.setattr(cmp, "warm_start", no_training)
    kw = dict(
        fast=True, variants=["GRPO"], agent_sets=["generated", "hotpotqa"], baselines=False, progress=False
    )
    res = cmp.compare(cfg, out, **kw)
    assert calls == [str(adapter)] and res["reused"] == ["GRPO seed 0"]
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["eval"]["generated"] == [1.0] * 4 and len(saved["eval"]["hotpotqa"]) == cmp.FAST_EVAL_N
    assert (run_dir / "eval_hotpotqa.jsonl").is_file()
    assert [(r["method"], r["dataset"]) for r in res["rows"]] == [("GRPO", "generated"), ("GRPO", "hotpotqa")]
    assert cmp.compare(cfg, out, **kw)["rows"] == res["rows"] and len(calls) == 1  # now read back whole
    monkeypatch.setattr(cmp, "read_state", lambda ckpt: {"step": c.steps - 1})  # not the final adapter
    more = cmp.compare(cfg, out, **dict(kw, agent_sets=["generated", "hotpotqa", "2wiki"]))
    assert (
        more["rows"] == res["rows"] and len(calls) == 1
    )  # 2Wiki has no sample: nothing to evaluate or train
    (run_dir / "result.json").write_text(json.dumps(dict(key, eval={"generated": [1.0] * 4})))
    with pytest.raises(AssertionError, match="trained again"):
        cmp.compare(cfg, out, **kw)


def _real_results(**over):
    per_question = [
        {"method": "GRPO (x adapter)", "dataset": "generated", "em": [[1, 1, 0, 1], [1, 0, 1, 1]]},
        {"method": "GRPO (x adapter)", "dataset": "hotpotqa", "em": [[1, 1, 1, 1], [1, 1, 1, 0]]},
        {"method": "Naive RAG", "dataset": "hotpotqa", "em": [[0, 0, 0, 0]]},
        {"method": "Naive RAG (1-shot)", "dataset": "hotpotqa", "em": [[0, 0, 1, 0]]},
        {"method": "GRPO", "dataset": "generated", "em": [[1, 1, 1, 1]]},  # a variant: not shipped
    ]
    return {
        "note": "",
        "model": "smollm2-135m",
        "date": "2026-12-07T08:00:00Z",
        "eval_n": 4,
        "agent_sets": ["generated", "hotpotqa"],
        "adapters": {
            "GRPO (x adapter)": [{"path": "a", "sha256": "0" * 64}, {"path": "b", "sha256": "1" * 64}]
        },
        "config": {"dataset": "generated"},
        "per_question": per_question,
        **over,
    }


def test_export_real_ships_the_adapter_and_baseline_rows_per_question(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_real_results(note="FAST smoke run: not results")))
    with pytest.raises(ValueError, match="FAST smoke run"):
        cmp.export_real(run, tmp_path / "real.json")
    (run / "results.json").write_text(json.dumps(_real_results(adapters={})))
    with pytest.raises(ValueError, match="no adapter rows"):
        cmp.export_real(run, tmp_path / "real.json")
    assert not (tmp_path / "real.json").exists()
    (run / "results.json").write_text(json.dumps(_real_results()))
    record = cmp.shipped_real(cmp.export_real(run, tmp_path / "real.json"))
    assert {e["method"] for e in record["per_question"]} == {
        "GRPO (x adapter)",
        "Naive RAG",
        "Naive RAG (1-shot)",
    }
    assert record["model"] == "smollm2-135m" and record["eval_n"] == 4 and record["date"].startswith("2026")
    assert record["adapters"]["GRPO (x adapter)"][1]["sha256"] == "1" * 64
    rows = {(r["method"], r["dataset"]): r for r in record["rows"]}
    hot = rows[("GRPO (x adapter)", "hotpotqa")]
    assert (
        hot["em"] == pytest.approx(0.875)
        and hot["seeds"] == 2
        and hot["ci"] == cmp.hier_ci([[1, 1, 1, 1], [1, 1, 1, 0]])
    )
    table = cmp.real_markdown(record)
    assert "| GRPO (x adapter) | 0.750 [" in table and "| Naive RAG (1-shot) |  | 0.250 [" in table
    (line,) = cmp.transfer_lines(record, n_boot=300)  # one real set
    assert (
        line.startswith("GRPO (x adapter) on hotpotqa (n=4): EM 0.875")
        and "Naive RAG (1-shot), 0.250" in line
    )
    assert "difference +0.625" in line and line.endswith(
        ("above it", "no difference these questions can show")
    )
    assert cmp.shipped_real(tmp_path / "absent.json") is None


def test_transfer_lines_say_below_when_the_baseline_is_better():
    record = cmp.real_record(
        _real_results(
            per_question=[
                {"method": "GRPO (x adapter)", "dataset": "2wiki", "em": [[0] * 30]},
                {"method": "Naive RAG", "dataset": "2wiki", "em": [[1] * 30]},
            ]
        )
    )
    (line,) = cmp.transfer_lines(record, n_boot=200)
    assert "difference -1.000 [-1.00, -1.00]" in line and line.endswith("below it")
