// top-to-tpu lowers each op by its precision: quantized result types, per-channel int8 filters with an int32 bias,
// f16-rounded constants, a tpu.cast wherever a value crosses precisions, outputs back to f32, and a new weight file
// `<stem>_<chip>_weights.npz` next to the old one. Numbers worked out by hand:
//   x: th 2.54 -> scale 0.02; relu: th 3.81 -> 0.03 (the reshape keeps it, not its own 3.0)
//   filter [[1, -0.5], [0.25, 2]]: per output channel 1/127 = 7.874016e-03 and 2/127 = 1.574803e-02
//     -> [127, -63] (0.5 / 7.874016e-03 = 63.49999), [16, 127] (0.25 / 1.574803e-02 = 15.875)
//   bias [0.5, -1] with scales 0.02 * s_w = 1.574803e-04, 3.149606e-04 -> [3175, -3175]
//   k = 0.1 in f16 -> 0.0999755859375
// RUN: rm -rf %t && mkdir -p %t && cp %S/Inputs/lower_weights.npz %t/
// RUN: tpu-cal-opt %s -p 'top-assign-precision{qtable=%S/Inputs/lower.qtable},top-to-tpu{weight-dir=%t}' | filecheck %s
// RUN: %python -c "import numpy as np; z = np.load('%t/lower_bm1684x_weights.npz'); print(*[(k, z[k].dtype.name, z[k].ravel().tolist()) for k in sorted(z.files)])" | filecheck --check-prefix=NPZ %s
// RUN: tpu-cal-opt %s -p 'top-assign-precision,top-to-tpu{weight-dir=%t asym-ops=r_Relu,s_Softmax}' | filecheck --check-prefix=ASYM %s
// RUN: not tpu-cal-opt %s -p 'top-to-tpu{chip=bm1684x weight-dir=%t}' 2>&1 | filecheck --check-prefix=NOPREC %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision,top-to-tpu{weight-dir=%t asym-ops=relu}' 2>&1 | filecheck --check-prefix=ASYMNAME %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision{chip=bm1684},top-to-tpu{weight-dir=%t asym-ops=r_Relu}' 2>&1 | filecheck --check-prefix=ASYMCHIP %s

// CHECK:      module attributes {top.chip = "bm1684x", top.name = "lower", top.quantize = "INT8", top.state = "lowered", top.weight_file = "lower_bm1684x_weights.npz"}
// CHECK-NEXT:   func.func @main({{.*}}) -> (tensor<1x8xf32>, tensor<1x2x2x2xf32>)
// CHECK-NEXT:     %[[X:.*]] = "top.input"(%{{.*}}) : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2xf32> loc("x")
// CHECK-NEXT:     %[[XQ:.*]] = "tpu.cast"(%[[X]]) : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2x!quant.uniform<i8:f32, 2.000000e-02>> loc("x_i8")
// CHECK-NEXT:     %[[F:.*]] = "top.weight"() {name = "filter_int8"} : () -> tensor<2x2x1x1x!quant.uniform<i8:f32:0, {0.00787401{{[0-9]*}},0.01574803}>> loc("filter_int8")
// CHECK-NEXT:     %[[B:.*]] = "top.weight"() {name = "bias_int32"} : () -> tensor<2x!quant.uniform<i32:f32:0, {1.57480{{[0-9]*}}E-4,3.14960{{[0-9]*}}E-4}>> loc("bias_int32")
// The int8 conv and the relu that alone reads it are one tpu.conv under the relu's name, with the relu's type
// (TPU-MLIR's do_relu): the conv's own threshold (6.35) is not used.
// CHECK-NEXT:     %[[R:.*]] = "tpu.conv"(%[[XQ]], %[[F]], %[[B]]) {{{.*}}do_relu = true{{.*}}precision = "INT8", relu_limit = -1.0{{.*}}-> tensor<1x2x2x2x!quant.uniform<i8:f32, 3.000000e-02>> loc("r_Relu")
// CHECK-NEXT:     %[[V:.*]] = "tpu.reshape"(%[[R]]) {precision = "INT8"} : ({{.*}}) -> tensor<1x8x!quant.uniform<i8:f32, 3.000000e-02>> loc("v_Reshape")
// The softmax stays F32 (a float op of the chip): one dequantizing cast before it.
// CHECK-NEXT:     %[[VF:.*]] = "tpu.cast"(%[[V]]) : (tensor<1x8x!quant.uniform<i8:f32, 3.000000e-02>>) -> tensor<1x8xf32> loc("v_Reshape_f32")
// CHECK-NEXT:     %[[S:.*]] = "tpu.softmax"(%[[VF]]) {axis = 1 : i64, precision = "F32"} : (tensor<1x8xf32>) -> tensor<1x8xf32> loc("s_Softmax")
// The add is F16 (qtable): relu is cast to f16, the constant rounded into a new weight, the result cast to f32.
// CHECK-NEXT:     %[[RH:.*]] = "tpu.cast"(%[[R]]) : (tensor<1x2x2x2x!quant.uniform<i8:f32, 3.000000e-02>>) -> tensor<1x2x2x2xf16> loc("r_Relu_f16")
// CHECK-NEXT:     %[[K:.*]] = "top.weight"() {name = "k_f16"} : () -> tensor<f16> loc("k_f16")
// CHECK-NEXT:     %[[A:.*]] = "tpu.add"(%[[RH]], %[[K]]) {precision = "F16"} : (tensor<1x2x2x2xf16>, tensor<f16>) -> tensor<1x2x2x2xf16> loc("a_Add")
// CHECK-NEXT:     %[[AF:.*]] = "tpu.cast"(%[[A]]) : (tensor<1x2x2x2xf16>) -> tensor<1x2x2x2xf32> loc("a_Add_f32")
// CHECK-NEXT:     return %[[S]], %[[AF]] : tensor<1x8xf32>, tensor<1x2x2x2xf32>

