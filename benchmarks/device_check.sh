#!/usr/bin/env bash
# The first-GPU check (issue #23, item 6); see benchmarks/device_check.py for what it measures.
#
#   bash benchmarks/device_check.sh            # one H100/H200: about 6-7 minutes, never more than DEVICE_CHECK_TIMEOUT
#   bash benchmarks/device_check.sh --tiny     # CPU smoke run of the same sections, 1-2 minutes
#
# Nothing is downloaded: it uses the Python found on the machine (torch, transformers, trl, peft must be there),
# imports trl_t3d from this tree (PYTHONPATH), and only if that fails tries `pip install -e . --no-deps` offline.
# Results: $OUT/device_check.json and .md ($OUT defaults to benchmarks/results/device/), rewritten after each section.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== device_check: $(date -u +%FT%TZ) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 1. A Python with the four libraries (a carried .venv only if it works here; prefer one whose torch sees CUDA).
PY=""
for cand in ${PYTHON:-} python3 python .venv/bin/python; do
  [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
  if "$cand" -c "import torch, transformers, trl, peft" >/dev/null 2>&1; then
    if [ -z "$PY" ]; then PY="$cand"; fi
    if "$cand" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
      PY="$cand"
      break
    fi
  fi
done
if [ -z "$PY" ]; then
  echo "!! no Python here imports torch, transformers, trl and peft. What each candidate lacks:"
  for cand in python3 python .venv/bin/python; do
    command -v "$cand" >/dev/null 2>&1 || continue
    echo "-- $cand ($("$cand" --version 2>&1)):"
    for mod in torch transformers trl peft datasets accelerate huggingface_hub yaml; do
      "$cand" -c "import $mod; print('   ok     $mod', getattr($mod, '__version__', ''))" 2>/dev/null \
        || echo "   MISSING $mod"
    done
  done
  echo "!! install them on this machine (nothing is downloaded by this script), or set PYTHON=/path/to/python"
  exit 2
fi
echo "== python: $PY ($("$PY" --version 2>&1))"
"$PY" -c "import torch, transformers, trl, peft; print('== torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| transformers', transformers.__version__, '| trl', trl.__version__, \
'| peft', peft.__version__)"

# 2. trl_t3d from this tree; pip only offline and without dependencies, and only if the plain import fails.
if ! "$PY" -c "import trl_t3d" 2>/tmp/trl_t3d_import.err; then
  echo "!! import trl_t3d failed from the tree:"; tail -3 /tmp/trl_t3d_import.err
  echo "== trying: $PY -m pip install -e . --no-deps --no-index --no-build-isolation"
  "$PY" -m pip install -q -e . --no-deps --no-index --no-build-isolation 2>&1 | tail -3
  if ! "$PY" -c "import trl_t3d" 2>/tmp/trl_t3d_import.err; then
    echo "!! trl_t3d still does not import; missing modules:"
    for mod in datasets accelerate huggingface_hub matplotlib yaml tqdm; do
      "$PY" -c "import $mod" 2>/dev/null || echo "   MISSING $mod"
    done
    tail -5 /tmp/trl_t3d_import.err
    exit 3
  fi
fi

# 3. The check, bounded in wall time (the JSON holds every section finished before a timeout).
LIMIT="${DEVICE_CHECK_TIMEOUT:-450}"
timeout -k 15 "$LIMIT" "$PY" benchmarks/device_check.py "$@"
rc=$?
[ $rc -eq 124 ] && echo "!! stopped at the ${LIMIT}s limit; finished sections are in $OUT/device_check.json"
ls -la "$OUT"
exit $rc
