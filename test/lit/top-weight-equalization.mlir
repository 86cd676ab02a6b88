// top-weight-equalization equalizes conv -> relu -> depthwise conv and skips a chain through ReLU6.
// Worked out by hand: c1 filters [2], [0.5] (r1 = [2, 0.5]), depthwise c2 filters [8], [0.5] (r2 = [8, 0.5]):
// s = sqrt(r1 / r2) = [0.5, 1] -> c1 filters / s = [4, 0.5], bias [1, -1] / s = [2, -1], c2 filters * s =
// [4, 0.5]; both ranges are now [4, 0.5] (ratio 1), and a second sweep moves nothing.
// c2 -> clip(0, 6) -> c3 is skipped: clip(x/s, 0, 6) != clip(x, 0, 6)/s; c3 keeps its weights.
// RUN: rm -rf %t && mkdir -p %t && cp %S/Inputs/we_weights.npz %t/
// RUN: tpu-cal-opt %s -p 'top-weight-equalization{weight-dir=%t}' 2>%t/log | filecheck %s
// RUN: %python -c "import numpy as np; z = np.load('%t/we_we_weights.npz'); print(*[(k, z[k].ravel().tolist()) for k in sorted(z.files)])" | filecheck --check-prefix=NPZ %s
// RUN: filecheck --check-prefix=LOG %s < %t/log

// CHECK:      module attributes {top.name = "we", top.state = "f32", top.weight_file = "we_we_weights.npz"}
// CHECK:      "top.weight"() {name = "w1_we"}
// CHECK-NEXT: "top.weight"() {name = "b1_we"}
// CHECK-NEXT: "top.conv"
// CHECK-NEXT: "top.relu"
// CHECK-NEXT: "top.weight"() {name = "w2_we"}
// CHECK-NEXT: "top.conv"({{.*}}) {dilations = array<i64: 1, 1>, group = 2 : i64
// CHECK-NEXT: "top.clip"
// CHECK-NEXT: "top.weight"() {name = "w3"}

// NPZ: ('b1_we', [2.0, -1.0]) ('w1_we', [4.0, 0.5]) ('w2_we', [4.0, 0.5]) ('w3', [1.0, 1.0])

// LOG: weight equalization: 1 pairs, 2 sweeps
// LOG: c1_Conv | r_Relu | c2_Conv |        2 |           2.500000 | 1.000000
// LOG: weight equalization skipped 1 chains:
// LOG: c2_Conv | k_Clip | c3_Conv | clip(0.0, 6.0) has a fixed bound: clip(x/s) != clip(x)/s
module attributes {top.name = "we", top.state = "f32", top.weight_file = "we_weights.npz"} {
  func.func @main(%arg0: tensor<1x1x2x2xf32> loc("x")) -> tensor<1x1x2x2xf32> {
    %none = "top.none"() : () -> none loc("none")
    %x = "top.input"(%arg0) : (tensor<1x1x2x2xf32>) -> tensor<1x1x2x2xf32> loc("x")
    %w1 = "top.weight"() {name = "w1"} : () -> tensor<2x1x1x1xf32> loc("w1")
    %b1 = "top.weight"() {name = "b1"} : () -> tensor<2xf32> loc("b1")
    %c1 = "top.conv"(%x, %w1, %b1) {kernel_shape = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, group = 1 : i64} : (tensor<1x1x2x2xf32>, tensor<2x1x1x1xf32>, tensor<2xf32>) -> tensor<1x2x2x2xf32> loc("c1_Conv")
    %r = "top.relu"(%c1) : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2xf32> loc("r_Relu")
    %w2 = "top.weight"() {name = "w2"} : () -> tensor<2x1x1x1xf32> loc("w2")
    %c2 = "top.conv"(%r, %w2, %none) {kernel_shape = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, group = 2 : i64} : (tensor<1x2x2x2xf32>, tensor<2x1x1x1xf32>, none) -> tensor<1x2x2x2xf32> loc("c2_Conv")
    %k = "top.clip"(%c2) {min = 0.0 : f64, max = 6.0 : f64} : (tensor<1x2x2x2xf32>) -> tensor<1x2x2x2xf32> loc("k_Clip")
    %w3 = "top.weight"() {name = "w3"} : () -> tensor<1x2x1x1xf32> loc("w3")
    %c3 = "top.conv"(%k, %w3, %none) {kernel_shape = array<i64: 1, 1>, strides = array<i64: 1, 1>, pads = array<i64: 0, 0, 0, 0>, dilations = array<i64: 1, 1>, group = 1 : i64} : (tensor<1x2x2x2xf32>, tensor<1x2x1x1xf32>, none) -> tensor<1x1x2x2xf32> loc("c3_Conv")
    return %c3 : tensor<1x1x2x2xf32>
  }
}
