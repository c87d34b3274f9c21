"""The TRL backend: the rollout func's ids, masks and log-probs against our rollout, the reward against ours,
the id bookkeeping of the turn-by-turn engine path (a scripted engine and a greedy reference engine), the
GRPOConfig mapping, two TRL steps through the command line, the missing-TRL error, and two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_RUN, make_tiny_model, merge_overrides, tiny_lora_policy

from agentr1_nb import experiment, trl_backend
from agentr1_nb.__main__ import main
from agentr1_nb.actions import STOP_STRINGS, format_call
from agentr1_nb.checkpoint import load_metrics
from agentr1_nb.config import get_config
from agentr1_nb.env import build_task
from agentr1_nb.logprobs import token_logprobs
from agentr1_nb.rewards import score_trajectory, trajectory_scores
from agentr1_nb.rollout import rollout
from agentr1_nb.vllm_engine import engine_rollout

TINY = TINY_RUN + ["minibatch_size=4", "micro_batch_size=2", "sft_warmup_steps=0", "eval_questions=2"]


def _cfg(*extra):
    return get_config("cpu_demo", TINY + list(extra))


def _policy(tokenizer, seed: int = 0):
    return tiny_lora_policy(tokenizer, seed=seed)


def _grouped_prompts(task, n_questions: int, group: int):
    """The rows TRL hands a rollout func: each question's prompt `group` times in a row."""
    data = trl_backend.build_dataset(task, task.train[:n_questions])
    prompts = [row["prompt"] for row in data for _ in range(group)]
    examples = [ex for ex in task.train[:n_questions] for _ in range(group)]
    return prompts, examples


def _env_runs(traj):
    """(start, end) of each observation run inside the completion: tokens between two turns."""
    return [(e + 1, s) for e, s in zip(traj.turn_ends, traj.turn_starts[1:])]


# ----------------------------------------------------------------------------- the rollout func


def test_rollout_func_returns_our_rollout_exactly(tokenizer):
    cfg = _cfg()
    task = build_task(cfg, tokenizer)
    model = _policy(tokenizer)
    prompts, examples = _grouped_prompts(task, 2, 2)
    func = trl_backend.make_rollout_func(task, cfg, tokenizer, log=trl_backend.RolloutLog())

    torch.manual_seed(0)
    out = func(prompts, SimpleNamespace(model=model))
    torch.manual_seed(0)
    trajs = rollout(model, tokenizer, examples, task.make_env, cfg, group_size=1)

    assert {"prompt_ids", "completion_ids", "logprobs", "env_mask"} <= set(out)
    assert all(len(v) == len(prompts) for v in out.values())
    saw_observation = False
    for i, t in enumerate(trajs):
        p = t.prompt_len
        # every token is the one our rollout produced; env_mask 1 exactly where it sampled
        assert out["prompt_ids"][i] + out["completion_ids"][i] == t.token_ids
        assert out["env_mask"][i] == t.action_mask[p:]
        assert out["logprobs"][i] == t.logprobs[p:]
        assert len(out["completion_ids"][i]) == len(out["env_mask"][i]) == len(out["logprobs"][i])
        assert out["example_id"][i] == examples[i].id
        # decoding each env_mask-0 run gives exactly the env's observation text (scaffolding included)
        for k, (a, b) in enumerate(_env_runs(t)):
            assert set(t.action_mask[a:b]) == {0}
            text = tokenizer.decode(t.token_ids[a:b], skip_special_tokens=False)
            assert text == t.turns[k]["info"]["obs_text"]
            assert t.turns[k]["observation"] in text
            saw_observation = True
    assert saw_observation, "no episode had an observation: the test checked nothing"

    # the log-probs are the sampler's: a full forward at the sampling temperature gives them back
    for i, t in enumerate(trajs):
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            full = token_logprobs(model, ids, temperature=cfg.temperature)[0]  # (T-1,)
        comp = torch.tensor(out["logprobs"][i])
        mask = torch.tensor(out["env_mask"][i], dtype=torch.bool)
        want = full[t.prompt_len - 1 :]
        torch.testing.assert_close(comp[mask], want[mask], atol=1e-4, rtol=1e-4)
        assert (comp[~mask] == 0).all()


