#!/usr/bin/env bash
# Run refplan's GPU bench matrix (refplan/suites/gpu.toml) on one H100/H200 and write its CSV,
# summary.md and charts into $OUT (or the directory given as $1, default reports/bench-gpu).
#
#   bash bench/gpu/run.sh [OUT_DIR] [extra `refplan bench` flags...]
#
# The machine needs torch with CUDA, transformers, peft, accelerate, pandas, rich, nvidia-ml-py and
# matplotlib. trl and datasets (and their small deps) may come as wheels in ./.whl: they are
# installed with `pip --no-index --no-deps --target /tmp/site` and put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
OUT_DIR="${1:-${OUT:-reports/bench-gpu}}"
shift || true
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export REFPLAN_CACHE="${REFPLAN_CACHE:-/tmp/refplan-cache}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_NVML_BASED_CUDA_CHECK=1

"$PY" - <<'PY'
import torch, transformers, trl, peft
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(f"torch {torch.__version__} transformers {transformers.__version__} trl {trl.__version__} "
      f"peft {peft.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true

# Build the random-weight model once (outside every scenario's timer).
"$PY" -c "from refplan.harness.tiny import build_model; print('model:', build_model('llama-0.5b'))"

start=$(date +%s)
set +e
"$PY" -m refplan.cli bench --suite gpu --device cuda --out "$OUT_DIR" --no-progress --timeout 180 "$@"
rc=$?
set -e
echo "bench wall time: $(( $(date +%s) - start )) s, exit $rc"
exit $rc
