"""Run folders as untrusted, shared files: damaged or crafted files are refused with an error naming them
before any step runs, nothing in them runs code, nothing but --no-resume deletes history, a second Ctrl-C
during a save leaves a resumable run; and the trackers' event files hold metrics.jsonl's numbers."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from conftest import TINY_RUN, make_tiny_model, tiny_lora_policy

from agentr1_nb import __main__ as cli
from agentr1_nb import checkpoint as ckpt_mod
from agentr1_nb import train as train_mod
from agentr1_nb.checkpoint import CheckpointError, deferred_sigint, load_metrics, read_metrics
from agentr1_nb.config import get_config
from agentr1_nb.env import build_task
from agentr1_nb.train import train

TINY = TINY_RUN + ["minibatch_size=2", "micro_batch_size=1"]


def _cfg(*extra):
    """The tiny run; no trackers unless `extra` names one."""
    quiet = [] if any(e.startswith("log_with=") for e in extra) else ["log_with=none"]
    return get_config("cpu_demo", TINY + quiet + list(extra))


def _train(out, tokenizer, *extra, resume=True, **kw):
    cfg = _cfg(*extra)
    model = tiny_lora_policy(tokenizer)
    return train(
        cfg, out, resume=resume, model=model, tokenizer=tokenizer, task=build_task(cfg, tokenizer), **kw
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tokenizer):
    """A finished 2-step run folder (checkpoint at step 2) and its metrics; tests work on copies."""
    out = tmp_path_factory.mktemp("run") / "done"
    hist = _train(out, tokenizer, "steps=2", "save_every=1")
    return out, [dict(m) for m in hist]


@pytest.fixture
def run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def _state(run):
    return torch.load(run / "checkpoint" / "state.pt", weights_only=True)


def _refused(run, tokenizer, match, *extra):
    """Resuming `run` raises an error matching `match`; metrics.jsonl is left byte for byte as it was."""
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises((CheckpointError, ValueError, RuntimeError), match=match):
        _train(run, tokenizer, "steps=3", "save_every=1", *extra)
    assert (run / "metrics.jsonl").read_bytes() == before, "a refused resume changed metrics.jsonl"


# ----------------------------------------------------------------------------- nothing deletes history


@pytest.mark.parametrize("step", [-1, 5])
def test_a_checkpoint_step_negative_or_ahead_of_metrics_is_refused(run, tokenizer, step):
    state = _state(run)
    state["step"] = step
    torch.save(state, run / "checkpoint" / "state.pt")
    what = "integer >= 0" if step < 0 else "ahead of .*metrics.jsonl"
    _refused(run, tokenizer, f"{run / 'checkpoint' / 'state.pt'}.*{what}")


def test_a_resume_past_the_configs_steps_is_refused(run, tokenizer):
    weights = (run / "checkpoint" / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="at step 2, past this config's steps=1"):
        _train(run, tokenizer, "steps=1")
    assert (run / "checkpoint" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert [m["step"] for m in load_metrics(run)] == [1, 2]
    assert _train(run, tokenizer, "steps=2") == [], "steps equal to the checkpoint's: nothing to run"


# ----------------------------------------------------------------------------- nothing runs code


class Payload:
    """Unpickling calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["state.pt", "rng_0.pt"])
def test_a_pickle_with_a_payload_is_refused_and_runs_nothing(run, tokenizer, tmp_path, target):
    marker = tmp_path / "payload_ran"
    path = run / "checkpoint" / target
    obj = torch.load(path, weights_only=False) if target == "rng_0.pt" else _state(run)
    obj["payload"] = Payload(marker)
    torch.save(obj, path)
    torch.load(path, weights_only=False)  # what resume did before: the payload runs
    assert marker.exists()
    marker.unlink()
    _refused(run, tokenizer, f"{path} is unreadable \\(it refers to .*open, which loading it would call")
    assert not marker.exists(), "loading the checkpoint ran the payload"
    assert [m["step"] for m in load_metrics(run)] == [1, 2]


def test_checkpoint_files_hold_only_tensors_and_plain_data(run):
    torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    with torch.serialization.safe_globals(ckpt_mod.RNG_SAFE_GLOBALS):
        rng = torch.load(run / "checkpoint" / "rng_0.pt", weights_only=True)
    assert set(rng) >= {"python", "numpy", "torch"}


# ----------------------------------------------------------------------------- resume reads defensively