def test_reward_func_equals_our_trajectory_scores(tokenizer):
    """On scripted episodes (right, wrong, malformed, no action) with process rewards and a format penalty."""
    cfg = _cfg("max_tokens_per_turn=96", "format_penalty=-0.2", "process_reward_weight=0.1")
    task = build_task(cfg, tokenizer)
    engine = ScriptedEngine(tokenizer, _scripts(task.train[:4]))
    trajs = engine_rollout(engine, tokenizer, task.train[:4], task.make_env, cfg)
    for t in trajs:
        score_trajectory(t, cfg)  # what our trainer does before its advantages
    fields = trl_backend.trl_fields(trajs, tokenizer.pad_token_id)
    (agent_reward,) = trl_backend.reward_funcs(cfg)
    # as TRL calls it: the rollout func's extra fields as keyword arguments
    extra = {
        k: v for k, v in fields.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")
    }
    got = agent_reward(prompts=None, completions=None, completion_ids=fields["completion_ids"], **extra)
    want = trajectory_scores(trajs, cfg).tolist()
    assert got == pytest.approx(want, abs=1e-6)
    assert len(set(round(x, 4) for x in got)) >= 3, got  # the scripts give different rewards
    assert any(sum(t.process_rewards) > 0 for t in trajs) and min(got) < 0 and max(got) >= 1


# ----------------------------------------------------------------------------- the turn-by-turn engine path


