"""Run folders, their lock, checkpoints and resume: what `train()` reads from and writes to `out/`.

A run folder::

    out/config.json      the run's config (rewritten on resume, with the allowed changes)
    out/metrics.jsonl    one JSON object per step, {"step": n, ...}; the source of truth for a run's numbers
    out/checkpoint/      adapter/ (PEFT), state.pt (step, optimiser, scheduler, sampler, value head, config),
                         rng_<rank>.pt (every process's RNG state)
    out/checkpoint.old   the previous checkpoint, only while a save is between its two renames
    out/tensorboard/     event files of accelerate's trackers (`Config.log_with`)
    out/.lock            held by the run writing into the folder (holds its pid)

Run folders are files people download and share, so they are read as untrusted input: `state.pt` and the
RNG files load with `torch.load(weights_only=True)` (tensors and plain containers; numpy's RNG array is the
one allow-listed type), so no file in a run folder can run code; every damaged or inconsistent file (not
UTF-8, a metrics line that is not an object with an integer step, a state without its optimiser, garbage
RNG state, a checkpoint ahead of metrics.jsonl or of the config's `steps`) is a `CheckpointError` naming the
file, raised while the run is set up, before any step's work. Two recoveries are defined rather than errors:
a last metrics line without its newline that does not parse (torn by a kill) is dropped, and a stray
`checkpoint.tmp` (a save that never finished) is deleted. Only `resume=False` deletes a run's history.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from .common import atomic_write_json, atomic_write_text, replace_dir, rng_state, set_rng_state
from .config import Config

RESUMABLE_FIELDS = (
    "steps",
    "save_every",
    "max_bad_steps",
    "eval_questions",
    "eval_batch_size",
    "micro_batch_size",
    "logprob_chunk",
    "reuse_trunk",
    "tool_timeout_s",
    "cache_dir",
    "data_dir",
    "log_with",
)
"""Fields a resumed run may change (logged): they change how long, how often or in what pieces it runs,
not what it learns. Any other difference from the stored config is an error naming the fields."""

RNG_SAFE_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
"""The only non-tensor types a checkpoint file may hold: numpy's RNG state is a uint32 array."""


class CheckpointError(RuntimeError):
    """A run folder's file is damaged, foreign or inconsistent; the message names the file. (The command line
    prints it as one `error: ...` line with exit status 2.)"""


class InterruptedAfterSave(KeyboardInterrupt):
    """Ctrl-C arrived while a checkpoint was written; raised once the save is complete."""


@dataclass
class TrainState:
    """What a checkpoint saves and restores: the objects a run trains and where it is."""

    model: Any  # the PEFT model (its adapter is saved)
    optimizer: Any
    scheduler: Any
    sampler: Any  # train.QuestionSampler: state_dict() / load_state_dict()
    value_head: torch.nn.Module | None = None  # PPO's critic head
    step: int = 0
    bad_steps: int = 0


