// top-softmax-correction divides the attention probabilities by S before the matmul with V and multiplies the
// output back, and sets the thresholds that quantize prob / S on [0, 1]. Worked out by hand on
// Inputs/smc-samples (x = [[0, 0], [0, ln 3]], v = [[1, 2], [3, 4]]): the softmax rows are [0.5, 0.5] and
// [0.25, 0.75], their largest probabilities average to S = 0.625 -> factors 1/S = 1.6 and S = 0.625.
// Thresholds: softmax (S, its min 0.25, min(0.75, S)), the division (1, 0, 1); the matmul was calibrated to
// (3.5, 2, 3.5), so it gets (3.5 / S, 2 / S, 3.5 / S) = (5.6, 3.2, 5.6) and the restoring op (3.5, 2, 3.5).
// RUN: rm -rf %t && mkdir -p %t
// RUN: tpu-cal-opt %s -p 'top-softmax-correction{dataset=%S/Inputs/smc-samples weight-dir=%t}' 2>%t/log | filecheck %s
// RUN: %python -c "import numpy as np; z = np.load('%t/smc_smc_weights.npz'); print(*[(k, round(float(z[k]), 6)) for k in sorted(z.files)])" | filecheck --check-prefix=NPZ %s
// RUN: filecheck --check-prefix=LOG %s < %t/log
// RUN: %python -c "print(open('%s').read().replace('cali.', 'x.'))" > %t/uncal.mlir
// RUN: not tpu-cal-opt %t/uncal.mlir -p 'top-softmax-correction{dataset=%S/Inputs/smc-samples weight-dir=%t}' 2>&1 | filecheck --check-prefix=UNCAL %s

// CHECK:      module attributes {top.name = "smc", top.state = "calibrated", top.weight_file = "smc_smc_weights.npz"}
// CHECK:      %[[SM:.*]] = "top.softmax"(%{{.*}}) {axis = 2 : i64, cali.max = 6.250000e-01 : f64, cali.min = 2.500000e-01 : f64, cali.threshold = 6.250000e-01 : f64}
// CHECK-NEXT: %[[F1:.*]] = "top.weight"() {name = "p_Softmax_smc_factor"} : () -> tensor<f32>
// CHECK-NEXT: %[[D:.*]] = "top.mul"(%[[SM]], %[[F1]]) {cali.max = 1.000000e+00 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 1.000000e+00 : f64, smc.scale = 6.250000e-01 : f64} {{.*}} loc("p_Softmax_smc")
// CHECK-NEXT: %[[MM:.*]] = "top.matmul"(%[[D]], %{{.*}}, %{{.*}}) {cali.max = 5.6{{0*}}e+00 : f64, cali.min = 3.2{{0*}}e+00 : f64, cali.threshold = 5.6{{0*}}e+00 : f64} {{.*}} loc("o_MatMul")
// CHECK-NEXT: %[[F2:.*]] = "top.weight"() {name = "o_MatMul_smc_factor"}
// CHECK-NEXT: %[[B:.*]] = "top.mul"(%[[MM]], %[[F2]]) {cali.max = 3.500000e+00 : f64, cali.min = 2.000000e+00 : f64, cali.threshold = 3.500000e+00 : f64} {{.*}} loc("o_MatMul_smc")
// CHECK-NEXT: return %[[B]]

// NPZ: ('o_MatMul_smc_factor', 0.625) ('p_Softmax_smc_factor', 1.6)
// LOG: softmax correction: 1 of 1 attention softmaxes
// LOG: p_Softmax | o_MatMul         | 0.625000 | p_Softmax_smc | o_MatMul_smc
// UNCAL: error: top-softmax-correction: the module has no thresholds; run top-calibrate
module attributes {top.name = "smc", top.state = "calibrated"} {
  func.func @main(%arg0: tensor<1x2x2xf32> loc("x"), %arg1: tensor<1x2x2xf32> loc("v")) -> tensor<1x2x2xf32> {
    %none = "top.none"() : () -> none loc("none")
    %x = "top.input"(%arg0) {cali.threshold = 1.1 : f64, cali.min = 0.0 : f64, cali.max = 1.1 : f64} : (tensor<1x2x2xf32>) -> tensor<1x2x2xf32> loc("x")
    %v = "top.input"(%arg1) {cali.threshold = 4.0 : f64, cali.min = 1.0 : f64, cali.max = 4.0 : f64} : (tensor<1x2x2xf32>) -> tensor<1x2x2xf32> loc("v")
    %p = "top.softmax"(%x) {axis = 2 : i64, cali.threshold = 0.75 : f64, cali.min = 0.25 : f64, cali.max = 0.75 : f64} : (tensor<1x2x2xf32>) -> tensor<1x2x2xf32> loc("p_Softmax")
    %o = "top.matmul"(%p, %v, %none) {cali.threshold = 3.5 : f64, cali.min = 2.0 : f64, cali.max = 3.5 : f64} : (tensor<1x2x2xf32>, tensor<1x2x2xf32>, none) -> tensor<1x2x2xf32> loc("o_MatMul")
    return %o : tensor<1x2x2xf32>
  }
}
