// The tpu dialect loads into stock mlir-opt from its IRDL file and round-trips; quantized element types (quant
// dialect) pass its tensor constraints.
// RUN: mlir-opt --irdl-file=%irdl_tpu %s | mlir-opt --irdl-file=%irdl_tpu | filecheck %s
// RUN: tpu-cal-opt %s | filecheck %s

// CHECK-LABEL: func.func @lowered
func.func @lowered(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  // CHECK: "tpu.cast"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8x!quant.uniform<i8:f32, 2.500000e-02>>
  %q = "tpu.cast"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8x!quant.uniform<i8:f32, 0.025>>
  // CHECK: "tpu.relu"(%{{.*}}) {mode = "INT8"}
  %r = "tpu.relu"(%q) {mode = "INT8"} : (tensor<1x8x!quant.uniform<i8:f32, 0.025>>) -> tensor<1x8x!quant.uniform<i8:f32, 0.025>>
  // CHECK: "tpu.cast"(%{{.*}}) : (tensor<1x8x!quant.uniform<i8:f32, 2.500000e-02>>) -> tensor<1x8xf32>
  %d = "tpu.cast"(%r) : (tensor<1x8x!quant.uniform<i8:f32, 0.025>>) -> tensor<1x8xf32>
  // CHECK: "tpu.softmax"(%{{.*}}) {axis = 1 : i64}
  %s = "tpu.softmax"(%d) {axis = 1 : i64} : (tensor<1x8xf32>) -> tensor<1x8xf32>
  return %s : tensor<1x8xf32>
}
