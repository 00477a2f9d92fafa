#!/bin/bash
# On a lent H100 or H200 (device tool, run from the repository root), issue 28's profiles, by the card that came:
#   H100 80GB HBM3 -> the rest of profiles/h100.json: stage s4, every pattern (46) at the first 4 shapes of its gpu
#     size set, float32+bfloat16, eager/manual/compile, --resume from a journal seeded (here, before the call) with
#     the shipped profile's 246 entries and their probes, so only the missing entries are measured: the 5 patterns
#     added since (3 shapes each) and each pattern's 4th shape;
#   H200 -> the recalibration with the 2048x2048 noise reference: stage s2 (first 2 shapes), then s3, from nothing.
# Measures with benchmarks/bench_regimes.py from a snapshot of the committed code ($SNAP, `git archive HEAD`), so that
# edits of the working tree during the call change nothing.  A stage cut short (timeout -s INT) keeps its journal and
# probes; carried back as $SNAP/.runs/cal_<card> the next call resumes it.  Everything comes back as $OUT/results.tgz.
# Env: SNAP (.gpusnap3), CALL_S (seconds this script may use, default 540).
# Before the call, here (SNAP ignored in .git/info/exclude; carry it and .whl):
#   rm -rf .gpusnap3 && mkdir -p .gpusnap3/.runs/cal_h100/s4
#   git archive HEAD fxfusion benchmarks schemas profiles pyproject.toml | tar -x -C .gpusnap3
#   cp docs/results/h100-2026-12-07/call2/s3_probes.json .gpusnap3/.runs/cal_h100/s4/probes.json
#   python3 -c 'import json; from fxfusion.profiles.profile import Profile, entry_to_dict
#   f = open(".gpusnap3/.runs/cal_h100/s4/profile_regimes.json.progress.jsonl", "w")
#   [f.write(json.dumps(entry_to_dict(e), allow_nan=False) + "\n") for e in Profile.load("profiles/h100.json").entries]'
#   then: run `CALL_S=545 SNAP=.gpusnap3 bash docs/results/gpu-calibrate-2026-12-07/device_calibrate.sh`, carry
#   [".gpusnap3", ".whl"]; a cut-short stage comes back in results.tgz: unpack its cal/ into .gpusnap3/.runs/cal_<card>.
set -u
SNAP=${SNAP:-.gpusnap3}
cd $SNAP || exit 1
if [ -d ../.whl ] && ! python3 -c "import jsonschema" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$NAME" in
  *H100*) CARD=h100; HW=h100-sxm; STAGES=${STAGES:-4} ;;
  *H200*) CARD=h200; HW=h200; STAGES=${STAGES:-2 3} ;;
  *) echo "unexpected card: $NAME"; exit 1 ;;
esac
echo "card: $NAME -> $CARD, stages $STAGES"
END=$(( $(date +%s) + ${CALL_S:-540} ))
R=$OUT/cal; mkdir -p $R
[ -d .runs/cal_$CARD ] && cp -r .runs/cal_$CARD/. $R/
STAMP=$(date -u +%H%M)
{ date -u; uptime; nvidia-smi; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"; } > $R/gpu_$STAMP.txt 2>&1
prev=
for n in $STAGES; do
  S=$R/s$n
  if [ -f $S/bench_regimes.txt ]; then echo "stage s$n already finished"; prev=$S; continue; fi
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
  RESUME=; [ -d $S ] && RESUME=--resume
  J=$S/profile_regimes.json.progress.jsonl
  if [ -n "$RESUME" ] && [ -s $J ] && ! head -1 $J | grep -q '"fxfusion.calibration-journal"'; then
    # a seeded journal (entries only): the journal's first line must say the settings they were measured under
    # (fxfusion.calibration.journal), which only a run of these very options writes -- start one into a scratch
    # folder, stop it once its journal has that line, and put the line on top of the seeded entries
    T=$(mktemp -d); python3 benchmarks/bench_regimes.py --out $T --device cuda --hardware $HW --patterns all \
      --sizes $n --dtypes float32,bfloat16 --compile-modes compile > $T/log.txt 2>&1 & hp=$!
    for i in $(seq 90); do [ -s $T/profile_regimes.json.progress.jsonl ] && break; sleep 1; done
    kill -TERM $hp 2>/dev/null; wait $hp 2>/dev/null  # TERM: a background job of a script ignores INT
    head -1 $T/profile_regimes.json.progress.jsonl > $J.new && grep -q '"fxfusion.calibration-journal"' $J.new \
      && cat $J >> $J.new && mv $J.new $J && echo "journal header: $(cut -c1-160 $J | head -1)" \
      || { echo "no journal header could be written"; tail -3 $T/log.txt; exit 1; }
  fi
  left=$(( END - $(date +%s) - 25 ))
  [ $left -lt 60 ] && { echo "no time left for stage s$n"; break; }
  echo "stage s$n: $left s left, $(date -u +%H:%M:%S) UTC ${RESUME}"
  mkdir -p $S
  timeout -k 20 -s INT $left python3 benchmarks/bench_regimes.py --out $S --device cuda --hardware $HW \
    --patterns all --sizes $n --dtypes float32,bfloat16 --compile-modes compile $RESUME > $S/log_$STAMP.txt 2>&1
  echo "stage s$n rc=$? at $(date -u +%H:%M:%S)"; grep -c '^\[' $S/log_$STAMP.txt; tail -4 $S/log_$STAMP.txt | cut -c1-300
  [ -f $S/bench_regimes.txt ] || break
  prev=$S
done
echo "end $(date -u +%H:%M:%S) UTC"
tar -C $OUT -czf $OUT/results.tgz cal && rm -rf $OUT/cal
