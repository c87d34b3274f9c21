"""Plots for training and comparison: they draw what they are given, survive gaps, and write small PNGs."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from agentr1_nb import viz  # noqa: E402

HISTORY = [
    {"step": 1, "reward": -1.0, "em": 0.0, "format_rate": 0.0},
    {"step": 2, "reward": -0.5, "em": 0.25, "format_rate": 0.5},
    {"step": 3, "reward": 0.5, "em": 0.5, "format_rate": 1.0},
]


def _lines(ax) -> dict[str, list[float]]:
    return {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}


def test_plot_training_draws_reward_left_and_rates_right():
    fig = viz.plot_training(HISTORY)
    left, right = fig.axes
    assert _lines(left) == {"reward": [-1.0, -0.5, 0.5]}
    assert _lines(right) == {"EM": [0.0, 0.25, 0.5], "format ok": [0.0, 0.5, 1.0]}
    plt.close(fig)


def test_plot_training_on_one_axis_skips_missing_keys_and_empty_history():
    fig, ax = plt.subplots()
    viz.plot_training([{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2, "em": 1.0}], ax=ax)
    lines = _lines(ax)
    assert lines["reward"] == [0.1, 0.2] and lines["EM"] == [1.0]
    assert "format ok" not in lines
    plt.close(fig)
    plt.close(viz.plot_training([]))  # an empty history (e.g. before the first step) is a blank plot


def test_plot_demo_writes_a_small_png_with_ci_error_bars(tmp_path):
    before = {"em": 0.1, "em_ci95": [0.0, 0.3], "n": 10}
    after = {"em": 0.6, "em_ci95": [0.3, 0.9], "n": 10}
    fig = viz.plot_demo(HISTORY, before, after)
    bars = fig.axes[1].patches
    assert [round(b.get_height(), 6) for b in bars] == [0.1, 0.6]
    plt.close(fig)

    path = viz.plot_demo(HISTORY, before, after, tmp_path / "sub" / "demo.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert path.stat().st_size < 150_000
    assert not plt.get_fignums(), "the figure is closed once saved"


def test_plot_demo_tolerates_nan_and_missing_ci(tmp_path):
    path = viz.plot_demo(
        [], {"em": float("nan"), "em_ci95": [float("nan")] * 2}, {"em": 0.5}, tmp_path / "d.png"
    )
    assert path.is_file()


def test_ci_err_is_asymmetric_and_zero_when_unknown():
    assert viz._ci_err(0.5, (0.25, 0.875)) == [0.25, 0.375]
    assert viz._ci_err(0.5, None) == [0.0, 0.0]
    assert viz._ci_err(0.5, [None, None]) == [0.0, 0.0]
    assert viz._ci_err(math.nan, (0.0, 1.0)) == [0.0, 0.0]


def test_plot_comparison_puts_paper_bars_beside_ours_per_dataset():
    rows = [
        {"method": "GRPO", "dataset": "generated", "em": 0.4, "ci": [0.2, 0.6]},
        {"method": "RLOO", "dataset": "generated", "em": 0.3, "ci": [0.1, 0.5]},
        {"method": "Naive RAG", "dataset": "hotpotqa", "em": 0.2},
    ]
    paper = {"GRPO": {"avg": 0.3877, "hotpotqa": 0.4405}, "Naive RAG": {"hotpotqa": 0.1916, "avg": 0.1328}}
    fig = viz.plot_comparison(rows, paper=paper, paper_columns={"generated": "avg"})
    gen, hot = fig.axes
    assert gen.get_title() == "generated" and hot.get_title() == "hotpotqa"
    heights = [round(p.get_height(), 4) for p in gen.patches]
    # ours for GRPO and RLOO (Naive RAG has no generated row, so it is not in this panel), then the paper's avg
    # beside each (RLOO: not given)
    assert [t.get_text() for t in gen.get_xticklabels()] == ["GRPO", "RLOO"]
    assert heights[:2] == [0.4, 0.3] and heights[2] == 0.3877 and math.isnan(heights[3])
    assert "paper (avg)" in [t.get_text() for t in gen.get_legend().get_texts()]
    assert [round(p.get_height(), 4) for p in hot.patches] == [0.2, 0.1916]
    plt.close(fig)


def test_plot_comparison_without_paper_and_bad_input():
    fig = viz.plot_comparison([{"method": "GRPO", "dataset": "generated", "em": 0.0}])
    assert len(fig.axes[0].patches) == 1  # no paper bars when there are no paper numbers
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one row"):
        viz.plot_comparison([])


# ----------------------------------------------------------------------------- trajectories


def _trajectory(tokenizer):
    """prompt, action, a tool observation holding HTML, action: built by hand, as the rollout lays it out."""
    from agentr1_nb.data import QAExample
    from agentr1_nb.rollout import Trajectory

    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompt = enc("<|im_start|>user\nWho founded Acme?<|im_end|>\n<|im_start|>assistant\n")
    act1 = enc('<tool_call>{"name": "search", "arguments": {"query": "Acme"}}</tool_call>')
    obs = enc("<|im_end|>\n<|im_start|>user\n<tool_response><script>alert(1)</script></tool_response>")
    act2 = enc("<answer>Paris & <b>Co</b></answer>")
    ids = prompt + act1 + obs + act2
    mask = [0] * len(prompt) + [1] * len(act1) + [0] * len(obs) + [1] * len(act2)
    start2 = len(prompt) + len(act1) + len(obs)
    turns = [
        {
            "action_text": "",
            "observation": "<script>alert(1)</script>",
            "reward": 0.1,
            "info": {"kind": "tool_call"},
            "stop": "</tool_call>",
        },
        {
            "action_text": "",
            "observation": "",
            "reward": 0.0,
            "info": {"kind": "answer"},
            "stop": "</answer>",
        },
    ]
    traj = Trajectory(
        QAExample(id="q0", question="Who founded <Acme>?", answers=["Paris"]),
        0,
        len(prompt),
        ids,
        mask,
        [-0.5 * m for m in mask],
        turns=turns,
        turn_starts=[len(prompt), start2],
        turn_ends=[len(prompt) + len(act1) - 1, len(ids) - 1],
        answer="Paris & <b>Co</b>",
        stop_reason="answer",
    )
    return traj, len(act1), len(act2)


def test_render_trajectory_html_escapes_and_colours(tokenizer):
    traj, n1, n2 = _trajectory(tokenizer)
    page = viz.render_trajectory_html(traj, tokenizer)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>Co</b>" not in page and "&lt;Acme&gt;" in page
    assert page.count('class="ar1-act"') == sum(traj.action_mask[traj.prompt_len :]) == n1 + n2
    assert page.count('class="ar1-ctx"') == len(traj.token_ids) - traj.prompt_len - n1 - n2
    with_prompt = viz.render_trajectory_html(traj, tokenizer, show_prompt=True)
    assert with_prompt.count('class="ar1-ctx"') == len(traj.token_ids) - n1 - n2
    one = viz.render_trajectory_html(traj, tokenizer, turn=0)
    assert one.count('class="ar1-act"') == traj.turn_ends[0] - traj.turn_starts[0] + 1 == n1
    assert viz.render_trajectory_html(traj, tokenizer, turn=1).count('class="ar1-act"') == n2
    assert "does not exist" in viz.render_trajectory_html(traj, tokenizer, turn=7)


# ------------------------------------------------------------------------------------ Markdown tables
def test_markdown_rows_fills_gaps_formats_floats_and_escapes_pipes():
    text = viz.markdown_rows([{"a": 0.123456, "b": "x|y"}, {"a": float("nan"), "c": None}])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 0.123 | x\\|y |  |", "|  |  |  |"]
    assert viz.markdown_rows([{"a": 1.5}], columns=["a"], floatfmt=".2f").splitlines()[-1] == "| 1.50 |"


def test_config_table_is_one_row_per_field_one_column_per_config():
    from agentr1_nb.config import get_config

    text = viz.config_table({"A": get_config("cpu_demo"), "B": get_config("colab_t4")}, ["model", "steps"])
    head, rule, model, steps = text.splitlines()
    assert head == "| field | A | B |" and model.startswith("| `model` |")
    assert steps == f"| `steps` | {get_config('cpu_demo').steps} | {get_config('colab_t4').steps} |"


def _report(seed, algo="grpo", process=True, em=0.2):
    ci = [0.1, 0.3]
    return {
        "seed": seed, "config": {"algo": algo}, "use_process_reward": process, "em_before": 0.1,
        "em_before_ci95": ci, "em_after": em, "em_after_ci95": ci, "multihop_em_before": 0.0,
        "multihop_em_before_ci95": ci, "multihop_em_after": em, "multihop_em_after_ci95": ci, "multihop_n": 45,
        "mean_searches_before": 1.0, "mean_searches_after": 2.0, "em_by_kind_before": {"bridge": 0.0},
        "em_by_kind_after": {"bridge": em}, "after": {"n": 100},
    }  # fmt: skip


def test_runs_table_groups_by_what_the_report_says_not_by_name():
    records = {
        "x": {"report": _report(0, em=0.2)},
        "y": {"report": _report(1, em=0.4)},
        "z": {"report": _report(0, algo="rloo")},
        "w": {"report": {**_report(2, em=0.9), "config": {"algo": "grpo", "lr": 1.0}}},  # another recipe
    }
    lines = viz.runs_table(records).splitlines()
    assert len(lines) == 2 + 4 + 1  # head, rule, four runs, one mean (GRPO x 2 seeds; RLOO and lr=1 ran one)
    assert "mean over 2 seeds** | GRPO | on | 0, 1 |" in lines[-1] and "0.30 (0.20-0.40)" in lines[-1]


def test_before_after_table_lists_kinds_multihop_all_and_searches():
    lines = viz.before_after_table(_report(0, em=0.25)).splitlines()
    assert lines[2] == "| bridge | 0.00 | 0.25 |"
    assert lines[3].startswith("| **bridge + 3-hop** (n=45) | 0.00 [0.10, 0.30] | 0.25 [0.10, 0.30]")
    assert lines[-1] == "| searches per question | 1.00 | 2.00 |"


def test_kinds_table_gives_each_kind_before_and_after_with_its_interval():
    report = {
        "seed": 1, "n_by_kind": {"bridge": 30, "3hop": 29},
        "em_by_kind_before": {"bridge": 0.1, "3hop": 0.2}, "em_by_kind_after": {"bridge": 0.3, "3hop": 0.5},
        "em_by_kind_before_ci95": {"bridge": [0.0, 0.2], "3hop": [0.07, 0.33]},
        "em_by_kind_after_ci95": {"bridge": [0.1, 0.4], "3hop": [0.33, 0.67]},
    }  # fmt: skip
    lines = viz.kinds_table({"m_s1": {"report": report}}, kinds=("bridge", "3hop")).splitlines()
    assert lines[0] == "| run | seed | bridge (n=30) | 3hop (n=29) |"
    assert lines[2] == (
        "| m_s1 | 1 | 0.10 [0.00, 0.20] -> 0.30 [0.10, 0.40] | 0.20 [0.07, 0.33] -> 0.50 [0.33, 0.67] |"
    )


def test_missing_samples_note_names_what_is_missing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text("[]")
    assert viz.missing_samples_note(tmp_path, ["a/x.json"]) is None
    note = viz.missing_samples_note(tmp_path, ["a/x.json", "b/y.json"])
    assert "b/y.json" in note and "a/x.json" not in note and "AGENTR1_DATA" in note and "\n" not in note