@pytest.mark.parametrize(
    "line, what",
    [
        (b"[1, 2]", "line 2 is not an object with an integer step"),
        (b'{"step": null}', "line 2 is not an object with an integer step"),
        (b'{"step": "2"}', "line 2 is not an object with an integer step"),
        (b'{"step": true}', "line 2 is not an object with an integer step"),
        (b'{"step": 2, "reward": "\xff\xfe"}', "is not UTF-8 text"),
        (b"{not json", "line 2 is not JSON"),
    ],
)
def test_bad_metrics_lines_are_named(run, tokenizer, line, what):
    path = run / "metrics.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = line
    path.write_bytes(b"\n".join(lines))
    _refused(run, tokenizer, f"metrics file {path} {what}")
    with pytest.raises(CheckpointError, match=str(path)):
        load_metrics(run)


def test_a_torn_last_metrics_line_is_dropped(run, tokenizer, finished):
    path = run / "metrics.jsonl"
    path.write_bytes(path.read_bytes() + b'{"step": 3, "rew')  # killed while writing step 3's line
    assert [m["step"] for m in read_metrics(path)] == [1, 2]
    hist = _train(run, tokenizer, "steps=3", "save_every=1")
    assert [m["step"] for m in hist] == [3]
    assert [m["step"] for m in load_metrics(run)] == [1, 2, 3]
    assert load_metrics(run)[0] == finished[1][0]


@pytest.mark.parametrize("drop", ["optimizer", "scheduler", "sampler", "config", "step"])
def test_a_state_missing_a_part_is_named(run, tokenizer, drop):
    state = _state(run)
    del state[drop]
    torch.save(state, run / "checkpoint" / "state.pt")
    _refused(run, tokenizer, f"checkpoint file {run / 'checkpoint' / 'state.pt'}")


@pytest.mark.parametrize("garbage", [b"", b"\x00garbage" * 8, "dict", "tensor"])
def test_garbage_rng_files_are_named(run, tokenizer, garbage):
    path = run / "checkpoint" / "rng_0.pt"
    if garbage == "dict":
        torch.save({"python": 1}, path)
    elif garbage == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(garbage)
    _refused(run, tokenizer, f"RNG state file {path}")


