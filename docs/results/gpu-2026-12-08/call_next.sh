#!/bin/bash
# Prepared 2026-12-08 for the next lent GPU (issues 25, 26).  From a snapshot of the committed code, run from the
# snapshot's root with $OUT set by the device tool:
#   rm -rf .gpusnap5 && mkdir .gpusnap5 && git archive HEAD fxfusion benchmarks schemas profiles models tests \
#     pyproject.toml | tar -x -C .gpusnap5 && cp docs/results/gpu-2026-12-08/call_next.sh .gpusnap5/
#   device command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target \
#     /tmp/site .whl/*.whl >/dev/null 2>&1; export PYTHONPATH=/tmp/site:$PWD/.gpusnap5 PYTHONUNBUFFERED=1 \
#     HF_HUB_OFFLINE=1; cd .gpusnap5 || exit; T=570 bash call_next.sh      (carry .gpusnap5 and .whl)
# Steps, each bounded: the zoo's GPU coverage over all 31 realistic presets (cut at 19 after 130 s on 2026-12-08);
# Qwen2 decoding in the loop again after d413aba (host-bound from 30%: freezing + CUDA graphs built right after
# compile); Llama decoding in float32 (the token check without bfloat16's near-ties) with what is left.
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,utilization.gpu --format=csv,noheader; uptime; date -u
END=$(( $(date +%s) + ${T:-570} ))
mkdir -p $OUT/decode $OUT/decode32
timeout 240 python3 benchmarks/zoo_coverage.py --device cuda --dtype bfloat16 --preset realistic > $OUT/coverage.md \
  2> $OUT/coverage.err
echo "coverage rc=$? $(date -u +%T)"; grep "^models:" $OUT/coverage.md
left=$(( END - $(date +%s) - 60 ))
[ $left -gt 200 ] && left=200
timeout $left python3 benchmarks/bench_decode.py hf_qwen2 --device cuda --dtype bfloat16 --preset realistic --steps 32 \
  --rounds 10 --progress --save-plans $OUT/decode/plans --out $OUT/decode > $OUT/decode.log 2> $OUT/decode.err
echo "decode qwen2 rc=$? $(date -u +%T)"; cut -c1-300 $OUT/decode.log | tail -14; grep "host-bound" $OUT/decode.err | head -2
left=$(( END - $(date +%s) - 15 ))
echo "float32: $left s"
timeout $left python3 benchmarks/bench_decode.py hf_llama --device cuda --preset realistic --steps 32 --rounds 6 \
  --progress --out $OUT/decode32 > $OUT/decode32.log 2> $OUT/decode32.err
echo "decode float32 rc=$? $(date -u +%T)"; cut -c1-300 $OUT/decode32.log | tail -12
cd $OUT && tar czf results.tgz decode decode32 decode.err decode32.err decode.log decode32.log coverage.err \
  && rm -rf decode decode32 decode.err decode32.err coverage.err; date -u
