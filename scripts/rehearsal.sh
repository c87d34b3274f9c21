#!/usr/bin/env bash
# The full-size rehearsal of colab_t4 on a CPU, recorded the way the package ships it (notebook 07 reads it):
#   scripts/rehearsal.sh [OUT_JSON]        default: agentr1_nb/results/rehearsal_colab_t4.json
# Runs `python -m agentr1_nb check --preset colab_t4 --full-size --json` under /usr/bin/time -v, with the
# machine's load before and after (others' jobs on a shared machine slow it down: say so beside the time).
# PACK_ONLY=DIR packs the files of a run made by hand into DIR instead (lines.jsonl, stderr = time -v's log,
# uptime_before, uptime_after).
set -euo pipefail
out=${1:-agentr1_nb/results/rehearsal_colab_t4.json}
py=${PYTHON:-python}
cmd="python -m agentr1_nb check --preset colab_t4 --full-size --json"
if [[ -n "${PACK_ONLY:-}" ]]; then
  work=$PACK_ONLY
else
  work=$(mktemp -d)
  uptime > "$work/uptime_before"
  /usr/bin/time -v "$py" -m agentr1_nb check --preset colab_t4 --full-size --json \
    > "$work/lines.jsonl" 2> "$work/stderr" || true
  uptime > "$work/uptime_after"
fi
"$py" - "$work" "$out" "$cmd" <<'PY'
import json, platform, re, sys
from pathlib import Path

from agentr1_nb.rehearsal import WHY_OFF, repredict

work, out, cmd = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lines = [json.loads(s) for s in (work / "lines.jsonl").read_text().splitlines() if s.strip()]
log = (work / "stderr").read_text(errors="replace")


def timed(key):
    m = re.search(rf"{re.escape(key)}: (.+)", log)
    return m.group(1).strip() if m else None


def load(name):
    return float(re.search(r"load average: ([\d.]+)", (work / name).read_text()).group(1))


wall = timed("Elapsed (wall clock) time (h:mm:ss or m:ss)")
parts = [float(p) for p in wall.split(":")]
wall_s = sum(p * 60**i for i, p in enumerate(reversed(parts)))
model = re.search(r"model name\s*: (.+)", Path("/proc/cpuinfo").read_text())
record = {
    "command": cmd,
    "machine": f"{model.group(1).strip() if model else platform.processor()}, {lines[0].get('cpu_count')} cores",
    "wall_s": wall_s,
    "user_s": float(timed("User time (seconds)")),
    "system_s": float(timed("System time (seconds)")),
    "peak_rss_gb": int(timed("Maximum resident set size (kbytes)")) * 1024 / 1e9,
    "load_before": load("uptime_before"),
    "load_after": load("uptime_after"),
    "lines": lines,
}
if lines[-1]["phase"] == "summary":
    terms = record["measured_vs_predicted"] = repredict(lines)  # with today's memory_budget
    record["why_off"] = {k: WHY_OFF.get(k, "?") for k, t in terms.items() if not t["within_10pct"]}
out.write_text(json.dumps(record, indent=1) + "\n")
print(f"wrote {out}: {wall_s / 60:.1f} min wall, peak RSS {record['peak_rss_gb']:.1f} GB")
PY
