// top-assign-precision puts a `precision` on every compute op: the qtable's entry, else (in an integer mode) the
// chip's float type for softmax & co., else the mode; NONE for integer results. Errors name the op.
// RUN: tpu-cal-opt %s -p 'top-assign-precision{qtable=%S/Inputs/assign.qtable}' | filecheck %s
// RUN: tpu-cal-opt %s -p 'top-assign-precision{qtable=%S/Inputs/assign-f16.qtable chip=cv183x}' | filecheck --check-prefix=CV %s
// RUN: tpu-cal-opt %s -p 'top-assign-precision{mode=F16}' | filecheck --check-prefix=F16 %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision' 2>&1 | filecheck --check-prefix=NOTH %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision{qtable=%S/Inputs/assign-f16.qtable chip=bm1684}' 2>&1 | filecheck --check-prefix=BM1684 %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision{qtable=%S/Inputs/assign-typo.qtable}' 2>&1 | filecheck --check-prefix=TYPO %s
// RUN: not tpu-cal-opt %s -p 'top-assign-precision{mode=INT4}' 2>&1 | filecheck --check-prefix=INT4 %s

// INT8 on bm1684x: relu INT8, softmax F32 (a float op of the chip), tanh F32 (qtable), argmax NONE.
// CHECK:      module attributes {top.chip = "bm1684x", top.name = "tiny", top.quantize = "INT8", top.state = "calibrated"}
// CHECK:      "top.input"(%{{[^)]*}}) {cali.max
// CHECK-NOT:  precision
// CHECK-SAME: loc("x")
// CHECK:      "top.relu"({{.*}}) {{{.*}}precision = "INT8"}
// CHECK:      "top.softmax"({{.*}}) {{{.*}}precision = "F32"}
// CHECK:      "top.tanh"({{.*}}) {precision = "F32"}
// CHECK:      "top.arg"({{.*}}) {{{.*}}mode = "max", precision = "NONE"}

// cv183x has no F16 and no F32: F16 -> BF16, float ops BF16.
// CV:         top.chip = "cv183x"
// CV:         "top.relu"({{.*}}) {{{.*}}precision = "BF16"}
// CV:         "top.softmax"({{.*}}) {{{.*}}precision = "BF16"}
// CV:         "top.tanh"({{.*}}) {precision = "BF16"}
// CV:         "top.arg"({{.*}}) {{{.*}}precision = "NONE"}

// A float mode needs no thresholds; the float ops follow it.
// F16:        top.quantize = "F16"
// F16:        "top.relu"({{.*}}) {{{.*}}precision = "F16"}
// F16:        "top.softmax"({{.*}}) {{{.*}}precision = "F16"}
// F16:        "top.tanh"({{.*}}) {precision = "F16"}

// NOTH: error: top-assign-precision: 1 op(s) need a calibration threshold for int8 but have none: 't_Tanh' (top.tanh, INT8)
// BM1684: error: top-assign-precision: {{.*}}assign-f16.qtable:2: op 'r_Relu': bm1684 cannot compute BF16 (it has F32, INT8)
// TYPO: error: top-assign-precision: {{.*}}assign-typo.qtable: 1 op name(s) not in the module: line 1: 't_tanh' (closest: t_Tanh)
// INT4: error: top-assign-precision: quantize mode INT4: bm1684x cannot compute INT4
module attributes {top.name = "tiny", top.state = "calibrated"} {
  func.func @main(%arg0: tensor<1x4xf32> loc("x")) -> (tensor<1x4xf32>, tensor<1x1xi64>) {
    %x = "top.input"(%arg0) {cali.max = 4.0 : f64, cali.min = -4.0 : f64, cali.threshold = 4.0 : f64} : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("x")
    %r = "top.relu"(%x) {cali.max = 3.0 : f64, cali.min = 0.0 : f64, cali.threshold = 3.0 : f64} : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("r_Relu")
    %s = "top.softmax"(%r) {axis = 1 : i64, cali.max = 1.0 : f64, cali.min = 0.0 : f64, cali.threshold = 1.0 : f64} : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("s_Softmax")
    %t = "top.tanh"(%s) : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("t_Tanh")
    %a = "top.arg"(%t) {axis = 1 : i64, keepdims = true, mode = "max"} : (tensor<1x4xf32>) -> tensor<1x1xi64> loc("a_ArgMax")
    return %t, %a : tensor<1x4xf32>, tensor<1x1xi64>
  }
}
