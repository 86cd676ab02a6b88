// top-calibrate runs the samples through the float module and attaches each activation's threshold, min and max.
// With method=max the threshold is the abs-max over all samples; the expected numbers below are worked out by hand
// from Inputs/calibrate-samples (s0 = [1, 2, -3, 0.5], s1 = [-4, 1, 2, -1]) and Inputs/calibrate_weights.npz
// (bias = [1, -2, 0.5, 3], gain = [-1, 2, 4, 0.5]).
// RUN: tpu-cal-opt %s -p 'top-calibrate{dataset=%S/Inputs/calibrate-samples weight-dir=%S/Inputs method=max tune-num=0}' | filecheck %s
// RUN: tpu-cal-opt %s -p 'top-calibrate{data-list=%S/Inputs/calibrate-one.txt weight-dir=%S/Inputs method=max tune-num=0}' | filecheck --check-prefix=ONE %s
// RUN: not tpu-cal-opt %s -p 'top-calibrate{dataset=%S/Inputs/no-such-folder weight-dir=%S/Inputs method=max}' 2>&1 | filecheck --check-prefix=ERR %s

// CHECK: module attributes {top.cali_method = "max", top.name = "tiny", top.state = "calibrated", top.weight_file = "calibrate_weights.npz"}
// x over both samples: [1, 2, -3, 0.5], [-4, 1, 2, -1] -> min -4, max 2, abs-max 4.
// CHECK: "top.input"(%{{[a-z_0-9]*}}) {cali.max = 2.000000e+00 : f64, cali.min = -4.000000e+00 : f64, cali.threshold = 4.000000e+00 : f64}
// The weights get nothing.
// CHECK: "top.weight"() {name = "bias"}
// CHECK: "top.weight"() {name = "gain"}
// x + bias: [2, 0, -2.5, 3.5], [-3, -1, 2.5, 2] -> min -3, max 3.5.
// CHECK: "top.add"({{.*}}) {cali.max = 3.500000e+00 : f64, cali.min = -3.000000e+00 : f64, cali.threshold = 3.500000e+00 : f64}
// relu: [2, 0, 0, 3.5], [0, 0, 2.5, 2] -> min 0, max 3.5.
// CHECK: "top.relu"({{.*}}) {cali.max = 3.500000e+00 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 3.500000e+00 : f64}
// relu * gain: [-2, 0, 0, 1.75], [0, 0, 10, 1] -> min -2, max 10.
// CHECK: "top.mul"({{.*}}) {cali.max = 1.000000e+01 : f64, cali.min = -2.000000e+00 : f64, cali.threshold = 1.000000e+01 : f64}

// Only s1 (the list names it relative to the list's own folder).
// ONE: "top.input"(%{{[a-z_0-9]*}}) {cali.max = 2.000000e+00 : f64, cali.min = -4.000000e+00 : f64, cali.threshold = 4.000000e+00 : f64}
// ONE: "top.add"({{.*}}) {cali.max = 2.500000e+00 : f64, cali.min = -3.000000e+00 : f64, cali.threshold = 3.000000e+00 : f64}
// ONE: "top.relu"({{.*}}) {cali.max = 2.500000e+00 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 2.500000e+00 : f64}
// ONE: "top.mul"({{.*}}) {cali.max = 1.000000e+01 : f64, cali.min = 0.000000e+00 : f64, cali.threshold = 1.000000e+01 : f64}

// ERR: error: top-calibrate: {{.*}}no-such-folder: dataset folder not found
module attributes {top.name = "tiny", top.state = "f32", top.weight_file = "calibrate_weights.npz"} {
  func.func @main(%arg0: tensor<1x4xf32> loc("x")) -> tensor<1x4xf32> {
    %x = "top.input"(%arg0) : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("x")
    %bias = "top.weight"() {name = "bias"} : () -> tensor<1x4xf32> loc("bias")
    %gain = "top.weight"() {name = "gain"} : () -> tensor<1x4xf32> loc("gain")
    %a = "top.add"(%x, %bias) : (tensor<1x4xf32>, tensor<1x4xf32>) -> tensor<1x4xf32> loc("a_Add")
    %r = "top.relu"(%a) : (tensor<1x4xf32>) -> tensor<1x4xf32> loc("r_Relu")
    %m = "top.mul"(%r, %gain) : (tensor<1x4xf32>, tensor<1x4xf32>) -> tensor<1x4xf32> loc("m_Mul")
    return %m : tensor<1x4xf32>
  }
}
