"""Display for the notebooks: small, PNG-friendly matplotlib figures and the HTML view of a trajectory.

matplotlib is imported inside the plotting functions, so `render_trajectory_html` works without it.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for the annotation only: viz needs no torch to draw
    from .rollout import Trajectory

COMPONENT_COLORS = {
    "weights": "#4c72b0",
    "LoRA + Adam": "#55a868",
    "KV cache": "#8172b2",
    "KV copy (split/merge)": "#b9a8e0",
    "activations": "#ccb974",
    "prefill activations": "#ccb974",
    "repeat_kv (prefill)": "#e6d98f",
    "logits": "#c44e52",
    "entropy": "#e39a9c",
}


def plot_memory_budget(phases: dict[str, dict[str, float]], limit_gb: float | None = None, title: str = ""):
    """Stacked horizontal bars: one bar per phase (e.g. `memory_budget(...)["phases"]`), GB per component.

    `limit_gb` draws the usable memory of the GPU as a dashed line. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(phases)
    totals = [sum(phases[n].values()) for n in names]
    # keep the GPU line in view: a bar far past it is cut at the edge, with its total written inside
    xmax = 2.2 * limit_gb if limit_gb is not None else 1.15 * max(totals + [1.0])
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) + 1.2), dpi=80)
    seen: set[str] = set()
    for row, name in enumerate(names):
        left = 0.0
        for comp, gb in phases[name].items():
            label = comp if comp not in seen else None
            seen.add(comp)
            ax.barh(row, gb, left=left, color=COMPONENT_COLORS.get(comp), label=label, edgecolor="white")
            left += gb
        if left <= 0.85 * xmax:
            ax.text(left, row, f" {left:.1f} GB", va="center", fontsize=9)
        else:
            ax.text(
                xmax, row, f"{left:.0f} GB \u2192 ", va="center", ha="right", fontsize=9, fontweight="bold"
            )
    if limit_gb is not None:
        ax.axvline(limit_gb, color="black", ls="--", lw=1)
        ax.text(limit_gb, len(names) - 0.5, f" GPU {limit_gb:g} GB", fontsize=9, va="bottom")
    ax.set_xlim(0, xmax)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("GB (1e9 bytes)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- training and evaluation

TRAINING_SERIES = (
    ("reward", "reward", "#4c72b0"),
    ("em", "EM", "#55a868"),
    ("format_rate", "format ok", "#ccb974"),
)
"""(metrics key, legend label, colour) of the per-step curves `plot_training` draws."""


def _ci_err(value: float, ci) -> list[float]:
    """Asymmetric error bar lengths [below, above] from a (lo, hi) interval; zeros when unknown."""
    if ci is None or len(ci) != 2 or any(c is None or math.isnan(c) for c in ci) or math.isnan(value):
        return [0.0, 0.0]
    return [max(value - ci[0], 0.0), max(ci[1] - value, 0.0)]


def plot_training(history: list[dict], ax=None, title: str = ""):
    """Reward (left) and EM / format rate (right) per training step, from `train()`'s metrics dicts.

    `ax` is None (a new 1 x 2 figure), one Axes (every curve on it) or a pair of Axes. Missing keys are
    skipped, so histories of any algorithm (or an empty one) plot. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), dpi=80)
    elif hasattr(ax, "plot"):
        fig, axes = ax.figure, [ax, ax]
    else:
        axes = list(ax)
        fig = axes[0].figure
    steps = [m.get("step", i + 1) for i, m in enumerate(history)]
    for key, label, colour in TRAINING_SERIES:
        pts = [(s, m[key]) for s, m in zip(steps, history) if isinstance(m.get(key), (int, float))]
        if not pts:
            continue
        target = axes[0] if key == "reward" else axes[1]
        target.plot(*zip(*pts), marker="o", ms=3, lw=1.2, color=colour, label=label)
    axes[0].set_ylabel("training reward")
    axes[1].set_ylabel("rate (training batch)")
    if axes[1] is not axes[0]:
        axes[1].set_ylim(-0.03, 1.03)
        # the paper's reward lies in [-1, 1] (plus small process rewards): keep that scale in view
        lo, hi = axes[0].get_ylim()
        axes[0].set_ylim(min(lo, -1.05), max(hi, 1.05))
    for a in {id(a): a for a in axes}.values():
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8, loc="best")
        if steps:
            a.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_demo(history: list[dict], before: dict, after: dict, path=None, dpi: int = 80):
    """The demo's figure: training reward and EM per step (left); held-out EM before and after training with
    95% bootstrap intervals (right). `before` / `after` are `evaluate.summarize` dicts (`em`, `em_ci95`, `n`).

    Saves a PNG to `path` when given (and closes the figure); returns the figure otherwise.
    """
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=dpi, gridspec_kw={"width_ratios": [2, 1]})
    plot_training(history, ax=a0)
    a0.set_ylabel("reward / EM (training batch)")
    a0.set_title(f"training ({len(history)} steps)", fontsize=10)
    names = ["before", "after"]
    ems = [float(before.get("em", float("nan"))), float(after.get("em", float("nan")))]
    errs = [_ci_err(ems[0], before.get("em_ci95")), _ci_err(ems[1], after.get("em_ci95"))]
    a1.bar(names, ems, color=["#8c8c8c", "#55a868"], yerr=list(zip(*errs)), capsize=5)
    for i, v in enumerate(ems):
        if v == v:  # not NaN
            a1.text(i + 0.06, v + 0.01, f"{v:.2f}", ha="left", fontsize=9)  # beside the error bar
    a1.set_ylim(0, 1)
    a1.set_ylabel("held-out EM (95% CI)")
    a1.set_title(f"evaluation (n={after.get('n', before.get('n', '?'))})", fontsize=10)
    a1.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is None:
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_comparison(
    rows: list[dict],
    paper: dict[str, dict[str, float]] | None = None,
    paper_columns: dict[str, str] | None = None,
    datasets: list[str] | None = None,
    dpi: int = 70,
):
    """One panel per dataset: our EM per method (bars with 95% CI) and the paper's EM beside it (hatched).

    `rows`: dicts with `method`, `dataset`, `em` and optionally `ci` = (lo, hi). `paper`: method -> column ->
    EM. `paper_columns` maps our dataset to the paper column to show beside it (default: the same name), e.g.
    ``{"generated": "avg"}`` puts the paper's average EM beside the generated world, as a scale only.
    Each panel shows the methods that have a row for its dataset, in the order of their first row.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    paper = paper or {}
    paper_columns = paper_columns or {}
    datasets = datasets or list(dict.fromkeys(r["dataset"] for r in rows))
    if not datasets:
        raise ValueError("plot_comparison needs at least one row (method, dataset, em)")
    order = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(min(4.5 * len(datasets), 15), 3.6), dpi=dpi, squeeze=False
    )
    w = 0.4
    for ax, ds in zip(axes[0], datasets):
        col = paper_columns.get(ds, ds)
        ours = {r["method"]: r for r in rows if r["dataset"] == ds}
        methods = [m for m in order if m in ours]
        x = np.arange(len(methods))
        em = [float(ours[m]["em"]) for m in methods]
        err = [_ci_err(em[i], ours[m].get("ci")) for i, m in enumerate(methods)]
        ax.bar(x - w / 2, em, w, yerr=np.array(err).T, capsize=3, color="#4c72b0", label="ours (95% CI)")
        tops = [v + e[1] for v, e in zip(em, err)]
        for xi, v, top in zip(x, em, tops):  # the value above its error bar, so that a zero reads as measured
            ax.text(xi - w / 2, top + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        pv = [paper.get(m, {}).get(col, np.nan) for m in methods]
        if not all(np.isnan(pv)):
            label = "paper" if col == ds else f"paper ({col})"
            ax.bar(x + w / 2, pv, w, color="white", edgecolor="#c44e52", hatch="///", label=label)
        ax.set_xticks(x, methods, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, np.nanmax([*tops, *pv, 0.05]) * 1.2 + 0.05)
        ax.set_title(ds, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("exact match")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- trajectories


ACTION_COLOUR, CONTEXT_COLOUR = "#c8f7c5", "#e3e8f0"


def render_trajectory_html(
    traj: Trajectory, tokenizer, turn: int | None = None, show_prompt: bool = False
) -> str:
    """HTML of a trajectory's tokens coloured by action mask (green: sampled by the model; grey: prompt and
    tool tokens), one token per box (hover shows id and log-prob), with each turn's reward and info.

    `turn` limits the view to one turn (its action and the observation after it).
    """
    lo = 0 if show_prompt else traj.prompt_len
    hi = len(traj.token_ids)
    if turn is not None:
        if not 0 <= turn < len(traj.turns):
            return f"<p>turn {turn} does not exist (this trajectory has {len(traj.turns)} turns)</p>"
        lo = traj.turn_starts[turn]
        hi = traj.turn_starts[turn + 1] if turn + 1 < len(traj.turn_starts) else hi
    boxes = []
    for i in range(lo, hi):
        tok = html.escape(tokenizer.decode([traj.token_ids[i]], skip_special_tokens=False))
        tok = tok.replace("\n", "&#8629;<br>") or "&#8203;"
        cls = "ar1-act" if traj.action_mask[i] else "ar1-ctx"
        boxes.append(
            f'<span class="{cls}" title="#{i} id={traj.token_ids[i]} logp={traj.logprobs[i]:.3f}">{tok}</span>'
        )
    turns = range(len(traj.turns)) if turn is None else [turn]
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{:+.3f}</td><td>{}</td><td><pre style='margin:0'>{}</pre></td></tr>".format(
            k,
            html.escape(str(traj.turns[k].get("stop"))),
            traj.turns[k]["reward"],
            html.escape(str((traj.turns[k].get("info") or {}).get("kind"))),
            html.escape(traj.turns[k]["observation"][:400]),
        )
        for k in turns
    )
    head = (
        f"<b>{html.escape(traj.example.question)}</b> gold: {html.escape(traj.example.answer)} | "
        f"answer: {html.escape(str(traj.answer))} | stop: {traj.stop_reason}"
        f"{' (truncated)' if traj.truncated else ''} | turns: {len(traj.turns)} | "
        f"<span style='background:{ACTION_COLOUR}'>model tokens</span> "
        f"<span style='background:{CONTEXT_COLOUR}'>prompt / tool tokens</span>"
    )
    table = (
        "<table><tr><th>turn</th><th>stop</th><th>reward</th><th>kind</th><th>observation (400 chars)</th></tr>"
        f"{rows}</table>"
    )
    style = (
        f"<style>.ar1-act{{background:{ACTION_COLOUR}}} .ar1-ctx{{background:{CONTEXT_COLOUR}}} "
        ".ar1-act,.ar1-ctx{border-radius:2px}</style>"
    )
    body = "".join(boxes)
    return f"{style}<div style='font-family:monospace;font-size:12px;line-height:1.7'>{head}<div>{body}</div>{table}</div>"


