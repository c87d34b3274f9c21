"""Command line: `python -m agentr1_nb COMMAND ...` (see `--help`).

Each command is a thin wrapper over one function of the package, so notebooks and the command line run
the same code. Commands that measure something print one JSON line with `--json` (strict JSON: a NaN or an
infinity is printed as null).

`COMMANDS` maps each command to the function that adds its flags and the function that runs it. Every
command takes `--preset` and `key=value` Config overrides. The command line means what it says:
- options are never abbreviated (`train --no` is not `--no-resume`, which deletes the run);
- a flag that sets a Config field (`--dataset`, `--data-path`, `--corpus`, `--retriever`, `--prompt-style`,
  `--steps`, `--eval-n`) and the same key=value with another value is an error naming both; a flag left
  out takes the key=value, then the preset (`_flag_or_key`);
- bad input (an unknown field or value, a number out of range, an empty `--out`, a missing or unreadable
  file, malformed data, an offline hub, a run folder in use) prints one `error: ...` line and exits with
  status 2, argparse's own errors included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from .config import (
    DATASETS,
    INT_LIMIT,
    METHODS,
    PRESETS,
    PROMPT_STYLES,
    RETRIEVERS,
    SEED_LIMIT,
    Config,
    get_config,
    parse_overrides,
    short_repr,
)

# ----------------------------------------------------------------------------- output


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """One line of strict JSON: NaN and infinities become null (`json.dumps` would write `NaN`)."""
    return json.dumps(_finite(obj), allow_nan=False)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(dumps(result), flush=True)
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


def _one_line(text: str) -> str:
    """An error message on one line (a message may quote a file's lines)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _is_main_process() -> bool:
    """Under `accelerate launch`, only rank 0 prints the JSON line."""
    return os.environ.get("RANK", "0") == "0"


# ----------------------------------------------------------------------------- argument types and groups


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one `error: ...` line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_in(low: int, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """An argparse type: an int in [low, high) (high None: below 2**63, shown as inf), else a message with
    the range."""

    def parse(text: str) -> int:
        valid = f"valid: [{low}, {'inf' if high is None else high}){note}"
        try:
            value = int(text)
        except ValueError:  # also past Python's 4,300-digit conversion limit
            raise argparse.ArgumentTypeError(f"{short_repr(text)} is not an int; {valid}") from None
        if high is None and value >= INT_LIMIT:
            valid = f"valid: [{low}, 2**63){note}"
        if value < low or value >= (INT_LIMIT if high is None else high):
            raise argparse.ArgumentTypeError(f"{short_repr(value)} is out of range; {valid}")
        return value

    parse.__name__ = "int"
    return parse


def _folder(text: str) -> str:
    """An argparse type: a folder path that is not empty (an empty --out would write into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; name a folder, e.g. runs/x")
    return text


def _add_config_args(
    p: argparse.ArgumentParser, default_preset: str = "cpu_demo", positional: bool = True
) -> None:
    """--preset and the Config overrides: positional `key=value ...`, or `--set key=value` (repeatable) for a
    command whose positional argument is something else."""
    p.add_argument("--preset", default=default_preset, help=f"one of: {', '.join(PRESETS)}")
    p.set_defaults(positional_overrides=positional)
    if positional:
        p.add_argument("overrides", nargs="*", metavar="key=value", help="Config field overrides")
    else:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="key=value",
            help="a Config override",
        )


def _add_json(p: argparse.ArgumentParser, help: str = "print the result as one JSON line") -> None:
    p.add_argument("--json", action="store_true", help=help)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The data flags of `retrieval` and `eval`; each sets its Config field (left out: the key=value's or
    the preset's value)."""
    p.add_argument("--dataset", required=True, help=f"{', '.join(DATASETS)}; sets dataset")
    p.add_argument(
        "--data-path",
        default=None,
        help="question file; sets data_path (default: the generated world / sample)",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="passage file; sets corpus_path (default: the union of the questions' passages)",
    )


def _flag_or_key(args: argparse.Namespace, user: dict, dest: str, key: str, default: Any = None) -> Any:
    """The value of a flag that sets the Config field `key`: the flag if given, else the `key=value`
    override, else `default`. The flag and the override given with two different values is an error naming
    both: neither silently wins."""
    given = getattr(args, dest)
    if given is not None and key in user and user[key] != given:
        flag = "--" + dest.replace("_", "-")
        raise ValueError(
            f"{flag} {short_repr(given)} and {key}={short_repr(user[key])} disagree: give one of them"
        )
    return given if given is not None else user.get(key, default)


def _unique(flag: str, values: list | None) -> None:
    """A value listed twice (`--seeds 0 0`) would count one saved run twice: an error naming it."""
    seen: set = set()
    for v in values or []:
        if v in seen:
            raise ValueError(f"{flag} lists {v} twice; name each once")
        seen.add(v)


# ----------------------------------------------------------------------------- the commands' flags


def _info_args(p: argparse.ArgumentParser) -> None:
    _add_json(p)
    _add_config_args(p)


def _prepare_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what", choices=["logprobs", "rollout", "rollout-account", "step", "update", "parser", "trainers"]
    )
    p.add_argument(
        "--steps",
        type=_int_in(1),
        default=None,
        help="bench trainers: training steps per trainer (default 2)",
    )
    _add_json(p)
    _add_config_args(p)


def _retrieval_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--retriever", choices=RETRIEVERS, default=None, help="sets retriever (default: bm25)")
    p.add_argument("--k", type=_int_in(1), default=5, help="recall@k")
    _add_json(p)
    _add_config_args(p)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=_folder, required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument(
        "--no-resume", action="store_true", help="start over, deleting --out's metrics and checkpoints"
    )
    _add_json(p, "print the last step's metrics as one JSON line")
    p.add_argument(
        "--backend",
        choices=["ours", "trl"],
        default="ours",
        help="ours: train.py; trl: TRL's GRPOTrainer with our rollout (pip install agentr1_nb[trl])",
    )
    p.add_argument(
        "--trl",
        action="append",
        default=[],
        metavar="key=value",
        help="a trl.GRPOConfig field for --backend trl, e.g. --trl use_vllm=true --trl vllm_mode=server",
    )
    _add_config_args(p)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=_folder, default="runs/demo")
    _add_json(p)
    _add_config_args(p)