def test_an_optimizer_state_of_another_run_is_named(run, tokenizer):
    state = _state(run)
    state["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(state, run / "checkpoint" / "state.pt")
    _refused(run, tokenizer, "state.pt: its optimizer state does not fit this run")


@pytest.mark.parametrize("kind", ["file", "folder", "link"])
def test_a_stray_checkpoint_tmp_is_removed_and_the_run_resumes(run, tokenizer, tmp_path, kind):
    tmp = run / "checkpoint.tmp"
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    (keep / "precious").write_text("x")
    if kind == "file":
        tmp.write_text("junk")
    elif kind == "folder":
        (tmp / "adapter").mkdir(parents=True)
    else:
        tmp.symlink_to(keep)
    hist = _train(run, tokenizer, "steps=3", "save_every=1")
    assert [m["step"] for m in hist] == [3] and _state(run)["step"] == 3
    assert not tmp.exists() and not tmp.is_symlink()
    assert (keep / "precious").exists(), "deleting a stray link deleted what it points to"


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_stored_config_does_not_skip_the_config_check(run, tokenizer, content):
    (run / "config.json").write_bytes(content)
    _refused(run, tokenizer, f"config {run / 'config.json'} is", "lr=0.5")
    _refused(run, tokenizer, f"config {run / 'config.json'} is")


def test_a_config_change_in_config_json_alone_is_caught(run, tokenizer):
    """The checkpoint's config is the same, but config.json (edited by hand) says another lr."""
    stored = json.loads((run / "config.json").read_text())
    stored["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(stored))
    _refused(run, tokenizer, f"cannot resume .* lr 0.5 -> .*stored in {run / 'config.json'}")


def test_the_command_line_prints_one_error_line_and_exits_2(run, capsys):
    state = _state(run)
    state["step"] = -3
    torch.save(state, run / "checkpoint" / "state.pt")
    rc = cli.main(["train", "--preset", "cpu_demo", "--out", str(run), *TINY, "steps=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: checkpoint file ")
    assert "state.pt" in err[0]


# ----------------------------------------------------------------------------- signals


def test_deferred_sigint_raises_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block finished")
    assert done == ["the block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_during_the_save_leaves_a_resumable_run(tmp_path, tokenizer, monkeypatch, finished):
    """Ctrl-C after step 1 starts a save; a second Ctrl-C while it is written waits for it, then ends the
    run (KeyboardInterrupt: the command line exits 130). Resuming gives the uninterrupted run's metrics."""
    real = ckpt_mod.replace_dir

    def second_ctrl_c(tmp, final):
        os.kill(os.getpid(), signal.SIGINT)
        return real(tmp, final)

    def first_ctrl_c(m):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "replace_dir", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tokenizer, "steps=2", "save_every=10", callback=first_ctrl_c)
    monkeypatch.setattr(ckpt_mod, "replace_dir", real)
    assert _state(tmp_path)["step"] == 1 and not (tmp_path / "checkpoint.tmp").exists()
    rest = _train(tmp_path, tokenizer, "steps=2", "save_every=1")
    full = finished[1]
    assert [m["step"] for m in rest] == [2]
    for k in ("reward", "loss", "grad_norm"):
        assert rest[0][k] == pytest.approx(full[1][k], rel=1e-5, abs=1e-7), k


def test_ctrl_c_during_a_save_exits_130_with_a_complete_checkpoint(tmp_path, tokenizer, monkeypatch):
    """The command line, in process, on a tiny model folder: Ctrl-C arrives while step 1's checkpoint is
    written; the save completes, the run stops there and `train` exits 130."""
    tiny = make_tiny_model(len(tokenizer))
    tiny.config.pad_token_id = tokenizer.pad_token_id
    tiny.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    real = ckpt_mod.replace_dir
    calls = []

    def ctrl_c(tmp, final):
        calls.append(final)
        os.kill(os.getpid(), signal.SIGINT)
        return real(tmp, final)

    monkeypatch.setattr(ckpt_mod, "replace_dir", ctrl_c)
    out = tmp_path / "run"
    args = ["train", "--preset", "cpu_demo", "--out", str(out), *TINY, f"model={tmp_path / 'tiny'}"]
    assert cli.main([*args, "steps=3", "save_every=1"]) == 130
    assert len(calls) == 1, "the interrupted step's checkpoint was saved twice"
    assert _state(out)["step"] == 1 and [m["step"] for m in load_metrics(out)] == [1]


# ----------------------------------------------------------------------------- trackers


def test_tensorboard_events_hold_the_metrics_jsonl_numbers(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, tokenizer, "steps=2", "log_with=tensorboard")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    rows = load_metrics(tmp_path)
    for key in ("reward", "loss", "grad_norm", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2], key
        for e, row in zip(events, rows):
            assert e.value == pytest.approx(row[key], rel=1e-6), key
    assert "step" not in acc.Tags()["scalars"]


def test_log_with_none_writes_no_event_files_and_a_missing_tracker_is_an_error(
    tmp_path, tokenizer, monkeypatch
):
    _train(tmp_path / "none", tokenizer, "steps=1", "log_with=none")
    assert not (tmp_path / "none" / "tensorboard").exists()
    monkeypatch.setattr(train_mod, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match="log_with=wandb needs the wandb package: pip install wandb"):
        _train(tmp_path / "wandb", tokenizer, "steps=1", "log_with=wandb")
    assert not (tmp_path / "wandb" / "metrics.jsonl").exists()


def test_a_resumed_run_replaces_the_events_of_steps_after_its_checkpoint(tmp_path, tokenizer):
    """Killed after step 3 with its checkpoint at step 2: the resumed run logs step 3 again, and TensorBoard
    shows each step once, with metrics.jsonl's numbers (purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def killed_after_three(m):
        if m["step"] == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _train(
            tmp_path,
            tokenizer,
            "steps=4",
            "save_every=2",
            "log_with=tensorboard",
            callback=killed_after_three,
        )
    _train(tmp_path, tokenizer, "steps=4", "save_every=2", "log_with=tensorboard")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    rows = load_metrics(tmp_path)
    events = acc.Scalars("reward")
    assert [e.step for e in events] == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [e.value for e in events] == pytest.approx([r["reward"] for r in rows], rel=1e-6)


@pytest.mark.parametrize("weights", ["none", "foreign"])
def test_adapter_weights_that_do_not_fit_are_named(run, tokenizer, weights):
    """A checkpoint's adapter file with no LoRA weight (or another model's) would resume the untrained
    adapter silently: refused, naming the file."""
    from safetensors.torch import load_file, save_file

    path = run / "checkpoint" / "adapter" / "adapter_model.safetensors"
    real = load_file(str(path))
    if weights == "none":
        save_file({"something.else": torch.zeros(2)}, str(path))
    else:
        save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in real.items()}, str(path))
    _refused(run, tokenizer, f"adapter file {path} does not fit this model")