# ------------------------------------------------------------------------------------ Markdown tables
def _cell(value, floatfmt: str) -> str:
    """One table cell: floats by `floatfmt`, None and NaN empty, `|` escaped, line breaks as spaces."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = format(value, floatfmt) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_rows(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".3g") -> str:
    """A Markdown table of `rows` (one dict each); `columns` defaults to the keys in first-seen order, and a
    key a row lacks gives an empty cell. Floats are written with `floatfmt`."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c), floatfmt) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def config_table(configs: dict, fields: list[str]) -> str:
    """One row per config field, one column per named config (`{name: Config}`)."""
    rows = [{"field": f"`{f}`", **{name: getattr(c, f) for name, c in configs.items()}} for f in fields]
    return markdown_rows(rows, ["field", *configs], floatfmt="g")


def _with_ci(value: float, ci) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def before_after_table(report: dict) -> str:
    """Held-out EM before and after RL from a run's report.json (`runs.demo`): by question kind, the
    multi-hop pool (bridge + 3-hop) and all questions with their 95% intervals, and searches per question."""
    before, after = report["em_by_kind_before"], report["em_by_kind_after"]
    rows = [{"held-out EM": k, "before RL": before.get(k), "after RL": after[k]} for k in sorted(after)]
    rows.append(
        {
            "held-out EM": f"**bridge + 3-hop** (n={report['multihop_n']})",
            "before RL": _with_ci(report["multihop_em_before"], report["multihop_em_before_ci95"]),
            "after RL": _with_ci(report["multihop_em_after"], report["multihop_em_after_ci95"]),
        }
    )
    rows.append(
        {
            "held-out EM": f"**all** (n={report['after']['n']})",
            "before RL": _with_ci(report["em_before"], report["em_before_ci95"]),
            "after RL": _with_ci(report["em_after"], report["em_after_ci95"]),
        }
    )
    rows.append(
        {
            "held-out EM": "searches per question",
            "before RL": report["mean_searches_before"],
            "after RL": report["mean_searches_after"],
        }
    )
    return markdown_rows(rows, floatfmt=".2f")


