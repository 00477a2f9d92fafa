# On the GPU machine: the whole test suite on its torch, and the GPT-2 MLP (written-out NewGELU) analysed and applied.
set -u
R=$OUT/r; mkdir -p $R/h200-analyze
date -u > $R/date.txt
python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -3 > $R/pytest_all_torch211.txt
python3 -m fxfusion analyze models/gpt2_mlp.py:gpt2 --device cuda --dtype bfloat16 --apply --format json -o $R/h200-analyze/gpt2_mlp_bf16.json 2> $R/h200-analyze/gpt2_mlp_bf16.err; echo "gpt2_mlp bf16 rc=$?"
python3 -m fxfusion analyze models/gpt2_mlp.py --device cuda --apply --format json -o $R/h200-analyze/gpt2_mlp.json 2> $R/h200-analyze/gpt2_mlp.err; echo "gpt2_mlp rc=$?"
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
