// top-bias-correction folds the mean int8 error of a layer into its bias. Worked out by hand on
// Inputs/bc-samples (x = 0.5, 0.1, 0.05, 0.01 down the tokens): x is exact in int8 (scale 0.01), the filter
// [1, 0.3] is exact per channel (127 each), so the only error is the output's clipping at its threshold 0.127:
//   column 0: 0.5, 0.1, 0.05, 0.01 -> 0.127, 0.1, 0.05, 0.01: mean error -0.373 / 4 = -0.09325
//   column 1: 0.15, 0.03, 0.015, 0.003 -> 0.127, ...: mean error -0.023 / 4 = -0.00575
// The output cosine (about 0.8) is below 0.99, so the bias [0, 0] becomes [0.09325, 0.00575]; with
// min-layer-cos=0.5 the layer is left alone.
// RUN: rm -rf %t && mkdir -p %t && cp %S/Inputs/bc_weights.npz %t/
// RUN: tpu-cal-opt %s -p 'top-bias-correction{dataset=%S/Inputs/bc-samples weight-dir=%t}' 2>%t/log | filecheck %s
// RUN: %python -c "import numpy as np; z = np.load('%t/bc_bc_weights.npz'); print(*[(k, [round(float(v), 6) for v in z[k].ravel()]) for k in sorted(z.files)])" | filecheck --check-prefix=NPZ %s
// RUN: filecheck --check-prefix=LOG %s < %t/log
// RUN: tpu-cal-opt %s -p 'top-bias-correction{dataset=%S/Inputs/bc-samples weight-dir=%t min-layer-cos=0.5}' 2>&1 | filecheck --check-prefix=KEEP %s
// RUN: not tpu-cal-opt %s -p 'top-bias-correction{dataset=%S/Inputs/bc-samples weight-dir=%t chip=nochip}' 2>&1 | filecheck --check-prefix=CHIP %s
// With part=weights only the int8 weights' share is corrected: the filter is exact, so the bias stays 0.
// RUN: tpu-cal-opt %s -p 'top-bias-correction{dataset=%S/Inputs/bc-samples weight-dir=%t part=weights}' 2>/dev/null > /dev/null
// RUN: %python -c "import numpy as np; z = np.load('%t/bc_bc_weights.npz'); print([round(float(v), 6) + 0.0 for v in z['b_bc']])" | filecheck --check-prefix=WPART %s

// CHECK:      module attributes {top.name = "bc", top.state = "calibrated", top.weight_file = "bc_bc_weights.npz"}
// CHECK:      "top.weight"() {name = "w"}
// CHECK-NEXT: "top.weight"() {name = "b_bc"}
// CHECK-NEXT: "top.matmul"

// NPZ: ('b_bc', [0.09325, 0.00575]) ('w', [1.0, 0.3])

// LOG: bias correction on 1 samples (bm1684x): 1 of 1 conv/matmul layers below cosine 0.99
// LOG: y_MatMul | top.matmul | {{0\.[0-9]+}} | 0.049500 | 0.093250 | yes

// KEEP: 0 of 1 conv/matmul layers below cosine 0.5
// KEEP: "top.weight"() {name = "b"}

// WPART: [0.0, 0.0]
// CHIP: error: top-bias-correction: {{.*}}nochip
module attributes {top.name = "bc", top.state = "calibrated", top.weight_file = "bc_weights.npz"} {
  func.func @main(%arg0: tensor<1x4x1xf32> loc("x")) -> tensor<1x4x2xf32> {
    %x = "top.input"(%arg0) {cali.threshold = 1.27 : f64, cali.min = 0.0 : f64, cali.max = 1.27 : f64} : (tensor<1x4x1xf32>) -> tensor<1x4x1xf32> loc("x")
    %w = "top.weight"() {name = "w"} : () -> tensor<1x2xf32> loc("w")
    %b = "top.weight"() {name = "b"} : () -> tensor<2xf32> loc("b")
    %y = "top.matmul"(%x, %w, %b) {cali.threshold = 0.127 : f64, cali.min = 0.0 : f64, cali.max = 0.127 : f64} : (tensor<1x4x1xf32>, tensor<1x2xf32>, tensor<2xf32>) -> tensor<1x4x2xf32> loc("y_MatMul")
    return %y : tensor<1x4x2xf32>
  }
}