def kinds_table(records: dict[str, dict], kinds=("single", "comparison", "bridge", "3hop")) -> str:
    """Held-out EM by question kind before -> after RL, one row per run record (`runs.shipped_runs()`), each
    with its 95% interval (over the kind's questions), and the questions of each kind."""
    rows = []
    for name, rec in records.items():
        r = rec["report"]
        row = {"run": name, "seed": r["seed"]}
        for k in kinds:
            before = _with_ci(r["em_by_kind_before"][k], r["em_by_kind_before_ci95"][k])
            after = _with_ci(r["em_by_kind_after"][k], r["em_by_kind_after_ci95"][k])
            row[f"{k} (n={r['n_by_kind'][k]})"] = f"{before} -> {after}"
        rows.append(row)
    return markdown_rows(rows)


def _run_kind(report: dict) -> tuple[str, str]:
    """What a shipped run varies: its algorithm and whether the process reward was on."""
    return report["config"]["algo"].upper(), "on" if report["use_process_reward"] else "off"


def _recipe(report: dict) -> str:
    """A run's whole config but its seed: runs with the same recipe differ in the seed only."""
    return json.dumps({k: v for k, v in report["config"].items() if k != "seed"}, sort_keys=True, default=str)


def runs_table(records: dict[str, dict]) -> str:
    """The shipped demo runs (`runs.shipped_runs()`): one row per run, then, for each (algorithm, process
    reward) that several seeds ran with the same config, the mean over the seeds with their range. Runs are
    grouped by the config their report says they ran (all of it but the seed), not by their names."""
    rows, groups = [], {}
    for name, rec in records.items():
        r = rec["report"]
        algo, pr = _run_kind(r)
        groups.setdefault(_recipe(r), []).append(r)
        rows.append(
            {
                "run": name,
                "algorithm": algo,
                "process reward": pr,
                "seed": r["seed"],
                "EM before -> after RL": f"{_with_ci(r['em_before'], r['em_before_ci95'])} -> "
                f"{_with_ci(r['em_after'], r['em_after_ci95'])}",
                "bridge + 3-hop EM before -> after": f"{_with_ci(r['multihop_em_before'], r['multihop_em_before_ci95'])}"
                f" -> {_with_ci(r['multihop_em_after'], r['multihop_em_after_ci95'])} (n={r['multihop_n']})",
                "searches before -> after": f"{r['mean_searches_before']:.2f} -> {r['mean_searches_after']:.2f}",
            }
        )
    for reps in groups.values():
        if len(reps) < 2:
            continue
        algo, pr = _run_kind(reps[0])

        def mean(key: str, reps=reps) -> str:
            xs = [r[key] for r in reps]
            return f"{sum(xs) / len(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

        rows.append(
            {
                "run": f"**mean over {len(reps)} seeds**",
                "algorithm": algo,
                "process reward": pr,
                "seed": ", ".join(str(r["seed"]) for r in reps),
                "EM before -> after RL": f"{mean('em_before')} -> {mean('em_after')}",
                "bridge + 3-hop EM before -> after": f"{mean('multihop_em_before')} -> {mean('multihop_em_after')}",
                "searches before -> after": f"{mean('mean_searches_before')} -> {mean('mean_searches_after')}",
            }
        )
    return markdown_rows(rows)


def missing_samples_note(data_dir: str | Path, samples) -> str | None:
    """One line saying which real-dataset samples (paths relative to `data_dir`, e.g.
    `data.DEFAULT_SAMPLES.values()`) are missing and how to get them; None when all are there."""
    missing = [s for s in samples if not (Path(data_dir) / s).is_file()]
    if not missing:
        return None
    return (
        f"No real-dataset samples in {data_dir} (missing: {', '.join(missing)}): shown here is the generated "
        "world only. To add HotpotQA and 2Wiki, put the samples there or set AGENTR1_DATA to their folder "
        "(data/README.md says where they come from), or run online (the Hugging Face hub)."
    )
