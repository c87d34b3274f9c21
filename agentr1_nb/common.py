"""Small helpers every stage shares: seeding and RNG state, the hub check, memory readings, atomic writes.

This module imports nothing from the package, so any stage may import it.
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import shutil
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

# ----------------------------------------------------------------------------- seeding and RNG state


def set_seed(seed: int) -> None:
    """Seed python's random, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Every RNG a training step draws from, CUDA included, so a resumed run samples what it would have."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the Hugging Face hub


def hub_env_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for offline mode."""
    on = ("1", "true", "yes", "on")
    return any(
        os.environ.get(v, "").strip().lower() in on for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def _hub_answers(timeout: float) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub ($HF_ENDPOINT) does not answer a TCP connect in `timeout` s.

    Asked once per process. Without it, `from_pretrained` / `load_dataset` on a machine without network
    retry for about 50 s before failing; with it, a hub id fails at once with a clear message.
    """
    return not hub_env_offline() and _hub_answers(timeout)


# ----------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Current resident set size (Linux: /proc; elsewhere the peak so far, a lower bound on the delta)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return maxrss_bytes()


def maxrss_bytes() -> int:
    """Peak resident set size of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated on a GPU, else the process's peak RSS, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return maxrss_bytes() / 2**20


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that a reader (or a kill) sees the old content or the new, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder `tmp` into place as `final`, keeping the previous one as `final.old`
    until the new one is in place. A kill at any point leaves `final` or `final.old` complete."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` if needed and check a file can be written there, before any long work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{what} {path} is not writable ({e.strerror or e})") from e
    return path


def mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")
