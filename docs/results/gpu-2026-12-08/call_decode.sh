#!/bin/bash
# Device call 1 of 2026-12-08 (issues 25, 26), run from a snapshot of the committed code (.gpusnap4, `git archive HEAD
# fxfusion benchmarks schemas profiles models tests pyproject.toml`, this script copied in), $OUT from the device tool:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/.gpusnap4 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1; cd .gpusnap4; T=570 bash call_decode.sh
# Steps, each bounded: the CUDA tests of the float64 gate; the zoo's coverage on the GPU with the newest matchers (from
# head/, a later commit's snapshot carried inside this one: `git archive <commit> fxfusion benchmarks schemas profiles
# models tests pyproject.toml`, its hash in head/COMMIT); Qwen2, GPT-2 and Llama decoding with a static KV cache in the
# generation loop (bfloat16, realistic, 32 greedy steps, 10 interleaved rounds, plans saved); Llama again in float32
# (the token check without bfloat16's near-ties) with what is left.
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,utilization.gpu --format=csv,noheader; uptime; date -u
python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
END=$(( $(date +%s) + ${T:-570} ))
mkdir -p $OUT/decode $OUT/decode32
timeout 70 python3 -m pytest -q -m cuda tests/test_gate.py -p no:cacheprovider > $OUT/test_gate_cuda.txt 2>&1
echo "test_gate cuda rc=$? $(date -u +%T)"; tail -3 $OUT/test_gate_cuda.txt
if [ -d head ]; then  # the zoo's coverage with the newest matchers (a snapshot of a later commit, carried inside this one)
  (cd head && PYTHONPATH=/tmp/site:$PWD timeout 130 python3 benchmarks/zoo_coverage.py --device cuda --dtype bfloat16 \
    --preset realistic > $OUT/coverage_head.md 2> $OUT/coverage_head.err)
  rc=$?; echo "coverage (head $(cat head/COMMIT 2>/dev/null)) rc=$rc $(date -u +%T)"; grep "^models:" $OUT/coverage_head.md
fi
left=$(( END - $(date +%s) - 100 ))
timeout $left python3 benchmarks/bench_decode.py hf_qwen2 hf_gpt2 hf_llama --device cuda --dtype bfloat16 \
  --preset realistic --steps 32 --rounds 10 --progress --save-plans $OUT/decode/plans --out $OUT/decode \
  > $OUT/decode.log 2> $OUT/decode.err
echo "decode bf16 rc=$? $(date -u +%T)"; cut -c1-300 $OUT/decode.log | tail -45; grep -E "Error|Traceback" $OUT/decode.err | tail -5
left=$(( END - $(date +%s) - 15 ))
echo "float32: $left s"
timeout $left python3 benchmarks/bench_decode.py hf_llama --device cuda --preset realistic --steps 32 --rounds 6 \
  --progress --out $OUT/decode32 > $OUT/decode32.log 2> $OUT/decode32.err
echo "decode float32 rc=$? $(date -u +%T)"; cut -c1-300 $OUT/decode32.log | tail -20
cd $OUT && tar czf results.tgz decode decode32 decode.err decode32.err decode.log decode32.log test_gate_cuda.txt \
  coverage_head.md coverage_head.err && rm -rf decode decode32 decode.err decode32.err coverage_head.err; date -u