class run_lock:  # noqa: N801 - used as a context manager, like open()
    """An exclusive lock on a run folder (`out/.lock`, holding the pid), so that two runs never write into
    the same folder; the second gets a clear error naming the holder. Other processes of the same
    `accelerate launch` pass `exclusive=False` (the main process holds the lock for them)."""

    def __init__(self, out: Path, exclusive: bool = True):
        self.path, self.exclusive, self.fd = out / ".lock", exclusive, None

    def __enter__(self):
        if not self.exclusive:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RuntimeError(
                f"run folder {self.path.parent} is in use by another training run (pid {holder}); "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C (SIGINT) back while a checkpoint is written: a Ctrl-C inside is raised as
    `InterruptedAfterSave` (a KeyboardInterrupt) once the block has finished, so a second Ctrl-C during the save that a first one
    started still leaves a complete checkpoint. Outside the main thread (where Python delivers signals)
    this does nothing."""
    caught: list[bool] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise InterruptedAfterSave


# ----------------------------------------------------------------------------- finding and checking


def checkpoint_complete(folder: Path) -> bool:
    return (folder / "state.pt").is_file() and (folder / "adapter" / "adapter_config.json").is_file()


def find_checkpoint(out: Path) -> Path | None:
    """`out/checkpoint` when complete, else `out/checkpoint.old` (a kill between the two renames of a save
    leaves it complete), else None."""
    for name in ("checkpoint", "checkpoint.old"):
        if checkpoint_complete(out / name):
            return out / name
    return None


def config_changes(stored: dict, cfg: Config) -> tuple[dict, dict]:
    """(forbidden, allowed) differences between a run's stored config and `cfg`: {field: (old, new)}."""
    new = cfg.to_dict()
    diff = {k: (stored.get(k), v) for k, v in new.items() if k in stored and stored[k] != v}
    allowed = {k: d for k, d in diff.items() if k in RESUMABLE_FIELDS}
    return {k: d for k, d in diff.items() if k not in allowed}, allowed


def _remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def prepare_run_dir(out: Path, cfg: Config, resume: bool, write: bool = True) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), after checking the run folder.

    resume=False deletes the folder's history (metrics, checkpoints). resume=True resumes from a complete
    checkpoint whose config differs from `cfg` only in `RESUMABLE_FIELDS` and whose step is at most
    `cfg.steps` and at most metrics.jsonl's last step; history that cannot be resumed (metrics without a
    checkpoint) is an error rather than silently overwritten. Every file is checked before anything changes.
    """
    metrics = out / "metrics.jsonl"
    if not resume:
        if write:
            for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
                _remove(out / name)
            metrics.unlink(missing_ok=True)
            atomic_write_json(out / "config.json", cfg.to_dict())
        return None
    ckpt = find_checkpoint(out)
    if ckpt is None:
        has_history = metrics.is_file() and metrics.stat().st_size > 0
        broken = [n for n in ("checkpoint", "checkpoint.old") if (out / n).exists()]
        if has_history or broken:
            raise RuntimeError(
                f"run folder {out} has history ({'metrics.jsonl' if has_history else ''}"
                f"{' and ' if has_history and broken else ''}{', '.join(broken)}) but no complete checkpoint "
                "to resume from; pass --no-resume (resume=False) to start over and delete it, or use another --out"
            )
        if write:
            _remove(out / "checkpoint.tmp")
            atomic_write_json(out / "config.json", cfg.to_dict())
        return None
    state = read_state(ckpt)
    _check_config(out, ckpt, state["config"], cfg)
    rows = read_metrics(metrics)
    _check_step(ckpt, state["step"], rows, metrics, cfg)
    if ckpt.name == "checkpoint.old":
        print(f"resuming from {ckpt}: {out / 'checkpoint'} is incomplete (a save was interrupted)")
    if write:
        _remove(out / "checkpoint.tmp")  # a save that never finished
        _write_metrics(metrics, [r for r in rows if r["step"] <= state["step"]])
        atomic_write_json(out / "config.json", cfg.to_dict())
    return ckpt


def _check_config(out: Path, ckpt: Path, stored: dict, cfg: Config) -> None:
    """Refuse a resume whose config changes what the run learns, against the checkpoint's config and the
    folder's config.json (which must be readable when it is there); print the allowed changes."""
    path = out / "config.json"
    if path.exists():
        on_disk = _read_json_object(path, "the run's config")
        forbidden, _ = config_changes(on_disk, cfg)
        if forbidden:
            _refuse_config(out, path, forbidden)
    forbidden, allowed = config_changes(stored, cfg)
    if forbidden:
        _refuse_config(out, ckpt / "state.pt", forbidden)
    if allowed:
        print("resuming with changed " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in allowed.items()))


def _refuse_config(out: Path, path: Path, forbidden: dict) -> None:
    raise ValueError(
        f"cannot resume {out} with a different config: "
        + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in forbidden.items())
        + f" (stored in {path}); these change what the run learns. Use the stored values, another --out, "
        "or --no-resume"
    )


