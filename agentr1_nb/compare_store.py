"""The saved results of a comparison: what each depends on (its key), reading a saved result back, the
shipped files (`export_comparison` / `shipped_comparison`: the comparison's results.json; `export_real` /
`shipped_real`: the trained adapters and baselines on the real samples). `compare` runs the protocol.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from .checkpoint import config_changes
from .common import atomic_write_json
from .compare_table import BASELINE_METHODS, RL_FIELDS, real_record
from .config import Config

# ----------------------------------------------------------------------------- saved results


def read_back(path: str | Path, key: dict, shape: Callable[[dict], bool] | None = None) -> dict | None:
    """The result saved at `path` if it was computed with `key` (every item equal), else None.

    A saved file that cannot be used (not UTF-8, not JSON, a crash mid-write from an older version, not a JSON
    object, or failing `shape`) counts as not saved: None, with a warning naming the file, and the run is
    done again (its result then replaces the file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or (shape is not None and not shape(saved)):
            raise ValueError(f"not a saved result of this shape ({type(saved).__name__})")
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        warnings.warn(f"ignoring the saved result {path} (it will be computed again): {e}", stacklevel=2)
        return None
    return saved if all(saved.get(k) == v for k, v in key.items()) else None


def ems_list(x) -> bool:
    """A list of per-question EMs (numbers)."""
    return isinstance(x, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def run_shape(saved: dict) -> bool:
    """What `compare` reads of a variant's result.json: `eval` = {dataset: [per-question EM]}."""
    ev = saved.get("eval")
    return isinstance(ev, dict) and all(isinstance(k, str) and ems_list(v) for k, v in ev.items())


def baseline_shape(saved: dict) -> bool:
    """What `compare` reads of baselines_<dataset>.json: [per-question EM] per method of `BASELINE_METHODS`."""
    return all(ems_list(saved.get(m)) for m in BASELINE_METHODS)


def can_resume(saved_key: dict | None, cfg: Config) -> bool:
    """Whether a run whose `train_key.json` is `saved_key` can be trained on under `cfg`.

    Yes when it learned the same thing (its stored config differs from `cfg` only in fields that change how a
    run is executed, `checkpoint.RESUMABLE_FIELDS`) and it asked for no more steps than `cfg` does: a finished
    20-step run asked for with 40 steps trains on from its checkpoint (the learning rate is constant after
    its warm-up, so 20 + 20 steps are the same as 40), one asked for with fewer steps starts over."""
    stored = (saved_key or {}).get("config")
    if not stored:
        return False
    forbidden, _ = config_changes(stored, cfg)
    return not forbidden and stored.get("steps", 0) <= cfg.steps


def without(d: dict, fields) -> dict:
    return {k: v for k, v in d.items() if k not in fields}


def run_key(cfg: Config, eval_n: int, sft_batch: int) -> dict:
    """What a finished run's result depends on: its config, the evaluation size, the warm-up batch. Not the
    evaluation sets: a saved result holds EM per set (`eval`), and a set asked for that it lacks (saved
    before the set was asked for, or while its sample was missing) is evaluated from the run's final adapter
    and added (`complete_sets`), so adding a set never trains a finished run again."""
    return {"config": cfg.to_dict(), "eval_n": eval_n, "sft_batch": sft_batch}


def baseline_key(cfg: Config, eval_n: int) -> dict:
    """The baselines run the base model greedily: the RL fields and the seed do not change them."""
    return {"config": without(cfg.to_dict(), (*RL_FIELDS, "seed")), "eval_n": eval_n}


def eval_key(cfg: Config, eval_n: int, dataset: str, sha256: str) -> dict:
    """What a trained adapter's EM on one evaluation set depends on: its weights (`adapter_hash`), the set,
    EVAL_N and the config it is evaluated under (without the RL fields and the seed: greedy decoding)."""
    config = without(cfg.to_dict(), (*RL_FIELDS, "seed"))
    return {"adapter_sha256": sha256, "dataset": dataset, "eval_n": eval_n, "config": config}


def adapter_hash(folder: str | Path) -> str:
    """SHA-256 of an adapter folder's adapter_config.json and weights: the adapter, wherever it lies."""
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


SHIPPED_COMPARISON = Path(__file__).resolve().parent / "results" / "comparison.json"
"""A finished CPU comparison's results.json, shipped with the package (a few KB: the rows, the kind rows,
the config, the timings; no weights and no per-question files) for the README and notebook 06."""


def export_comparison(out_dir: str | Path, dest: str | Path = SHIPPED_COMPARISON) -> Path:
    """Copy `out_dir/results.json` of a finished comparison to `dest`. A FAST smoke run is refused: its
    numbers are not results."""
    src = Path(out_dir) / "results.json"
    if not src.is_file():
        raise FileNotFoundError(f"{out_dir} holds no results.json: not a finished comparison")
    results = json.loads(src.read_text())
    if "FAST" in results.get("note", "") or results.get("steps", 0) < 2:
        raise ValueError(f"{src} is a FAST smoke run ({results.get('steps')} RL step(s)): not results")
    atomic_write_json(dest, results)
    return Path(dest)


def shipped_comparison(path: str | Path = SHIPPED_COMPARISON) -> dict | None:
    """The comparison shipped with the package (`export_comparison`), or None when there is none; an
    unreadable file is None with a warning."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"not a JSON object ({type(saved).__name__})")
        return saved
    except (OSError, ValueError) as e:
        warnings.warn(f"skipping the shipped comparison {path}: {e}", stacklevel=2)
        return None


SHIPPED_REAL = Path(__file__).resolve().parent / "results" / "agents_on_real.json"
"""The trained adapters and the baselines on the real HotpotQA and 2Wiki samples (and the generated world),
per question, shipped with the package for notebook 06 and the README: `export_real` writes it,
`shipped_real` reads it, `compare_table.real_markdown` renders it."""


def export_real(out_dir: str | Path, dest: str | Path = SHIPPED_REAL) -> Path:
    """Write `compare_table.real_record` of the finished comparison in `out_dir` (its results.json) to
    `dest`. Refused: a FAST smoke run, a comparison without adapter rows (`CompareSpec.adapters`), and one
    whose adapters have no row on a real set (the samples were missing)."""
    src = Path(out_dir) / "results.json"
    if not src.is_file():
        raise FileNotFoundError(f"{out_dir} holds no results.json: not a finished comparison")
    results = json.loads(src.read_text())
    if "FAST" in results.get("note", ""):
        raise ValueError(f"{src} is a FAST smoke run: not results")
    record = real_record(results)
    labels = set(record["adapters"])
    if not labels:
        raise ValueError(f"{src} has no adapter rows: run compare with --adapter LABEL=PATH")
    if not any(r["method"] in labels and r["dataset"] != "generated" for r in record["rows"]):
        raise ValueError(f"{src}: the adapters have no row on a real set (were the samples missing?)")
    atomic_write_json(dest, record)
    return Path(dest)


def shipped_real(path: str | Path = SHIPPED_REAL) -> dict | None:
    """The shipped `export_real` file, or None when there is none; an unreadable one is None with a warning."""
    return shipped_comparison(path)


def shown_path(folder: str | Path) -> str:
    """A folder as results show it: relative to the repository for the package's own (the shipped adapter),
    so a shipped file names no machine's paths; as given otherwise."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(folder).resolve().relative_to(root))
    except ValueError:
        return str(folder)