class ScriptedEngine:
    """A token-id engine that writes a scripted text per (question, turn), then a few junk tokens (an engine
    may run past a stop string), with made-up log-probs; it records every call."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], junk: str = " and more words"):
        self.tok, self.scripts, self.junk = tokenizer, scripts, junk
        self.calls: list[dict] = []

    def generate(self, prompt_ids, max_tokens, stop):
        outs, lps = [], []
        for hist, budget in zip(prompt_ids, max_tokens):
            text = self.tok.decode(hist, skip_special_tokens=False)
            question = next(q for q in self.scripts if f"Question: {q}" in text)
            turn = text.count("<|im_start|>assistant") - 1
            script = self.scripts[question]
            said = script[turn] if turn < len(script) else "nothing"
            ids = self.tok(said + self.junk, add_special_tokens=False)["input_ids"][:budget]
            outs.append(ids)
            lps.append([-0.01 * (k + 1) - 0.001 * turn for k in range(len(ids))])
        self.calls.append(
            {"histories": [list(h) for h in prompt_ids], "max_tokens": list(max_tokens), "out": outs}
        )
        return outs, lps


def _scripts(examples) -> dict[str, list[str]]:
    right, wrong, malformed, silent = examples[:4]
    return {
        right.question: [
            format_call("search", {"query": right.question}),
            f"<answer>{right.answer}</answer>",
        ],
        wrong.question: [format_call("search", {"query": wrong.question}), "<answer>nobody knows</answer>"],
        malformed.question: [
            "<tool_call>{'name': search}</tool_call>",
            f"<answer>{malformed.answer}</answer>",
        ],
        silent.question: [f"<answer>{silent.answer}</answer>"],
    }


def test_engine_rollout_keeps_the_engine_ids_and_appends_observations(tokenizer):
    cfg = _cfg("max_turns=3", "max_tokens_per_turn=96")
    task = build_task(cfg, tokenizer)
    examples = task.train[:4]
    engine = ScriptedEngine(tokenizer, _scripts(examples))
    trajs = engine_rollout(engine, tokenizer, examples, task.make_env, cfg)

    # one call per turn on every process, even when no episode is left (vLLM server mode gathers)
    assert len(engine.calls) == cfg.max_turns and engine.calls[-1]["histories"] == []
    sent = [(h, o, m) for c in engine.calls for h, o, m in zip(c["histories"], c["out"], c["max_tokens"])]
    for t in trajs:
        assert t.stop_reason == "answer" and len(t.turns) <= 2
        for k, (s, e) in enumerate(zip(t.turn_starts, t.turn_ends)):
            history = t.token_ids[:s]
            # the engine got the episode's exact token history (nothing decoded and re-encoded) ...
            hist, returned, budget = next(x for x in sent if x[0] == history)
            assert budget <= cfg.max_tokens_per_turn and budget <= cfg.max_total_tokens - len(history)
            kept = t.token_ids[s : e + 1]
            # ... and the turn is the prefix of what it returned, cut where our stop string ends
            assert returned[: len(kept)] == kept and len(kept) < len(returned)
            assert any(x in tokenizer.decode(kept) for x in STOP_STRINGS)
            assert not any(x in tokenizer.decode(kept[:-1]) for x in STOP_STRINGS)
            assert t.action_mask[s : e + 1] == [1] * len(kept)
            assert t.logprobs[s : e + 1] == pytest.approx(
                [-0.01 * (j + 1) - 0.001 * k for j in range(len(kept))]
            )
        for k, (a, b) in enumerate(_env_runs(t)):
            assert t.action_mask[a:b] == [0] * (b - a) and t.logprobs[a:b] == [0.0] * (b - a)
            assert (
                tokenizer.decode(t.token_ids[a:b], skip_special_tokens=False)
                == t.turns[k]["info"]["obs_text"]
            )
    right, wrong, malformed, silent = trajs
    assert right.em == 0.0 and right.answer == examples[0].answer  # scored later, by the rollout func
    assert len(silent.turns) == 1 and not malformed.tool_ok and right.num_searches == 1

    # through the rollout func: the same bookkeeping, TRL's layout
    func = trl_backend.make_rollout_func(
        task, cfg, tokenizer, engine=ScriptedEngine(tokenizer, _scripts(examples))
    )
    prompts = [row["prompt"] for row in trl_backend.build_dataset(task, examples)]
    out = func(prompts, SimpleNamespace(model=None))
    for i, t in enumerate(trajs):
        assert out["prompt_ids"][i] + out["completion_ids"][i] == t.token_ids
        assert out["env_mask"][i] == t.action_mask[t.prompt_len :]


class GreedyEngine:
    """A reference token-id engine: greedy decoding with a full forward per token, no cache, one history at
    a time; stops at eos or a stop string in the new tokens."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer

    def generate(self, prompt_ids, max_tokens, stop):
        outs, lps = [], []
        for hist, budget in zip(prompt_ids, max_tokens):
            ids, new, lp = list(hist), [], []
            with torch.no_grad():
                for _ in range(budget):
                    logp = torch.log_softmax(
                        self.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1
                    )
                    tok = int(logp.argmax())
                    ids.append(tok)
                    new.append(tok)
                    lp.append(float(logp[tok]))
                    tail = self.tok.decode(new[-16:], skip_special_tokens=False)
                    if tok == self.tok.eos_token_id or any(s in tail for s in stop):
                        break
            outs.append(new)
            lps.append(lp)
        return outs, lps


def test_engine_rollout_equals_our_rollout_with_a_greedy_engine(tokenizer):
    cfg = _cfg("max_turns=3")
    task = build_task(cfg, tokenizer)
    model = _policy(tokenizer).eval()
    examples = task.train[:3]
    ours = rollout(model, tokenizer, examples, task.make_env, cfg, group_size=1, greedy=True, use_cache=False)
    theirs = engine_rollout(GreedyEngine(model, tokenizer), tokenizer, examples, task.make_env, cfg)
    for a, b in zip(ours, theirs):
        assert b.token_ids == a.token_ids and b.action_mask == a.action_mask
        assert b.turn_starts == a.turn_starts and b.turn_ends == a.turn_ends
        assert b.stop_reason == a.stop_reason and [x["stop"] for x in b.turns] == [x["stop"] for x in a.turns]
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    assert any(len(t.turns) > 1 for t in ours)


