#!/usr/bin/env bash
# One prepared GPU session (<= ~9 minutes on one H100/H200): CUDA-term calibration, the GPU bench
# matrix, and the planner comparison. Writes a handful of files into $OUT (default reports/gpu):
#   cuda_terms.csv, bench.csv, summary.md, env.json, compare.md, session.log
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-reports/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed" >&2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "== calibrate"; timeout 90 "$PY" bench/gpu/calibrate.py --out "$OUT/cuda_terms.csv"
  echo "== bench"; BENCH_DIR=/tmp/refplan-bench-gpu
  timeout "${BENCH_TIMEOUT:-420}" bash bench/gpu/run.sh "$BENCH_DIR"
  echo "bench exit $?"
  cp "$BENCH_DIR"/bench.csv "$BENCH_DIR"/summary.md "$BENCH_DIR"/env.json "$OUT"/ 2>/dev/null
  echo "== compare"; timeout 60 "$PY" bench/gpu/compare.py "$OUT/bench.csv" --out "$OUT/compare.md"
} 2>&1 | tee "$OUT/session.log" | tail -120
