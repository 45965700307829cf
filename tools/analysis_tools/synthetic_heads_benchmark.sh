#!/usr/bin/env bash
# The per-head synthetic benchmark: train meanP from scratch, then seqLSTM,
# seqTransf and tightTransf from the meanP model; test each and score each
# caption of a moving clip against its clip and the clip played backwards.
#
#   bash tools/analysis_tools/synthetic_heads_benchmark.sh [DEVICE] [extra train.py args]
#
# Run from the repository root after `python tools/data/make_synthetic_dataset.py`.
# DEVICE (cpu or cuda, default cpu) is where the reversal probe runs.
set -euo pipefail
DEVICE=${1:-cpu}
shift || true
C=configs/retrieval/clip4clip
W=work_dirs
for head in meanP seqLSTM seqTransf tightTransf; do
  if [ "$head" = meanP ]; then
    name=clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb
  else
    name=clip4clip-${head}_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb
  fi
  start=$(date +%s)
  python tools/train.py "$C/$name.py" --work-dir "$W/$name" "$@" > "$W/$name.train.log" 2>&1
  took=$(( $(date +%s) - start ))
  python tools/test.py "$C/$name.py" "$W/$name/epoch_30.pth" --work-dir "$W/$name" \
    > "$W/$name.test.log" 2>&1
  metrics=$(grep -o 't2v/R1: [0-9.]*.*t2v/R10: [0-9.]*' "$W/$name.test.log" | tail -1)
  probe=$(python tools/analysis_tools/reversal_probe.py "$C/$name.py" \
    "$W/$name/epoch_30.pth" --device "$DEVICE" 2>/dev/null | tail -1)
  echo "$head | train ${took} s | $metrics | reversal $probe"
done