# ----------------------------------------------------------------------------- configuration and errors


def test_grpo_config_maps_our_config():
    cfg = get_config(
        "cpu_demo", ["kl_coef=0.01", "clip_eps=0.3", "temperature=0.9", "loss_agg=seq_mean_token_mean"]
    )
    one = trl_backend.grpo_config(cfg, "/tmp/unused", world=1)
    assert one.num_generations == cfg.group_size and one.generation_batch_size == 16
    # cpu_demo: minibatch 16 episodes, 2 per forward -> 8 accumulated forwards per optimiser step
    assert one.per_device_train_batch_size == 2 and one.gradient_accumulation_steps == 8
    assert one.steps_per_generation == 8 and one.max_steps == cfg.steps  # 16 episodes / 2 per forward
    assert one.learning_rate == cfg.lr and one.beta == 0.01 and one.epsilon == 0.3 and one.temperature == 0.9
    assert one.loss_type == "grpo" and one.scale_rewards == "group" and one.top_k == 0
    assert one.use_cpu and not one.bf16 and not one.fp16
    assert not one.mask_truncated_completions and one.seed == cfg.seed
    two = trl_backend.trl_batch_sizes(cfg.replace(minibatch_size=8), world=2)
    assert two["gradient_accumulation_steps"] == 2 and two["updates_per_step"] == 2  # 8 / (2 x 2 processes)
    assert two["max_steps"] == 2 * cfg.steps
    with pytest.raises(ValueError, match="multiple of minibatch_size"):
        trl_backend.trl_batch_sizes(cfg.replace(minibatch_size=6))
    with pytest.raises(ValueError, match="algo=grpo"):
        trl_backend.grpo_config(cfg.replace(algo="rloo"), "/tmp/unused")
    with pytest.raises(ValueError, match="unknown trl.GRPOConfig"):
        trl_backend.grpo_config(cfg, "/tmp/unused", no_such_field=1)
    assert trl_backend.grpo_config(cfg.replace(log_with="none"), "/tmp/unused", world=1).report_to == []
    assert trl_backend.parse_trl_args(["use_vllm=true", "vllm_mode=server"]) == {
        "use_vllm": True,
        "vllm_mode": "server",
    }


def test_log_with_maps_to_report_to(monkeypatch):
    """Config.log_with -> GRPOConfig.report_to: "auto" is TensorBoard when it is installed, else none; a
    tracker asked for by name and not installed is an error naming the package."""
    cfg = get_config("cpu_demo", ["log_with=tensorboard"])
    assert trl_backend.grpo_config(cfg, "/tmp/unused", world=1).report_to == ["tensorboard"]
    assert trl_backend.report_to("none") == []
    installed = {"tensorboard"}
    monkeypatch.setattr(
        trl_backend.importlib.util, "find_spec", lambda name, *a: object() if name in installed else None
    )
    assert trl_backend.report_to("auto") == ["tensorboard"]
    with pytest.raises(ValueError, match="log_with='wandb' needs the wandb package: pip install wandb"):
        trl_backend.report_to("wandb")
    installed.clear()
    assert trl_backend.report_to("auto") == []
    with pytest.raises(ValueError, match="pip install tensorboard"):
        trl_backend.report_to("tensorboard")