// NPZ: ('bias_int32', 'int32', [3175, -3175]) ('filter_int8', 'int8', [127, -63, 16, 127]) ('k_f16', 'float32', [0.0999755859375])

// Asymmetric relu (range [0, 3.81] -> scale 3.81/255, zero point -128); the reshape keeps its type; the
// softmax is F32, so the flag does not apply to it.
// An asymmetric relu is not fused: the conv keeps its own (symmetric) type.
// ASYM:       "tpu.conv"({{.*}}) -> tensor<1x2x2x2x!quant.uniform<i8:f32, 5.000000e-02>> loc("c_Conv")
// ASYM-NEXT:  "tpu.relu"({{.*}}) -> tensor<1x2x2x2x!quant.uniform<i8:f32, 0.01494118:-128>> loc("r_Relu")
// ASYM-NEXT:  "tpu.reshape"({{.*}}) -> tensor<1x8x!quant.uniform<i8:f32, 0.01494118:-128>> loc("v_Reshape")
// ASYM:       "tpu.softmax"({{.*}}) -> tensor<1x8xf32> loc("s_Softmax")
// The constant read by the INT8 add stays the exact f32 array, with no cast.
// ASYM:       %[[K:.*]] = "top.weight"() {name = "k"} : () -> tensor<f32> loc("k")
// ASYM-NEXT:  "tpu.add"(%{{.*}}, %[[K]]) {precision = "INT8"}

// NOPREC: error: top-to-tpu: op 'c_Conv' (top.conv) has no precision: run top-assign-precision
// ASYMNAME: error: top-to-tpu: asymmetric op(s) not in the module: 'relu' (closest: r_Relu)
// ASYMCHIP: error: top-to-tpu: op 'r_Relu' is listed as asymmetric (#asym_op), but bm1684 has no asymmetric int8
module attributes {top.name = "lower", top.state = "calibrated", top.weight_file = "lower_weights.npz"} {
  func.func @main(%arg0: tensor<1x2x2x2xf32> loc("x")) -> (tensor<1x8xf32>, tensor<1x2x2x2xf32>) {
    %none = "top.none"() : () -> none loc("none")
    %x = "top.input"(%arg0) {cali.max = 2.54 : f64, cali.min = -2.0 : f64, cali.threshold = 2.54 : f64} : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2xf32> loc("x")
    %f = "top.weight"() {name = "filter"} : () -> tensor<2x2x1x1xf32> loc("filter")
    %b = "top.weight"() {name = "bias"} : () -> tensor<2xf32> loc("bias")
    %c = "top.conv"(%x, %f, %b) {dilations = array<i64: 1, 1>, group = 1 : i64, kernel_shape = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, strides = array<i64: 1, 1>, cali.max = 6.35 : f64, cali.min = -5.0 : f64, cali.threshold = 6.35 : f64} : (tensor<1x2x2x2xf32>, tensor<2x2x1x1xf32>, tensor<2xf32>) -> tensor<1x2x2x2xf32> loc("c_Conv")
    %r = "top.relu"(%c) {cali.max = 3.81 : f64, cali.min = 0.0 : f64, cali.threshold = 3.81 : f64} : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2xf32> loc("r_Relu")
    %v = "top.reshape"(%r) {cali.max = 3.0 : f64, cali.min = 0.0 : f64, cali.threshold = 3.0 : f64} : (tensor<1x2x2x2xf32>) -> tensor<1x8xf32> loc("v_Reshape")
    %s = "top.softmax"(%v) {axis = 1 : i64, cali.max = 1.0 : f64, cali.min = 0.0 : f64, cali.threshold = 1.0 : f64} : (tensor<1x8xf32>) -> tensor<1x8xf32> loc("s_Softmax")
    %k = "top.weight"() {name = "k"} : () -> tensor<f32> loc("k")
    %a = "top.add"(%r, %k) {cali.max = 3.91 : f64, cali.min = 0.1 : f64, cali.threshold = 3.91 : f64} : (tensor<1x2x2x2xf32>, tensor<f32>) -> tensor<1x2x2x2xf32> loc("a_Add")
    return %s, %a : tensor<1x8xf32>, tensor<1x2x2x2xf32>
  }
}
