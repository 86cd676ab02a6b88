// top-import-calibration attaches a TPU-MLIR cali_table to the ops it names (by name location), marks the module
// calibrated, and refuses a table made for another model.
// RUN: tpu-cal-opt %s -p 'top-import-calibration{file=%S/Inputs/import.cali}' | filecheck %s
// RUN: not tpu-cal-opt %s -p 'top-import-calibration{file=%S/Inputs/other-model.cali}' 2>&1 | filecheck --check-prefix=ERR %s
// RUN: tpu-cal-opt %s -p 'top-import-calibration{file=%S/Inputs/partial.cali}' -o %t 2>&1 | filecheck --check-prefix=NOTE %s
// RUN: filecheck --check-prefix=PARTIAL %s < %t
// RUN: not tpu-cal-opt %s -p 'top-import-calibration{file=%S/Inputs/no-such.cali}' 2>&1 | filecheck --check-prefix=MISSING %s

// The header's method becomes top.cali_method; the state turns from f32 to calibrated.
// CHECK:      module attributes {top.cali_method = "kl", top.name = "tiny", top.state = "calibrated", top.weight_file = "tiny_weights.npz"}
// The input keeps its name and gets its line of the table; weights and none get nothing.
// CHECK:      "top.none"() : () -> none
// CHECK:      "top.input"(%{{.*}}) {cali.max = 1.750000e+00 : f64, cali.min = -2.500000e+00 : f64, cali.threshold = 2.500000e+00 : f64}
// CHECK-SAME: loc("images")
// CHECK:      "top.weight"() {name = "filter"}
// CHECK:      "top.conv"({{.*}}) {cali.max = 6.000000e+00 : f64, cali.min = -4.000000e+00 : f64, cali.threshold = 6.000000e+00 : f64, dilations
// CHECK-SAME: loc("conv_out_Conv")
// CHECK:      "top.relu"({{.*}}) {cali.max = 6.000000e+00 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 5.250000e+00 : f64}
// CHECK-SAME: loc("relu_out_Relu")
// Values below 1e-3 are written in exponent form in the table and read back exactly.
// CHECK:      "top.sigmoid"({{.*}}) {cali.max = 0.99899999999999999 : f64, cali.min = 1.2345678000000001E-4 : f64, cali.threshold = 1.000000e+00 : f64}
// CHECK-SAME: loc("prob_Sigmoid")

// A table from another model (PP-OCR's names) names no op here: an error at the module, nothing attached.
// ERR: top-import-calibration.mlir:[[# @LINE + 11]]:1: error: top-import-calibration: {{.*}}other-model.cali: none of its 2 entries names an op of this module (first: conv2d_450.tmp_0_Conv, sigmoid_0.tmp_0_Sigmoid); was it made for another model?

// Names the module lacks are listed on stderr; the others are attached; no method in the header, none set.
// NOTE: note: {{.*}}partial.cali: 1 entries name no op of the module: not_in_module_Add
// PARTIAL: module attributes {top.name = "tiny", top.state = "calibrated", top.weight_file = "tiny_weights.npz"}
// PARTIAL: "top.input"(%{{[a-z_0-9]*}}) : (tensor
// PARTIAL: "top.conv"({{[^)]*}}) {dilations
// PARTIAL: "top.relu"({{.*}}) {cali.max = 4.000000e+00 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 4.000000e+00 : f64}
// PARTIAL: "top.sigmoid"(%{{[a-zA-Z_0-9]*}}) : (tensor

// MISSING: error: top-import-calibration: {{.*}}no-such.cali: calibration table not found
module attributes {top.name = "tiny", top.state = "f32", top.weight_file = "tiny_weights.npz"} {
  func.func @main(%arg0: tensor<1x2x4x4xf32> loc("images")) -> tensor<1x2x4x4xf32> {
    %none = "top.none"() : () -> none loc("none")
    %in = "top.input"(%arg0) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc("images")
    %w = "top.weight"() {name = "filter"} : () -> tensor<2x2x1x1xf32> loc("filter")
    %conv = "top.conv"(%in, %w, %none) {dilations = array<i64: 1, 1>, group = 1 : i64, kernel_shape = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, strides = array<i64: 1, 1>} : (tensor<1x2x4x4xf32>, tensor<2x2x1x1xf32>, none) -> tensor<1x2x4x4xf32> loc("conv_out_Conv")
    %relu = "top.relu"(%conv) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc("relu_out_Relu")
    %prob = "top.sigmoid"(%relu) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc("prob_Sigmoid")
    return %prob : tensor<1x2x4x4xf32>
  }
}
