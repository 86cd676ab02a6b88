// top-smoothquant moves activation outliers into the weights. Worked out by hand on Inputs/smoothquant-samples
// (one sample x = [[1, 3], [5, 2]]) with alpha 0.5, s_j = sqrt(max|X_j|) / sqrt(max|W_j|):
//   ln = layer_norm(x) * gamma [4, 1] (eps 0): rows normalize to [-1, 1] and [1, -1] -> [[-4, 1], [4, -1]],
//   channel abs-max [4, 1]; w1 rows [1, 2], [0.25, 0.125] -> max [2, 0.25] -> s = [sqrt(4/2), sqrt(1/0.25)]
//   = [1.4142135, 2]: gamma / s = [2.828427, 0.5], beta stays 0, w1 rows * s = [1.4142135, 2.828427], [0.5, 0.25];
//   the residual add also reads ln, so it gets ln back through a mul by s (ln_LayerNorm_sq_restore).
//   x (a graph input: nothing absorbs 1/s) abs-max [5, 3]; w2 rows [0.2], [3] -> s = [sqrt(5/0.2), 1] = [5, 1]:
//   a mul by 1/s = [0.2, 1] is inserted (x_sq) and w2 becomes [[1], [3]].
// RUN: rm -rf %t && mkdir -p %t && cp %S/Inputs/smoothquant_weights.npz %t/
// RUN: tpu-cal-opt %s -p 'top-smoothquant{dataset=%S/Inputs/smoothquant-samples weight-dir=%t}' 2>%t/log | filecheck %s
// RUN: %python -c "import numpy as np; z = np.load('%t/smoothquant_sq_weights.npz'); print(*[(k, [round(float(v), 6) for v in z[k].ravel()]) for k in sorted(z.files)])" | filecheck --check-prefix=NPZ %s
// RUN: filecheck --check-prefix=LOG %s < %t/log
// RUN: tpu-cal-opt %s -p 'top-smoothquant{dataset=%S/Inputs/smoothquant-samples weight-dir=%t insert=false}' 2>/dev/null | filecheck --check-prefix=NOINS %s
// RUN: not tpu-cal-opt %s -p 'top-smoothquant{dataset=%S/Inputs/smoothquant-samples weight-dir=%t alpha=2}' 2>&1 | filecheck --check-prefix=ALPHA %s

// CHECK:      module attributes {top.name = "smoothquant", top.state = "f32", top.weight_file = "smoothquant_sq_weights.npz"}
// CHECK:        %[[X:.*]] = "top.input"
// The inserted smoothing op sits right after the input.
// CHECK-NEXT:   %[[XF:.*]] = "top.weight"() {name = "x_sq_factor"}
// CHECK-NEXT:   %[[XS:.*]] = "top.mul"(%[[X]], %[[XF]]) {{.*}} loc("x_sq")
// CHECK-NEXT:   %[[G:.*]] = "top.weight"() {name = "gamma_sq"}
// CHECK-NEXT:   %[[B:.*]] = "top.weight"() {name = "beta_sq"}
// CHECK-NEXT:   %[[LN:.*]] = "top.layer_norm"(%[[X]], %[[G]], %[[B]])
// CHECK-NEXT:   %[[F:.*]] = "top.weight"() {name = "ln_LayerNorm_sq_restore_factor"}
// CHECK-NEXT:   %[[R:.*]] = "top.mul"(%[[LN]], %[[F]]) {{.*}} loc("ln_LayerNorm_sq_restore")
// CHECK-NEXT:   %[[W1:.*]] = "top.weight"() {name = "w1_sq"}
// CHECK-NEXT:   %[[B1:.*]] = "top.weight"() {name = "b1"}
// CHECK-NEXT:   %[[MM:.*]] = "top.matmul"(%[[LN]], %[[W1]], %[[B1]])
// CHECK-NEXT:   %[[ADD:.*]] = "top.add"(%[[MM]], %[[R]])
// CHECK-NEXT:   %[[W2:.*]] = "top.weight"() {name = "w2_sq"}
// CHECK-NEXT:   "top.matmul"(%[[XS]], %[[W2]], %{{.*}})

// NPZ: ('b1', [0.5, -0.5]) ('beta_sq', [0.0, 0.0]) ('gamma_sq', [2.828427, 0.5]) ('ln_LayerNorm_sq_restore_factor', [1.414214, 2.0]) ('w1_sq', [1.414214, 2.828427, 0.5, 0.25]) ('w2_sq', [1.0, 3.0]) ('x_sq_factor', [0.2, 1.0])

// LOG: smoothquant (alpha 0.5): 2 activations
// LOG: ln_LayerNorm | top.layer_norm | folded into layer_norm gamma/beta | 1 | 1 | 
// LOG: x            | top.input      | mul op inserted                   | 1 | 0 |

// Without insert, x keeps its matmul and weight as they were.
// NOINS-NOT: x_sq
// NOINS: "top.matmul"(%{{.*}}, %{{.*}}, %{{.*}}) : (tensor<1x2x2xf32>, tensor<2x1xf32>
// NOINS-NOT: x_sq

// ALPHA: error: top-smoothquant: alpha must be in [0, 1], got 2.0
module attributes {top.name = "smoothquant", top.state = "f32", top.weight_file = "smoothquant_weights.npz"} {
  func.func @main(%arg0: tensor<1x2x2xf32> loc("x")) -> (tensor<1x2x2xf32>, tensor<1x2x1xf32>) {
    %none = "top.none"() : () -> none loc("none")
    %x = "top.input"(%arg0) : (tensor<1x2x2xf32>) -> tensor<1x2x2xf32> loc("x")
    %gamma = "top.weight"() {name = "gamma"} : () -> tensor<2xf32> loc("gamma")
    %beta = "top.weight"() {name = "beta"} : () -> tensor<2xf32> loc("beta")
    %ln = "top.layer_norm"(%x, %gamma, %beta) {axis = 2 : i64, eps = 0.0 : f64} : (tensor<1x2x2xf32>, tensor<2xf32>, tensor<2xf32>) -> tensor<1x2x2xf32> loc("ln_LayerNorm")
    %w1 = "top.weight"() {name = "w1"} : () -> tensor<2x2xf32> loc("w1")
    %b1 = "top.weight"() {name = "b1"} : () -> tensor<2xf32> loc("b1")
    %mm = "top.matmul"(%ln, %w1, %b1) : (tensor<1x2x2xf32>, tensor<2x2xf32>, tensor<2xf32>) -> tensor<1x2x2xf32> loc("mm_MatMul")
    %add = "top.add"(%mm, %ln) : (tensor<1x2x2xf32>, tensor<1x2x2xf32>) -> tensor<1x2x2xf32> loc("add_Add")
    %w2 = "top.weight"() {name = "w2"} : () -> tensor<2x1xf32> loc("w2")
    %mm2 = "top.matmul"(%x, %w2, %none) : (tensor<1x2x2xf32>, tensor<2x1xf32>, none) -> tensor<1x2x1xf32> loc("mm2_MatMul")
    return %add, %mm2 : tensor<1x2x2xf32>, tensor<1x2x1xf32>
  }
}
