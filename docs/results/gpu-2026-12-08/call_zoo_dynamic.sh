#!/bin/bash
# Device call 2 of 2026-12-08 (prepared 2026-12-07 in docs/results/gpu-calibrate-2026-12-07, moved here; it has not
# run).  From a snapshot of the committed code, run from the snapshot's root with $OUT set by the device tool:
#   rm -rf .gpusnap4 && mkdir .gpusnap4 && git archive HEAD fxfusion benchmarks schemas profiles models tests \
#     pyproject.toml | tar -x -C .gpusnap4 && cp docs/results/gpu-2026-12-08/call_zoo_dynamic.sh .gpusnap4/
#   device command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target \
#     /tmp/site .whl/*.whl >/dev/null 2>&1; export PYTHONPATH=/tmp/site:$PWD/.gpusnap4 PYTHONUNBUFFERED=1 \
#     HF_HUB_OFFLINE=1; cd .gpusnap4 || exit; T=540 bash call_zoo_dynamic.sh      (carry .gpusnap4 and .whl)
# Steps, each bounded: the CUDA tests of the float64 gate (float64 on the GPU, token ids); tv_resnet50's --apply with
# the budget fixes (verification.steps_s says where its last stage goes); one plan over a range of shapes for GPT-2
# and ResNet-50 at their realistic presets, loaded in a fresh process, per-shape speedup over default compile.
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,utilization.gpu --format=csv,noheader; uptime; date -u
END=$(( $(date +%s) + ${T:-540} ))
mkdir -p $OUT/steps $OUT/json
timeout 60 python3 -m pytest -q -m cuda tests/test_gate.py -p no:cacheprovider 2>&1 | tail -2
echo "== tv_resnet50 $(date -u +%T)"
timeout 150 python3 benchmarks/bench_zoo.py models/zoo/tv_resnet50.py:bench --device cuda --dtype bfloat16 \
  --preset realistic --insitu-budget-s 30 --progress --out $OUT/json > $OUT/steps/tv_resnet50.out 2> $OUT/steps/tv_resnet50.err
echo "rc=$? $(date -u +%T)"; grep -E "^\| models|over 90" $OUT/steps/tv_resnet50.out | cut -c1-400
left=$(( END - $(date +%s) - 20 ))
echo "dynamic: $left s"
timeout $left python3 benchmarks/bench_dynamic.py models/zoo/hf_gpt2.py:bench models/zoo/tv_resnet50.py:bench \
  --device cuda --dtype bfloat16 --rounds 10 --out $OUT/dyn > $OUT/dynamic.md 2> $OUT/dynamic.err
echo "dynamic rc=$? $(date -u +%T)"; cut -c1-330 $OUT/dynamic.md; tail -4 $OUT/dynamic.err | cut -c1-300
cd $OUT && tar czf results.tgz steps json dyn dynamic.err dynamic.md && rm -rf steps json dyn dynamic.err; date -u
