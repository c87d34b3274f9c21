#!/usr/bin/env bash
# The GPU self-check on a bare GPU box: `python -m agentr1_nb check --preset P --json` for colab_t4, and for
# a100 too when the GPU has >= 40 GB. Made for a machine without a package index that has Python, torch,
# transformers 5, peft and accelerate, but maybe not bitsandbytes, bm25s, PyStemmer, gguf or datasets:
# wheels for those can be carried in $WHEELS and are installed with --no-deps --no-index. Needs no hub: without
# the preset's model in the local cache the check builds random weights of its architecture (see check.py).
#
#   WHEELS=wheels OUT=/some/dir scripts/gpu_check.sh [extra check arguments, e.g. --steps 1 --no-ppo]
#
# `--full-size` adds the rehearsal's phases (tensors counted against memory_budget term by term, and the time
# plan), the GPU counterpart of the CPU rehearsal that scripts/rehearsal.sh records.
#
# Environment: WHEELS (default wheels/), OUT (if set, the JSON lines go to $OUT/gpu_check.jsonl and stderr to
# $OUT/gpu_check.log), PYTHON (default python3), PRESETS (default "colab_t4", plus "a100" on >= 40 GB),
# CHECK_TIMEOUT (seconds per check, default 400), INSTALL_TIMEOUT (seconds per pip command, default 240).
# Exit status: 0 when every check's summary is ok, else the last failing check's status (124: timed out).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-400}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-240}
log() { echo "[gpu_check] $*" >&2; }

jsonl=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  jsonl="$OUT/gpu_check.jsonl"
  : >"$jsonl"
  exec 2> >(tee -a "$OUT/gpu_check.log" >&2)
fi

# 1. the optional libraries, from carried wheels only
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  log "installing $(compgen -G "$WHEELS/*.whl" | wc -l) wheel(s) from $WHEELS"
  timeout "$INSTALL_TIMEOUT" "$PY" -m pip install -q --no-deps --no-index "$WHEELS"/*.whl \
    || log "wheel install failed (status $?); going on with what is installed"
fi

# 2. the package itself; without setuptools (no index to fetch it from) run from the source tree instead
if ! timeout "$INSTALL_TIMEOUT" "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e .; then
  log "editable install failed; running from the source tree"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! timeout 120 "$PY" -c "import agentr1_nb.check"; then
  log "agentr1_nb.check does not import: see the error above"
  exit 3
fi

# 3. the checks, each under its own timeout; every line is printed (and saved) as its phase ends
gpu_gb=$(timeout 120 "$PY" -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 1e9) if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
log "GPU memory: ${gpu_gb} GB"
if [ -n "${PRESETS:-}" ]; then
  read -ra presets <<<"$PRESETS"
else
  presets=(colab_t4)
  [ "${gpu_gb:-0}" -ge 40 ] && presets+=(a100)
fi
status=0
for preset in "${presets[@]}"; do
  log "check --preset $preset (timeout ${CHECK_TIMEOUT}s)"
  timeout "$CHECK_TIMEOUT" "$PY" -m agentr1_nb check --preset "$preset" --json "$@" | tee -a "$jsonl"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ]; then
    echo "{\"phase\": \"timeout\", \"preset\": \"$preset\", \"seconds\": $CHECK_TIMEOUT}" | tee -a "$jsonl"
  fi
  [ "$rc" -ne 0 ] && status=$rc
done
exit "$status"
