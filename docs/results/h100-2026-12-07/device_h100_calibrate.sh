#!/bin/bash
# On the lent H100 (device tool, run from the repository root): the H100 profile of issue 28, calibrated and probed by
# benchmarks/bench_regimes.py from the snapshot of the committed code in .gpusnap (git archive HEAD), so that
# concurrent edits of the working tree do not change what measures.  In stages, each a complete bench_regimes run:
#   s2: every pattern, the first 2 shapes of its gpu size set, float32+bfloat16, eager/manual/compile
#   s3: the same with the first 3 shapes, resumed from s2's entries and probes (its profile turned back into a journal)
# A stage cut short (timeout -s INT) keeps its journal and probes; carried back as .gpusnap/.runs/cal the next call
# resumes it.  Everything comes back as one archive, $OUT/results.tgz.
# Env: CALL_S (seconds this script may use, default 540), STAGES (default "2 3"), DEV (cuda), HW (h100-sxm).
set -u
cd .gpusnap || exit 1
if [ -d ../.whl ] && ! python3 -c "import jsonschema" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}; HW=${HW:-h100-sxm}; STAGES=${STAGES:-2 3}
END=$(( $(date +%s) + ${CALL_S:-540} ))
R=$OUT/cal; mkdir -p $R
[ -d .runs/cal ] && cp -r .runs/cal/. $R/
STAMP=$(date -u +%H%M)
{ date -u; uptime; nvidia-smi; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"; } > $R/gpu_$STAMP.txt 2>&1
head -c 0 /dev/null
prev=
for n in $STAGES; do
  S=$R/s$n
  if [ -f $S/bench_regimes.txt ]; then echo "stage s$n already finished"; prev=$S; continue; fi
  RESUME=
  if [ -n "$prev" ] && [ ! -d $S ]; then  # seed from the finished smaller stage: its entries become this journal
    mkdir -p $S && cp $prev/probes.json $S/ && python3 - "$prev/profile_regimes.json" "$S/profile_regimes.json.progress.jsonl" <<'PY' || exit 1
import json, sys
from fxfusion.profiles.profile import Profile, entry_to_dict
p = Profile.load(sys.argv[1])
with open(sys.argv[2], "w") as f:
    for e in p.entries:
        f.write(json.dumps(entry_to_dict(e), allow_nan=False) + "\n")
print(f"seeded {len(p.entries)} entries from {sys.argv[1]}")
PY
  fi
  [ -d $S ] && RESUME=--resume
  left=$(( END - $(date +%s) - 25 ))
  [ $left -lt 60 ] && { echo "no time left for stage s$n"; break; }
  echo "stage s$n: $left s left, $(date -u +%H:%M:%S) UTC ${RESUME}"
  mkdir -p $S
  timeout -k 20 -s INT $left python3 benchmarks/bench_regimes.py --out $S --device $DEV --hardware $HW \
    --patterns ${PATTERNS:-all} --sizes $n --dtypes ${DTYPES:-float32,bfloat16} --compile-modes compile $RESUME \
    > $S/log_$STAMP.txt 2>&1
  echo "stage s$n rc=$? at $(date -u +%H:%M:%S)"; grep -c '^\[' $S/log_$STAMP.txt; tail -4 $S/log_$STAMP.txt | cut -c1-300
  [ -f $S/bench_regimes.txt ] || break
  prev=$S
done
echo "end $(date -u +%H:%M:%S) UTC"
tar -C $OUT -czf $OUT/results.tgz cal && rm -rf $OUT/cal
