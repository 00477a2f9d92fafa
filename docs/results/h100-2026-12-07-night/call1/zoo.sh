#!/bin/bash
# usage: zoo.sh TIMEOUT SPEC... ; one process per model, logs under $OUT/steps
mkdir -p $OUT/steps $OUT/json
t=$1; shift
for spec in "$@"; do
  n=$(basename ${spec%%:*} .py)_${spec##*:}
  echo "== $spec $(date -u +%H:%M:%S)"
  timeout $t python3 benchmarks/bench_zoo.py $spec --device cuda --dtype bfloat16 --preset realistic --insitu-budget-s 30 --progress --out $OUT/json > $OUT/steps/$n.out 2> $OUT/steps/$n.err
  echo "rc=$? $(date -u +%H:%M:%S)"; grep "^| models" $OUT/steps/$n.out | head -2; grep -E "stage |candidate |Error" $OUT/steps/$n.err | tail -25
done
