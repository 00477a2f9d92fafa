#!/bin/bash
# Llama decode in the generation loop (plans saved) -> coverage (realistic, GPU) -> token-id CUDA test -> resnet50 zoo row
mkdir -p $OUT/decode
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,utilization.gpu --format=csv,noheader; uptime; date -u
timeout 250 python3 benchmarks/bench_decode.py hf_llama --device cuda --dtype bfloat16 --preset realistic --steps 32 --rounds 10 --progress --save-plans $OUT/decode/plans --out $OUT/decode > $OUT/decode.log 2> $OUT/decode.err
echo "decode rc=$? $(date -u +%T)"; tail -30 $OUT/decode.log; grep -E "stage |candidate |Error" $OUT/decode.err | tail -15
timeout 90 python3 benchmarks/zoo_coverage.py --device cuda --dtype bfloat16 --preset realistic > $OUT/coverage.md 2> $OUT/coverage.err; echo "coverage rc=$? $(date -u +%T)"; grep "^models:" $OUT/coverage.md
timeout 30 python3 -m pytest -q -m cuda tests/test_gate.py -k token -p no:cacheprovider 2>&1 | tail -2
bash zoo.sh 170 models/zoo/tv_resnet50.py:bench 2>&1 | tee $OUT/zoo.log
cd $OUT && tar czf results.tgz steps json coverage.err decode.err decode coverage.md decode.log && rm -rf steps json coverage.err decode.err decode coverage.md; date -u