def test_missing_trl_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now fails, as when it is not installed
    with pytest.raises(ImportError, match=r"agentr1_nb\[trl\]"):
        trl_backend.require_trl()
    rc = main(["train", "--backend", "trl", "--out", str(tmp_path), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the TRL backend needs trl>=1.16") and 'pip install "agentr1_nb[trl]"' in err
    assert not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- training


def test_two_trl_steps_from_the_command_line(tmp_path, tokenizer, monkeypatch, capsys):
    """`train --backend trl` on a tiny model: two GRPOTrainer steps, our metrics, evaluation and adapter."""
    model = _policy(tokenizer)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    monkeypatch.setattr(experiment, "load_policy", lambda cfg, adapter=None: (model, tokenizer))
    # the entropy bonus gives a gradient even when every reward of the random model is the same
    argv = [
        "train",
        "--backend",
        "trl",
        "--out",
        str(tmp_path),
        "--json",
        *TINY,
        "steps=2",
        "entropy_coef=0.01",
    ]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    rows = load_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for key in (
        "reward",
        "em",
        "f1",
        "format_rate",
        "turns",
        "searches",
        "loss",
        "grad_norm",
        "entropy",
        "step_s",
        "rollout_s",
        "tokens_per_s",
        "peak_mem_mb",
        "world_size",
        "lr",
    ):
        assert all(isinstance(r.get(key), (int, float)) for r in rows), key
    assert rows[-1]["world_size"] == 1 and rows[-1]["grad_norm"] > 0
    assert rows[0]["reward"] == pytest.approx(rows[0]["trl_reward"], abs=1e-5)  # TRL saw our reward
    last = json.loads(out.strip().splitlines()[-1])
    assert last["step"] == 2 and sum(ln.startswith("{") for ln in out.splitlines()) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["backend"] == "trl" and report["steps"] == 2 and report["em_after"] is not None
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert tuple(report) == experiment.REPORT_KEYS + experiment.DETAIL_KEYS and report["multihop_n"] >= 0
    # log_with=auto with tensorboard installed: TRL's logs as TensorBoard events in the run folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / trl_backend.TRACKER_DIR).glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert any("loss" in tag for tag in acc.Tags()["scalars"]), acc.Tags()
    assert len((tmp_path / "eval_after.jsonl").read_text().splitlines()) == 2
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before), "TRL did not update the LoRA weights"
    # the run folder now has history: resuming is refused, --no-resume starts over
    assert main(argv[:-2] + ["steps=1"]) == 2 and "does not resume" in capsys.readouterr().err


def _tiny_folder(path, tokenizer):
    """A tiny random Llama with the SmolLM2 tokenizer saved as a model folder (`model=PATH`)."""
    base = make_tiny_model(len(tokenizer))
    base.config.pad_token_id = tokenizer.pad_token_id
    base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_trl_native_tool_loop_in_the_bench_worker(tmp_path, tokenizer, capsys):
    """The baseline of `bench trainers`: GRPOTrainer(tools=[search]) with SmolLM2's tokenizer, which gets
    Qwen2.5's tool-calling template, runs a step and reports its timing and memory."""
    from agentr1_nb import bench_trainers

    cfg = _cfg(f"model={_tiny_folder(tmp_path / 'tiny', tokenizer)}", "steps=1", "max_tokens_per_turn=8")
    bench_trainers.trainer_worker("trl_native", cfg.to_json(), str(tmp_path / "run"))
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["variant"] == "trl_native" and res["tool_calling_template"] is True
    assert len(res["step_s"]) == len(res["step_cpu_s"]) == 1 and res["step_s"][0] > 0
    assert res["peak_mb"] >= res["rss_before_train_mb"] > 0 and res["gen_tokens"][0] > 0


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, tokenizer):
    """`torchrun --nproc_per_node 2 -m agentr1_nb train --backend trl` on the CPU (gloo): each process rolls
    out its share of the generation batch, the main process writes the metrics and the report."""
    folder = _tiny_folder(tmp_path / "tiny", tokenizer)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "agentr1_nb", "train", "--backend", "trl", "--out", str(out), "--json"]
    cmd += merge_overrides(TINY, [f"model={folder}", "steps=2", "eval_questions=1", "micro_batch_size=1"])
    env = dict(os.environ, OMP_NUM_THREADS="1", TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # one JSON line, from the main process
    assert json.loads(lines[0])["world_size"] == 2
    rows = load_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["world_size"] == 2 for r in rows)
    assert json.loads((out / "report.json").read_text())["world_size"] == 2
