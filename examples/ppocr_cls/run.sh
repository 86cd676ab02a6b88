#!/usr/bin/env bash
# The bundled example: PP-OCR's text-direction classifier on text-line crops of scikit-image's page.png.
# Imports the ONNX model into the top dialect and checks it against ONNX Runtime on a real crop.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
model="$(python -m tpu_cal.zoo.ppocr cls)"
# PP-OCR cls preprocessing: BGR, height 48 keeping the aspect ratio, (x/255 - 0.5)/0.5
tpu-cal transform --model_name ppocr_cls --model_def "$model" \
  --input_shapes '[[1,3,48,192]]' --keep_aspect_ratio --pad_type normal --pad_value 127 \
  --mean 127.5,127.5,127.5 --scale 0.0078431,0.0078431,0.0078431 --pixel_format bgr \
  --test_input "$here/images/line1_096_0.png" --test_result "$out/ppocr_cls_top_outputs.npz" \
  --mlir "$out/ppocr_cls.mlir"
# Calibrate on the 64 crops (KLD + auto-tune, TPU-MLIR's defaults): a cali_table and the calibrated module
tpu-cal calibrate "$out/ppocr_cls.mlir" --dataset "$here/images" --input_num 64 --tune_num 10 \
  -o "$out/ppocr_cls_cali_table" --save_mlir "$out/ppocr_cls_calibrated.mlir"
# Lower to int8 for BM1684X and simulate it against the float module, layer by layer
tpu-cal lower "$out/ppocr_cls_calibrated.mlir" --quantize INT8 --processor bm1684x \
  -o "$out/ppocr_cls_bm1684x_int8.mlir" --test_input "$here/images/line1_096_0.png"