def _ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "question",
        nargs="?",
        default=None,
        help="a held-out question's number or any question about the generated world (default: a bridge "
        "question the shipped adapter answers)",
    )
    p.add_argument(
        "--adapter", default="shipped", help='"shipped", a run or adapter folder, or "" (untrained)'
    )
    _add_json(p)
    _add_config_args(p, positional=False)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--adapter", default="", help="LoRA adapter folder for --method agent")
    _add_data_args(p)
    p.add_argument(
        "--limit", type=_int_in(0, note=", 0 = all"), default=0, help="first N questions (0 = all)"
    )
    p.add_argument(
        "--out", type=_folder, default=None, help="folder for per-question JSON lines (default runs/eval)"
    )
    p.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default=None,
        help="a baseline's prompt; sets prompt_style (default: naive_rag follows the preset, tool_call is "
        "zero-shot); few_shot adds one worked example",
    )
    _add_json(p)
    _add_config_args(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=_folder, default="runs/comparison", help="folder of the runs and results.json"
    )
    p.add_argument(
        "--seeds",
        type=_int_in(0, SEED_LIMIT),
        nargs="+",
        default=None,
        help="training seeds, each once (default 0 1 2); the key=value seed is not used here",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=None,
        help="variant names to run, each once (default all, none with --adapter; none given: baselines only)",
    )
    p.add_argument(
        "--steps", type=_int_in(0), default=None, help="RL steps per run; sets steps (default: preset's)"
    )
    p.add_argument(
        "--eval-n",
        type=_int_in(1),
        default=None,
        help="questions per evaluation; sets eval_questions (default: preset's)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="LABEL=PATH[,PATH...]",
        help="evaluate an already-trained adapter (a row LABEL; several folders are its seeds; a run folder or "
        '"shipped" works too) on every agent set, under the model and prompt of its training run; repeatable; '
        "without --variants no variant is trained",
    )
    p.add_argument(
        "--export-real",
        nargs="?",
        const="shipped",
        default=None,
        metavar="PATH",
        help="after the comparison, write the adapters' and baselines' rows with per-question EM to PATH "
        "(default: the package's results/agents_on_real.json, which notebook 06 shows); needs --adapter",
    )
    p.add_argument(
        "--agent-sets",
        nargs="+",
        choices=DATASETS,
        default=None,
        help="datasets the agents (variants, adapters) are evaluated on (default: generated, hotpotqa and 2wiki "
        "on a CPU preset)",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines (a worker of a split run)")
    p.add_argument(
        "--baseline-sets",
        nargs="+",
        choices=DATASETS,
        default=None,
        help="datasets the baselines are evaluated on (default: generated, hotpotqa and 2wiki on a CPU preset)",
    )
    p.add_argument("--fresh", action="store_true", help="redo finished runs instead of reading them back")
    p.add_argument("--fast", action="store_true", help="a smoke run in minutes on a CPU (not results)")
    p.add_argument(
        "--saved-only", action="store_true", help="run nothing: the table of the runs saved so far"
    )
    _add_json(p, "print the result rows as one JSON line")
    _add_config_args(p)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="a tiny random Qwen2 with the preset's settings (CPU)")
    p.add_argument(
        "--steps",
        type=_int_in(1),
        default=None,
        help="training steps of the train phase; sets steps (default 2; 1 with --full-size)",
    )
    p.add_argument(
        "--weights",
        choices=["auto", "pretrained", "random"],
        default="auto",
        help="the preset's model, random weights of its architecture, or pretrained if loadable (auto)",
    )
    p.add_argument("--no-ppo", action="store_true", help="skip the PPO step")
    p.add_argument(
        "--full-size",
        action="store_true",
        help="rehearse the preset at its real size (on a CPU: bf16/fp32, one group of 2, 2 turns of 8 tokens, one GRPO step): "
        "its tensors measured against memory_budget, and the preset's time plan",
    )
    _add_json(p, "one JSON line per phase")
    _add_config_args(p, default_preset="colab_t4")


