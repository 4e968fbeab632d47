#!/usr/bin/env bash
# Every GPU check of the static decode path, in one command (budget: 4 minutes on one H100 / H200):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR default: $OUT if set, else benchmarks/measured
#
# 1. correctness on the device (<= 100 s): the Triton kernel tests, the SparseCache tests (CPU-side and CUDA ones)
#    and the static path's tests -- CUDA graph replay decodes the same tokens as eager steps (fp32 and bf16, torch
#    and Triton paths), the Triton static path the same tokens as the torch static path (fp32);
# 2. benchmarks/gpu_e2e.py (<= 135 s): decode tokens/s, dense vs kvprism vs torch gather, batch 1 and 8, contexts
#    32K and 128K, every side one CUDA graph per step; table + JSON in OUT_DIR.
# Exit status: 0 only if both parts succeed. Logs: OUT_DIR/gpu_check-pytest.txt, OUT_DIR/gpu_e2e-*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/measured}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible; nothing checked" >&2
    exit 2
fi
tag=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower().replace('/', '-'))")

if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 100 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" --durations=8 \
        tests/kernels/test_triton_decode.py tests/hf/test_cache_attend.py tests/hf/test_cache.py \
        tests/hf/test_static.py tests/hf/test_carry.py 2>&1 | tee "$OUT_DIR/gpu_check-pytest.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "gpu_check.sh: tests failed or timed out (rc $rc)" >&2; status=1; }
else
    echo "gpu_check.sh: pytest is not installed (pip install pytest); tests skipped" | tee "$OUT_DIR/gpu_check-pytest.txt" >&2
    status=1
fi

timeout 135 "$PY" benchmarks/gpu_e2e.py --steps 16 \
    --json "$OUT_DIR/gpu_e2e-$tag.json" --table "$OUT_DIR/gpu_e2e-$tag.txt" 2>&1 | tee "$OUT_DIR/gpu_e2e-$tag.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "gpu_check.sh: gpu_e2e.py failed or timed out (rc $rc)" >&2; status=1; }
exit $status
