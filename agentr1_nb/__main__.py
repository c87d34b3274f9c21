"""Command line: `python -m agentr1_nb COMMAND ...` (see `--help`).

Each command is a thin wrapper over one function of the package, so notebooks and the command line run
the same code. Commands that measure something print one JSON line with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import PRESETS, get_config
from .env import PROMPT_STYLES


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "cpu_demo") -> None:
    p.add_argument("--preset", default=default_preset, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Config field overrides")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m agentr1_nb",
        description="Agent-R1 in notebooks: multi-turn tool-using agents trained with RL.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, bitsandbytes, resolved CPU default model path")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("prepare", help="convert and cache the CPU default model (idempotent)")
    _add_config_args(p)

    p = sub.add_parser("bench", help="benchmarks that print measured numbers")
    p.add_argument("what", choices=["logprobs", "rollout"])
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("retrieval", help="recall@k of a retriever on a dataset")
    p.add_argument("--dataset", required=True, help="hotpotqa, 2wiki, musique or generated")
    p.add_argument("--data-path", default="", help="question file (empty: generated world)")
    p.add_argument("--corpus", default="", help="passage file; default: union of the questions' passages")
    p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("train", help="train with RL (any preset; resumes from --out if a checkpoint exists)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    _add_config_args(p)

    p = sub.add_parser("demo", help="the main job: GRPO on the generated world on a CPU, before/after EM")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("eval", help="evaluate a method on a dataset")
    p.add_argument("--method", choices=["naive_rag", "tool_call", "agent"], required=True)
    p.add_argument("--adapter", default="", help="LoRA adapter folder for --method agent")
    p.add_argument("--dataset", required=True, help="hotpotqa, 2wiki, musique or generated")
    p.add_argument("--data-path", default="")
    p.add_argument("--corpus", default="")
    p.add_argument("--limit", type=int, default=0, help="first N questions (0 = all)")
    p.add_argument("--out", default="", help="folder for per-question JSON lines")
    p.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default=None,
        help="a baseline's prompt (default: naive_rag follows the preset, tool_call is zero-shot); "
        "few_shot adds one worked example",
    )
    p.add_argument("--json", action="store_true")
    _add_config_args(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (unknown field, missing file, malformed data, offline hub) prints one
    `error: ...` line and exits with status 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    cfg = get_config(args.preset, args.overrides)

    if args.command == "info":
        from .policy import info

        _print(info(cfg), args.json)
    elif args.command == "prepare":
        from .policy import cpu_default_model_dir

        print(cpu_default_model_dir(cfg.cache_dir))
    elif args.command == "bench":
        if args.what == "logprobs":
            from .policy import bench_logprobs

            _print(bench_logprobs(), args.json)
        else:
            from .rollout import bench_rollout

            _print(bench_rollout(cfg), args.json)
    elif args.command == "retrieval":
        from .retrieval import measure_recall

        cfg = cfg.replace(retriever=args.retriever)
        _print(measure_recall(args.dataset, args.data_path, args.corpus, args.k, cfg), args.json)
    elif args.command == "train":
        from .train import train

        train(cfg, args.out, resume=not args.no_resume)
    elif args.command == "demo":
        from .train import demo

        _print(demo(cfg, args.out), args.json)
    elif args.command == "eval":
        from .evaluate import run_eval

        cfg = cfg.replace(dataset=args.dataset, data_path=args.data_path, corpus_path=args.corpus)
        result = run_eval(
            cfg,
            args.method,
            adapter=args.adapter or None,
            limit=args.limit,
            out_dir=args.out or None,
            prompt_style=args.prompt_style,
        )
        _print(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
