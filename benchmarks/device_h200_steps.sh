# On the GPU machine (the device tool; $OUT is where results go back): a list of steps run one after another within
# one call's time.  STEPS holds one "SECONDS NAME COMMAND" per line: each step runs under `timeout` of at most SECONDS
# (less when the call has less left: CALL_S, default 560, counted from the start), its stdout and stderr go to
# $OUT/steps/NAME.out and NAME.err, and the command may write more files under $OUT/steps/NAME/ ($D).  Everything comes
# back as one archive, $OUT/results.tgz: the device tool returns at most 8 files a call.
set -u
END=$(( $(date +%s) + ${CALL_S:-560} ))
S=$OUT/steps; mkdir -p $S
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  > $S/gpu_$(date -u +%H%M).txt 2>&1
while IFS= read -r line; do
  [ -z "$line" ] && continue
  read -r secs name cmd <<< "$line"
  left=$(( END - $(date +%s) - 15 ))
  [ $left -lt 30 ] && { echo "$name: not run, $left s left"; continue; }
  [ $secs -gt $left ] && secs=$left
  mkdir -p $S/$name
  echo "$name: start $(date -u +%H:%M:%S), limit $secs s: $cmd"
  D=$S/$name timeout -k 10 $secs bash -c "$cmd" > $S/$name.out 2> $S/$name.err
  echo "$name: rc=$? at $(date -u +%H:%M:%S)"
  tail -n 4 $S/$name.out
done <<< "${STEPS:-}"
tar -C $OUT -czf $OUT/results.tgz steps && rm -rf $S
