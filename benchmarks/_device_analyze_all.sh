set -u
mkdir -p $OUT/h200-analyze
for m in dynamic_control mlp_block mobilenet_block resnet_basic resnet_bottleneck shared_conv transformer_block; do
  python3 -m fxfusion analyze models/$m.py --device cuda --apply --format json -o $OUT/h200-analyze/$m.json 2> $OUT/h200-analyze/$m.err; echo "$m rc=$?"
done
python3 -m fxfusion analyze models/transformer_block.py:gpt2 --device cuda --dtype bfloat16 --apply --format json -o $OUT/h200-analyze/gpt2_bf16.json 2> $OUT/h200-analyze/gpt2_bf16.err; echo "gpt2 rc=$?"