# ----------------------------------------------------------------------------- the commands
# Each stage module is imported by the command that runs it, on purpose: `--help` and a bad argument answer
# in a fraction of a second instead of after torch and transformers have loaded.


def _info(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .bench import info

    _print(info(cfg), args.json)


def _prepare(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .policy import cpu_default_model_dir

    print(cpu_default_model_dir(cfg.cache_dir))


def _bench(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from . import bench

    if args.what != "trainers" and args.steps is not None:
        raise ValueError(f"--steps applies to bench trainers, not bench {args.what}")
    if args.what == "logprobs":
        _print(bench.bench_logprobs(), args.json)
    elif args.what == "rollout":
        _print(bench.bench_rollout(cfg), args.json)
    elif args.what == "rollout-account":
        _print(bench.bench_rollout_account(cfg), args.json)
    elif args.what == "step":
        _print(bench.bench_step(cfg), args.json)
    elif args.what == "update":
        _print(bench.bench_update(cfg), args.json)
    elif args.what == "trainers":
        _print(bench.bench_trainers(cfg, steps=_flag_or_key(args, user, "steps", "steps", 2)), args.json)
    else:
        _print(bench.bench_parser(), args.json)


def _data_config(args: argparse.Namespace, cfg: Config, user: dict) -> Config:
    """`cfg` with the data flags of `retrieval` / `eval` (`_add_data_args`) applied."""
    return cfg.replace(
        dataset=_flag_or_key(args, user, "dataset", "dataset"),
        data_path=_flag_or_key(args, user, "data_path", "data_path", cfg.data_path),
        corpus_path=_flag_or_key(args, user, "corpus", "corpus_path", cfg.corpus_path),
    )


def _retrieval(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .retrieval import measure_recall

    cfg = _data_config(args, cfg, user)
    cfg = cfg.replace(retriever=_flag_or_key(args, user, "retriever", "retriever", cfg.retriever))
    _print(measure_recall(cfg.dataset, cfg.data_path, cfg.corpus_path, args.k, cfg), args.json)


def _train(args: argparse.Namespace, cfg: Config, user: dict) -> int:
    given: dict[str, str] = {}
    for key, _, value in (item.partition("=") for item in args.trl):
        if given.setdefault(key.strip(), value) != value:
            raise ValueError(f"--trl {key.strip()} is given twice, as {given[key.strip()]!r} and {value!r}")
    if args.backend == "trl":
        from .trl_backend import parse_trl_args, train_trl

        history = train_trl(cfg, args.out, resume=not args.no_resume, **parse_trl_args(args.trl))
    else:
        if args.trl:
            raise ValueError("--trl sets TRL's GRPOConfig fields: it needs --backend trl")
        from .train import train

        history = train(cfg, args.out, resume=not args.no_resume)
    if args.json and history and _is_main_process():
        _print(history[-1], True)
    return 130 if history.interrupted else 0


def _demo(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .runs import demo

    _print(demo(cfg, args.out), args.json)


def _adapter_rows(values: list[str] | None) -> dict[str, list[str]] | None:
    """`--adapter LABEL=PATH[,PATH...]` (repeatable) as {label: [folders]}; a value without "=", an empty
    label or folder, or a label given twice is an error naming it (the folders are checked by `compare`)."""
    if values is None:
        return None
    rows: dict[str, list[str]] = {}
    for value in values:
        label, eq, paths = value.partition("=")
        folders = [f.strip() for f in paths.split(",")]
        if not eq or not label.strip():
            raise ValueError(f"--adapter {short_repr(value)}: give LABEL=PATH[,PATH...]")
        if not any(folders):
            raise ValueError(f"--adapter {short_repr(value)}: no adapter folder after '='")
        if not all(folders):
            raise ValueError(f"--adapter {short_repr(value)}: an empty folder in the comma-separated list")
        if label.strip() in rows:
            raise ValueError(
                f"--adapter label {label.strip()!r} is given twice; give its folders (seeds) once, comma-separated"
            )
        rows[label.strip()] = folders
    return rows


def _compare(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    if "seed" in user:
        raise ValueError(f"seed={user['seed']}: compare trains one run per seed; use --seeds {user['seed']}")
    _unique("--seeds", args.seeds)
    _unique("--variants", args.variants)
    _unique("--baseline-sets", args.baseline_sets)
    _unique("--agent-sets", args.agent_sets)
    adapters = _adapter_rows(args.adapter)
    if args.export_real is not None and not adapters:
        raise ValueError("--export-real writes the adapters' rows: it needs --adapter LABEL=PATH")
    if args.export_real is not None and args.fast:
        raise ValueError("--export-real with --fast: a smoke run's numbers are not results")
    if args.export_real is not None and not args.export_real.strip():
        raise ValueError("--export-real '' is an empty path; name a file or leave the value out")
    from .compare import FAST_OVERRIDES, SHIPPED_REAL, compare, export_real, markdown_table

    clash = [k for k in user if k != "steps" and k in FAST_OVERRIDES and user[k] != FAST_OVERRIDES[k]]
    if args.fast and clash:  # --fast would silently replace them (steps is --steps: it stays the user's)
        k = clash[0]
        raise ValueError(f"--fast sets {k}={FAST_OVERRIDES[k]} and {k}={user[k]} was given: drop one of them")
    res = compare(
        cfg,
        args.out,
        seeds=args.seeds,
        variants=args.variants,
        adapters=adapters,
        eval_n=_flag_or_key(args, user, "eval_n", "eval_questions"),
        steps=_flag_or_key(args, user, "steps", "steps"),
        baselines=not args.no_baselines,
        agent_sets=args.agent_sets,
        baseline_sets=args.baseline_sets,
        fast=args.fast,
        fresh=args.fresh,
        saved_only=args.saved_only,
    )
    exported = None
    if args.export_real is not None:
        dest = SHIPPED_REAL if args.export_real == "shipped" else args.export_real
        exported = str(export_real(args.out, dest))
    if args.json:
        shown = {"rows": res["rows"], "missing": res["missing"], "minutes": res["minutes"]}
        print(dumps(dict(shown, exported=exported) if exported else shown), flush=True)
    else:
        print(markdown_table(res["rows"]))
        if exported:
            print(f"wrote {exported}")


def _check(args: argparse.Namespace, cfg: Config, user: dict) -> int:
    from .check import run_check

    lines = run_check(
        args.preset,
        tiny=args.tiny,
        steps=_flag_or_key(args, user, "steps", "steps", 1 if args.full_size else 2),
        overrides=args.overrides,
        weights=args.weights,
        ppo=not args.no_ppo,
        emit=lambda line: _print(line, args.json),
        full_size=args.full_size,
    )
    return 0 if lines[-1]["ok"] else 1


def _ask(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .runs import ASK_DEFAULT, ask

    question = ASK_DEFAULT if args.question is None else args.question
    res = ask(cfg, question, adapter=args.adapter or None)
    if args.json:
        print(dumps(res), flush=True)
        return
    print(f"question: {res['question']}")
    for k, turn in enumerate(res["turns"], 1):
        print(f"--- turn {k}\naction      > {turn['action'].strip()}")
        if turn["observation"].strip():
            print(f"observation > {turn['observation'].strip()[:600]}")
    gold = f"  gold: {res['gold'][0]!r}  EM {res['em']:.0f}" if res["gold"] else ""
    print(f"answer: {res['answer']!r}{gold}  ({res['searches']} searches)")


def _eval(args: argparse.Namespace, cfg: Config, user: dict) -> None:
    from .runs import run_eval

    if args.method == "agent" and "prompt_style" in user:
        raise ValueError(
            f"prompt_style={user['prompt_style']}: an agent uses the prompt its adapter was trained with"
        )
    result = run_eval(
        _data_config(args, cfg, user),
        args.method,
        adapter=args.adapter or None,
        limit=args.limit,
        out_dir=args.out,
        prompt_style=_flag_or_key(args, user, "prompt_style", "prompt_style"),
    )
    _print(result, args.json)


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config, dict], int | None]
    """Runs the command on its arguments, the built Config and the parsed key=value overrides; returns
    the exit status (None: 0)."""


COMMANDS: dict[str, Command] = {
    "info": Command("versions, device, bitsandbytes, resolved CPU default model path", _info_args, _info),
    "prepare": Command("convert and cache the CPU default model (idempotent)", _prepare_args, _prepare),
    "bench": Command("benchmarks that print measured numbers", _bench_args, _bench),
    "retrieval": Command("recall@k of a retriever on a dataset", _retrieval_args, _retrieval),
    "train": Command(
        "train with RL (any preset; resumes from --out if a checkpoint exists)", _train_args, _train
    ),
    "demo": Command("the main job: GRPO on the generated world on a CPU, before/after EM", _demo_args, _demo),
    "ask": Command("watch the trained agent (the shipped adapter) answer one question", _ask_args, _ask),
    "eval": Command("evaluate a method on a dataset", _eval_args, _eval),
    "compare": Command(
        "the algorithm comparison of notebook 06: every variant x seed (or trained adapters, --adapter), the "
        "baselines, a results table",
        _compare_args,
        _compare,
    ),
    "check": Command(
        "self-check of this machine with a preset (no hub needed): load, logits, rollout, log-prob ratio, "
        "GRPO and PPO steps, memory against memory_budget; one line per phase and a summary",
        _check_args,
        _check,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m agentr1_nb",
        description="Agent-R1 in notebooks: multi-turn tool-using agents trained with RL.",
        epilog="Options are never abbreviated. A flag that sets a Config field (e.g. --retriever) and the "
        "same key=value must agree; a flag left out takes the key=value. Bad input: one 'error: ...' line, "
        "exit status 2.",
        allow_abbrev=False,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_args(sub.add_parser(name, help=command.help, allow_abbrev=False))
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`build_parser().parse_args`, except that a `key=value` after an option that follows another
    positional argument (`bench trainers --json steps=5`, which argparse leaves unmatched) is an override
    too. Anything else unmatched is an error."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and (not args.positional_overrides or any(a.startswith("-") or "=" not in a for a in extra)):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (unknown field or value, missing or unreadable file, malformed data,
    offline hub, a run folder in use) prints one `error: ...` line and exits with status 2 instead of a
    traceback; Ctrl-C exits with 130 (after `train` has saved what it can)."""
    args = parse_args(argv)
    try:
        user = parse_overrides(args.overrides, strict=True)
        cfg = get_config(args.preset, user)  # every field checked here, before any model loads
        return COMMANDS[args.command].run(args, cfg, user) or 0
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