def _check_step(ckpt: Path, step: int, rows: list[dict], metrics: Path, cfg: Config) -> None:
    last = max((r["step"] for r in rows), default=0)
    if step > last:
        raise CheckpointError(
            f"checkpoint file {ckpt / 'state.pt'} is at step {step}, ahead of {metrics} (last step {last}): "
            "the folder is inconsistent; use another --out or --no-resume"
        )
    if step > cfg.steps:
        raise CheckpointError(
            f"checkpoint file {ckpt / 'state.pt'} is at step {step}, past this config's steps={cfg.steps}: "
            f"resuming would keep {step}-step weights under a {cfg.steps}-step config; ask for steps={step} "
            "or more, use another --out, or --no-resume"
        )


def _read_json_object(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{what} {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object (a {type(obj).__name__})")
    return obj


# ----------------------------------------------------------------------------- metrics.jsonl


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl ([] when there is none). Each line must be a JSON object with an integer
    `step` >= 0 (a `CheckpointError` naming the file and line otherwise); blank lines are skipped, and a
    last line without its newline that does not parse (torn by a kill mid-write) is dropped."""
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"metrics file {path} is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise CheckpointError(f"metrics file {path} is unreadable ({e.strerror or e})") from e
    lines = text.split("\n")  # newlines only: json.dumps never writes a raw one inside a string
    rows = []
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except ValueError:
            if n == len(lines):  # no newline after it: torn by a kill
                continue
            raise CheckpointError(f"metrics file {path} line {n} is not JSON: {ln[:80]!r}") from None
        if not isinstance(row, dict) or not _is_count(row.get("step")):
            raise CheckpointError(
                f"metrics file {path} line {n} is not an object with an integer step >= 0: {ln[:80]!r}"
            )
        rows.append(row)
    return rows


def load_metrics(out_dir: str | Path) -> list[dict]:
    """The rows of `out_dir/metrics.jsonl` (see `read_metrics`)."""
    return read_metrics(Path(out_dir) / "metrics.jsonl")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    """On resume, keep the metric lines up to the checkpoint we restart from (dropping a torn last line)."""
    if path.exists():  # atomically: a kill now must not lose the history kept
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- checkpoint files


def _torch_load(path: Path, what: str):
    """`torch.load` that runs no code: tensors, plain containers and numpy's RNG array only."""
    try:
        with torch.serialization.safe_globals(RNG_SAFE_GLOBALS):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - zero-byte, truncated, foreign or code-carrying files
        msg = str(e)
        code = re.search(r"GLOBAL ([\w.]+)", msg)
        if code:
            reason = f"it refers to {code.group(1)}, which loading it would call; refused"
        elif "Weights only load failed" in msg:
            reason = "not a file of tensors and plain data"
        else:
            reason = f"{type(e).__name__}: {msg.strip().splitlines()[0][:200] if msg.strip() else 'empty'}"
        raise CheckpointError(f"{what} {path} is unreadable ({reason})") from None


STATE_FIELDS = {"step": _is_count, "bad_steps": _is_count}
STATE_DICTS = ("optimizer", "scheduler", "sampler", "config")


def read_state(ckpt: Path) -> dict:
    """`ckpt/state.pt`, checked: integer step and bad_steps >= 0, the optimiser's, scheduler's, sampler's
    and config's dicts, the value head's dict or None."""
    path = ckpt / "state.pt"
    state = _torch_load(path, "checkpoint file")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {path} is not a training state (a {type(state).__name__})")
    for k, ok in STATE_FIELDS.items():
        if not ok(state.get(k)):
            raise CheckpointError(
                f"checkpoint file {path}: {k} must be an integer >= 0, not {state.get(k)!r}"
            )
    for k in STATE_DICTS:
        if not isinstance(state.get(k), dict) or (k == "config" and not state[k]):
            raise CheckpointError(f"checkpoint file {path} has no {k} state (a training state holds one)")
    if not all(_is_count(state["sampler"].get(k)) for k in ("epoch", "pos")):
        raise CheckpointError(f"checkpoint file {path}: sampler state {state['sampler']!r} is not epoch/pos")
    if not (state.get("value_head") is None or isinstance(state["value_head"], dict)):
        raise CheckpointError(f"checkpoint file {path}: value_head must be a state dict or None")
    return state


def save_checkpoint(acc: Accelerator, out: Path, state: TrainState, cfg: Config) -> None:
    """Write `out/checkpoint` atomically: every process writes its RNG state into `checkpoint.tmp`, the main
    process the rest, then it replaces the old checkpoint (`common.replace_dir`). Ctrl-C waits until it is
    done (`deferred_sigint`)."""
    tmp = out / "checkpoint.tmp"
    with deferred_sigint():
        if acc.is_main_process:
            _remove(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng_{acc.process_index}.pt")
        if acc.is_main_process:
            state.model.save_pretrained(tmp / "adapter")
            saved = {
                "step": state.step,
                "bad_steps": state.bad_steps,
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "sampler": state.sampler.state_dict(),
                "value_head": None if state.value_head is None else state.value_head.state_dict(),
                "config": cfg.to_dict(),
                "world_size": acc.num_processes,
            }
            torch.save(saved, tmp / "state.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            replace_dir(tmp, out / "checkpoint")
        acc.wait_for_everyone()


def load_checkpoint(ckpt: Path, state: TrainState, rank: int = 0) -> None:
    """Restore a checkpoint into the run's objects (and `state.step`, `state.bad_steps`); every file that
    does not fit is a `CheckpointError` naming it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = read_state(ckpt)
    weights_file = ckpt / "adapter" / "adapter_model.safetensors"
    try:
        weights = load_file(str(weights_file))
    except Exception as e:  # noqa: BLE001 - truncated or corrupt safetensors
        raise CheckpointError(f"adapter file {weights_file} is unreadable ({type(e).__name__}: {e})") from e
    try:
        loaded = set_peft_model_state_dict(state.model, weights)
    except Exception as e:  # noqa: BLE001 - shapes of another model
        raise CheckpointError(f"adapter file {weights_file} does not fit this model ({e})") from e
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if missing or loaded.unexpected_keys:
        raise CheckpointError(
            f"adapter file {weights_file} does not fit this model: {len(missing)} LoRA weights missing "
            f"(e.g. {missing[:1]}), {len(loaded.unexpected_keys)} unknown (e.g. {loaded.unexpected_keys[:1]})"
        )
    path = ckpt / "state.pt"
    parts = [("optimizer", state.optimizer), ("scheduler", state.scheduler), ("sampler", state.sampler)]
    if state.value_head is not None and saved["value_head"] is not None:
        parts.append(("value_head", state.value_head))
    for key, obj in parts:
        try:
            obj.load_state_dict(saved[key])
        except Exception as e:  # noqa: BLE001 - a state of another model or run
            raise CheckpointError(
                f"checkpoint file {path}: its {key} state does not fit this run ({e})"
            ) from e
    _restore_rng(ckpt, saved, rank)
    state.step, state.bad_steps = saved["step"], saved["bad_steps"]


def _restore_rng(ckpt: Path, saved: dict, rank: int) -> None:
    rng_file = ckpt / f"rng_{rank}.pt"
    if rng_file.is_file():
        rng, source = _torch_load(rng_file, "RNG state file"), rng_file
    elif "rng" in saved:  # checkpoints written before the per-process RNG files
        rng, source = saved["rng"], ckpt / "state.pt"
    else:
        raise CheckpointError(
            f"checkpoint {ckpt} has no RNG state for process {rank} (was it written by fewer processes?)"
        )
    try:
        set_rng_state(rng)
    except Exception as e:  # noqa: BLE001 - garbage in an RNG file
        raise CheckpointError(
            f"RNG state file {source} does not hold an RNG state ({type(e).__name__}: {e})"
        ) from e
