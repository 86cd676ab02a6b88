// The top dialect loads into stock mlir-opt from its IRDL file and round-trips (print, parse again, print).
// RUN: mlir-opt --irdl-file=%irdl_top %s | mlir-opt --irdl-file=%irdl_top | filecheck %s
// The same text through our driver with an empty pipeline.
// RUN: tpu-cal-opt %s | filecheck %s

// CHECK-LABEL: func.func @net
func.func @net(%arg0: tensor<1x3x8x8xf32>) -> (tensor<1x8xf32>, tensor<1x16x4x4xf32>) {
  // CHECK: "top.input"(%{{.*}}) : (tensor<1x3x8x8xf32>) -> tensor<1x3x8x8xf32>
  %in = "top.input"(%arg0) : (tensor<1x3x8x8xf32>) -> tensor<1x3x8x8xf32>
  // CHECK: "top.weight"() {name = "conv1_w"}
  %w = "top.weight"() {name = "conv1_w"} : () -> tensor<8x3x3x3xf32>
  // CHECK: "top.none"() : () -> none
  %none = "top.none"() : () -> none
  // CHECK: "top.conv"(%{{.*}}, %{{.*}}, %{{.*}}) {dilations = array<i64: 1, 1>, group = 1 : i64, kernel_shape = array<i64: 3, 3>, pads = array<i64: 1, 1, 1, 1>, strides = array<i64: 2, 2>}
  // CHECK-SAME: (tensor<1x3x8x8xf32>, tensor<8x3x3x3xf32>, none) -> tensor<1x8x4x4xf32>
  %conv = "top.conv"(%in, %w, %none) {kernel_shape = array<i64: 3, 3>, strides = array<i64: 2, 2>,
      pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, group = 1 : i64}
      : (tensor<1x3x8x8xf32>, tensor<8x3x3x3xf32>, none) -> tensor<1x8x4x4xf32>
  // CHECK: "top.clip"(%{{.*}}) {max = 6.000000e+00 : f64, min = 0.000000e+00 : f64}
  %relu6 = "top.clip"(%conv) {min = 0.0 : f64, max = 6.0 : f64} : (tensor<1x8x4x4xf32>) -> tensor<1x8x4x4xf32>
  // Undeclared attributes (calibration results) are accepted next to the declared ones.
  // CHECK: "top.sigmoid"(%{{.*}}) {calibration = {max = 1.000000e+00 : f64, min = 0.000000e+00 : f64}}
  %sig = "top.sigmoid"(%relu6) {calibration = {min = 0.0 : f64, max = 1.0 : f64}} : (tensor<1x8x4x4xf32>) -> tensor<1x8x4x4xf32>
  // Variadic operands: 32 optional slots and operandSegmentSizes.
  // CHECK: "top.concat"(%{{.*}}, %{{.*}}) {axis = 1 : i64, operandSegmentSizes = array<i32: 1, 1, 0, 0,
  %cat = "top.concat"(%relu6, %sig) {axis = 1 : i64, operandSegmentSizes = array<i32: 1, 1, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0>}
      : (tensor<1x8x4x4xf32>, tensor<1x8x4x4xf32>) -> tensor<1x16x4x4xf32>
  // CHECK: "top.reduce"(%{{.*}}) {axes = array<i64: 2, 3>, keepdims = false, mode = "mean"}
  %mean = "top.reduce"(%relu6) {mode = "mean", axes = array<i64: 2, 3>, keepdims = false}
      : (tensor<1x8x4x4xf32>) -> tensor<1x8xf32>
  // CHECK: return
  return %mean, %cat : tensor<1x8xf32>, tensor<1x16x4x4xf32>
}
