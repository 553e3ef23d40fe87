#!/usr/bin/env bash
# The GPU speed table: bf16 training step, throughput and MFU of flava-base (backbone and
# multimodal pretraining) against transformers, the SDPA kernels that ran (and whether the
# flash backend alone can run the step), and torch.compile of both; one run, about 5 minutes
# on one H100/H200 (8 at most). Writes benchmarks/results/speed_gpu.{md,json}.
#
#   bash benchmarks/gpu.sh                        # on a CUDA machine
#   bash benchmarks/gpu.sh --device cpu --smoke   # seconds-long dry run of the same path on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
DEVICE=cuda
SMOKE=0
OUT=benchmarks/results/speed_gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu.sh: unknown option $1 (use --device cpu|cuda, --smoke, --out PATH)" >&2; exit 2 ;;
  esac
done

"$PYTHON" -c "import torch, transformers, flava_zoo" 2>/dev/null || {
  echo "gpu.sh: cannot import torch, transformers and flava_zoo with $PYTHON (pip install -e '.[test]')" >&2
  exit 1
}
if [ "$DEVICE" = cuda ]; then
  "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu.sh: torch.cuda.is_available() is False: no usable GPU here (try --device cpu --smoke)" >&2
    exit 1
  }
  "$PYTHON" -c "import torch; print('gpu.sh:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
fi

if [ "$SMOKE" = 1 ]; then
  exec "$PYTHON" benchmarks/speed.py --device "$DEVICE" --smoke --in-process --precisions fp32 --sizes "" --data-batches 0 \
    --compile flava_zoo --compile-backend eager --title "Speed on GPU (smoke)" --out "$OUT"
fi
exec timeout 470 "$PYTHON" benchmarks/speed.py --device "$DEVICE" --precisions bf16 --sizes flava-base \
  --batch 32 --warmup 3 --reps 20 --peak-sizes 4096,8192 \
  --pretrain-sizes flava-base --pretrain-batch 64 --pretrain-warmup 3 --pretrain-reps 20 \
  --compile flava_zoo,transformers --nominal-peak-tflops 989 --data-batches 0 \
  --title "Speed on GPU" --out "$OUT"
