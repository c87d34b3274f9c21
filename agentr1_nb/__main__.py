"""Command line: `python -m agentr1_nb COMMAND ...` (see `--help`).

Each command is a thin wrapper over one function of the package, so notebooks and the command line run
the same code. Commands that measure something print one JSON line with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import DATASETS, METHODS, PRESETS, PROMPT_STYLES, RETRIEVERS, get_config


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


def _add_config_args(
    p: argparse.ArgumentParser, default_preset: str = "cpu_demo", positional: bool = True
) -> None:
    """--preset and the Config overrides: positional `key=value ...`, or `--set key=value` (repeatable) for a
    command whose positional argument is something else."""
    p.add_argument("--preset", default=default_preset, help=f"one of: {', '.join(PRESETS)}")
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
    p.add_argument("what", choices=["logprobs", "rollout", "step", "parser", "trainers"])
    p.add_argument("--steps", type=int, default=2, help="bench trainers: training steps per trainer")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("retrieval", help="recall@k of a retriever on a dataset")
    p.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    p.add_argument("--data-path", default="", help="question file (empty: generated world)")
    p.add_argument("--corpus", default="", help="passage file; default: union of the questions' passages")
    p.add_argument("--retriever", choices=RETRIEVERS, default="bm25")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("train", help="train with RL (any preset; resumes from --out if a checkpoint exists)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument(
        "--no-resume", action="store_true", help="start over, deleting --out's metrics and checkpoints"
    )
    p.add_argument("--json", action="store_true", help="print the last step's metrics as one JSON line")
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

    p = sub.add_parser("demo", help="the main job: GRPO on the generated world on a CPU, before/after EM")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("ask", help="watch the trained agent (the shipped adapter) answer one question")
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
    p.add_argument("--json", action="store_true")
    _add_config_args(p, positional=False)

    p = sub.add_parser("eval", help="evaluate a method on a dataset")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--adapter", default="", help="LoRA adapter folder for --method agent")
    p.add_argument("--dataset", required=True, help=", ".join(DATASETS))
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

    p = sub.add_parser(
        "compare",
        help="the algorithm comparison of notebook 06: every variant x seed, the baselines, a results table",
    )
    p.add_argument("--out", default="runs/comparison", help="folder of the runs and results.json")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    p.add_argument(
        "--variants", nargs="*", default=None, help="variant names to run (default all; none: baselines only)"
    )
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (default: the preset's)")
    p.add_argument("--eval-n", type=int, default=None, help="questions per evaluation (default: preset's)")
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
    p.add_argument("--json", action="store_true", help="print the result rows as one JSON line")
    _add_config_args(p)

    p = sub.add_parser(
        "check",
        help="self-check of this machine with a preset (no hub needed): load, logits, rollout, log-prob ratio, "
        "GRPO and PPO steps, memory against memory_budget; one line per phase and a summary",
    )
    p.add_argument("--tiny", action="store_true", help="a tiny random Qwen2 with the preset's settings (CPU)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps of the train phase (2; 1 with --full-size)"
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
        help="rehearse the preset at its real size (on a CPU: bf16/fp32, 2 turns of 16 tokens, no PPO step): "
        "its tensors measured against memory_budget, and the preset's time plan",
    )
    p.add_argument("--json", action="store_true", help="one JSON line per phase")
    _add_config_args(p, default_preset="colab_t4")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (unknown field or value, missing or unreadable file, malformed data,
    offline hub, a run folder in use) prints one `error: ...` line and exits with status 2 instead of a
    traceback; Ctrl-C exits with 130 (after `train` has saved what it can)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # The stage modules are imported per command, on purpose: `--help` and a bad argument answer in a
    # fraction of a second instead of after torch and transformers have loaded.
    cfg = get_config(args.preset, args.overrides)  # every field checked here, before any model loads

    if args.command == "info":
        from .bench import info

        _print(info(cfg), args.json)
    elif args.command == "prepare":
        from .policy import cpu_default_model_dir

        print(cpu_default_model_dir(cfg.cache_dir))
    elif args.command == "bench":
        from . import bench

        if args.what == "logprobs":
            _print(bench.bench_logprobs(), args.json)
        elif args.what == "rollout":
            _print(bench.bench_rollout(cfg), args.json)
        elif args.what == "step":
            _print(bench.bench_step(cfg), args.json)
        elif args.what == "trainers":
            _print(bench.bench_trainers(cfg, steps=args.steps), args.json)
        else:
            _print(bench.bench_parser(), args.json)
    elif args.command == "retrieval":
        from .retrieval import measure_recall

        cfg = cfg.replace(retriever=args.retriever)
        _print(measure_recall(args.dataset, args.data_path, args.corpus, args.k, cfg), args.json)
    elif args.command == "train":
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
        if history.interrupted:
            return 130
    elif args.command == "demo":
        from .runs import demo

        _print(demo(cfg, args.out), args.json)
    elif args.command == "compare":
        from .compare import compare, markdown_table

        res = compare(
            cfg,
            args.out,
            seeds=args.seeds,
            variants=args.variants,
            eval_n=args.eval_n,
            steps=args.steps,
            baselines=not args.no_baselines,
            baseline_sets=args.baseline_sets,
            fast=args.fast,
            fresh=args.fresh,
            saved_only=args.saved_only,
        )
        if args.json:
            print(
                json.dumps({"rows": res["rows"], "missing": res["missing"], "minutes": res["minutes"]}),
                flush=True,
            )
        else:
            print(markdown_table(res["rows"]))
    elif args.command == "check":
        from .check import run_check

        lines = run_check(
            args.preset,
            tiny=args.tiny,
            steps=args.steps if args.steps is not None else (1 if args.full_size else 2),
            overrides=args.overrides,
            weights=args.weights,
            ppo=not args.no_ppo,
            emit=lambda line: _print(line, args.json),
            full_size=args.full_size,
        )
        return 0 if lines[-1]["ok"] else 1
    elif args.command == "ask":
        from .runs import ASK_DEFAULT, ask

        question = ASK_DEFAULT if args.question is None else args.question
        res = ask(cfg, question, adapter=args.adapter or None)
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"question: {res['question']}")
            for k, turn in enumerate(res["turns"], 1):
                print(f"--- turn {k}\naction      > {turn['action'].strip()}")
                if turn["observation"].strip():
                    print(f"observation > {turn['observation'].strip()[:600]}")
            gold = f"  gold: {res['gold'][0]!r}  EM {res['em']:.0f}" if res["gold"] else ""
            print(f"answer: {res['answer']!r}{gold}  ({res['searches']} searches)")
    elif args.command == "eval":
        from .runs import run_eval

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


def _is_main_process() -> bool:
    """Under `accelerate launch`, only rank 0 prints the JSON line."""
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
