# On the GPU machine (the device tool; $OUT is where results go back): the shipped H200 profile recalibrated in both
# regimes and probed against a plain back-to-back loop (bench_regimes over the whole library, with the compile modes
# `fxfusion calibrate` measures), in as many calls as it takes.  A call cut short leaves the journal and the probes
# in $OUT/cal; carried back as .runs/cal, the next call resumes from them.  Time left in the call after the
# calibration finishes goes to the commands in $THEN (one per line), each under the time still left; they write
# under $OUT/then.  Everything comes back as one archive, $OUT/results.tgz: the device tool returns at most 8 files a
# call (on 2026-12-01 a finished profile was lost that way).
set -u
mkdir -p $OUT/then
END=$(( $(date +%s) + ${CALL_S:-560} ))
R=$OUT/cal; mkdir -p $R
RESUME=
if [ -d .runs/cal ]; then cp -r .runs/cal/. $R/; RESUME=--resume; fi
STAMP=$(date -u +%H%M)
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw --format=csv > $R/gpu_$STAMP.txt 2>&1
if [ ! -f $R/bench_regimes.txt ]; then
  timeout -k 20 -s INT $(( END - $(date +%s) - 25 )) python3 benchmarks/bench_regimes.py --out $R --device cuda \
    --patterns all --sizes all --dtypes float32,bfloat16 --compile-modes compile,compile_reduce_overhead $RESUME \
    > $R/log_$STAMP.txt 2>&1
  echo "bench_regimes rc=$? at $(date -u +%H:%M:%S)"
  tail -3 $R/log_$STAMP.txt
fi
if [ -f $R/bench_regimes.txt ] && [ -n "${THEN:-}" ]; then
  while IFS= read -r cmd; do
    [ -z "$cmd" ] && continue
    left=$(( END - $(date +%s) - 15 ))
    [ $left -lt 60 ] && { echo "no time left for: $cmd"; continue; }
    echo "running ($left s left): $cmd"
    timeout -k 10 $left bash -c "$cmd"; echo "rc=$?"
  done <<< "$THEN"
fi
tar -C $OUT -czf $OUT/results.tgz cal then && rm -rf $OUT/cal $OUT/then
