#!/usr/bin/env bash
# The GPU checks and figures, as one script for a short lease on a GPU machine:
#   1. training throughput and peak memory per backbone at 224 px in bf16, with the input
#      pipeline, and a profile of the AlexNet step (what limits it);
#   2. the GPU tests (tests/test_gpu.py: GPU vs CPU parity, a bf16 step, a GPU-trained run on the CPU);
#   3. the synthetic catalog end to end on the GPU: `fsn synth`, `fsn train --config synthetic`
#      with and without localization (the two at once on the one GPU), `fsn evaluate` on test;
#   4. `torchrun` with one process (the NCCL code path of distributed training).
#
#     bench/gpu_session.sh [OUT_DIR]        (default: $OUT, else /tmp/fsn-gpu)
#
# Needs the package importable (installed, or PYTHONPATH=src plus its dependencies). Each stage
# has its own time limit (TRAIN_EXTRA="key=value ..." appends training overrides, for a dry run), so one that hangs cannot take the others with it; logs go to OUT_DIR.
set -u
OUT_DIR=${1:-${OUT:-/tmp/fsn-gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), os.cpu_count(), 'CPU cores')"
} 2>&1 | tee "$OUT_DIR/env.txt"

stage "training throughput"
timeout 200 $PY bench/train_throughput.py --device cuda --pipeline --fused-adam --profile 5 2>&1 | tee "$OUT_DIR/throughput.log"

stage "GPU tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"

stage "synthetic catalog on the GPU"
timed() { local name=$1 t0=$SECONDS; shift; "$@"; local rc=$?; echo "$name: exit $rc, wall $((SECONDS - t0)) s"; }
clean() { grep -av "it/s\]\|s/it\]" "$1" | tr '\r' '\n' | grep -av "it/s\]\|s/it\]\|^ *$" | tail -${2:-12}; }
{
  $PY -m fashionsearchnet synth "$WORK/syn" --n 3000 --size 128 --seed 0
  timed "train without localization" timeout 240 $PY -m fashionsearchnet train --data "$WORK/syn" --out "$WORK/noloc" \
    --config synthetic localization=false ${TRAIN_EXTRA:-} > "$WORK/noloc.log" 2>&1 &
  timed "train FashionSearchNet" timeout 240 $PY -m fashionsearchnet train --data "$WORK/syn" --out "$WORK/fsn" \
    --config synthetic ${TRAIN_EXTRA:-} > "$WORK/fsn.log" 2>&1
  wait
  clean "$WORK/fsn.log" 15; clean "$WORK/noloc.log" 6
  timed evaluate timeout 150 $PY -m fashionsearchnet evaluate --model "$WORK/fsn" --noloc-model "$WORK/noloc" \
    --data "$WORK/syn" --out "$WORK/report" --no-figures > "$WORK/eval.log" 2>&1
  clean "$WORK/eval.log" 40
  cp "$WORK/report/report.json" "$OUT_DIR/synthetic_report.json"
} 2>&1 | tee "$OUT_DIR/synthetic.log"

stage "torchrun, one process (NCCL)"
timed torchrun timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m fashionsearchnet train \
  --data "$WORK/syn" --out "$WORK/ddp" --config synthetic epochs_localization=1 epochs_attributes=1 epochs_global=1 ${TRAIN_EXTRA:-} > "$WORK/ddp.log" 2>&1
clean "$WORK/ddp.log" 10 | tee "$OUT_DIR/torchrun.log"

stage done
