# On the GPU machine: the shipped analyze reports and the bench_apply runs, packed into one archive under $OUT.
set -u
R=$OUT/r; mkdir -p $R/h200-analyze
date -u > $R/date.txt
python3 -m pytest -q -m cuda -p no:cacheprovider 2>&1 | tail -1 > $R/pytest_cuda.txt
for m in dynamic_control mlp_block mobilenet_block resnet_basic resnet_bottleneck shared_conv transformer_block; do
  python3 -m fxfusion analyze models/$m.py --device cuda --apply --format json -o $R/h200-analyze/$m.json 2> $R/h200-analyze/$m.err; echo "$m rc=$?"
done
python3 -m fxfusion analyze models/transformer_block.py:gpt2 --device cuda --dtype bfloat16 --apply --format json -o $R/h200-analyze/gpt2_bf16.json 2> $R/h200-analyze/gpt2_bf16.err; echo "gpt2 rc=$?"
for k in 1 2; do
  python3 benchmarks/bench_apply.py --device cuda --json $R/bench_apply_tiny_$k.json 2>&1 | grep -v Warning > $R/bench_apply_tiny_$k.txt
done
python3 benchmarks/bench_apply.py --device cuda --models transformer_block --preset gpt2 --dtype bfloat16 --json $R/bench_apply_gpt2_bf16.json 2>&1 | grep -v Warning > $R/bench_apply_gpt2_bf16.txt
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
