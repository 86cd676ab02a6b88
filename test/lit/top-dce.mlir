// top-dce erases dead top/tpu ops (chains included) and keeps live ones and graph inputs.
// RUN: tpu-cal-opt %s -p top-dce --split-input-file | filecheck %s

// A dead chain goes entirely, with the weight and the none only it used; the live path stays.
// CHECK-LABEL: func.func @dead_chain
// CHECK-NEXT:    %[[IN:.*]] = "top.input"
// CHECK-NEXT:    %[[R:.*]] = "top.relu"(%[[IN]])
// CHECK-NEXT:    return %[[R]]
// CHECK-NEXT:  }
func.func @dead_chain(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  %in = "top.input"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  %w = "top.weight"() {name = "w"} : () -> tensor<8x8xf32>
  %none = "top.none"() : () -> none
  %mm = "top.matmul"(%in, %w, %none) : (tensor<1x8xf32>, tensor<8x8xf32>, none) -> tensor<1x8xf32>
  %s = "top.sigmoid"(%mm) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  %t = "top.tanh"(%s) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  %r = "top.relu"(%in) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  return %r : tensor<1x8xf32>
}

// -----

// Graph inputs stay even when unused; ops feeding the return (directly or not) stay.
// CHECK-LABEL: func.func @inputs_and_live_ops
// CHECK-DAG:     "top.input"(%arg0)
// CHECK-DAG:     "top.input"(%arg1)
// CHECK:         "top.weight"() {name = "bias"}
// CHECK:         "top.add"
// CHECK:         "top.exp"
// CHECK-NOT:     "top.neg"
// CHECK:         return
func.func @inputs_and_live_ops(%arg0: tensor<4xf32>, %arg1: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
  %a = "top.input"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  %unused_input = "top.input"(%arg1) : (tensor<4xf32>) -> tensor<4xf32>
  %b = "top.weight"() {name = "bias"} : () -> tensor<4xf32>
  %sum = "top.add"(%a, %b) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %e = "top.exp"(%sum) : (tensor<4xf32>) -> tensor<4xf32>
  %dead = "top.neg"(%e) : (tensor<4xf32>) -> tensor<4xf32>
  return %sum, %e : tensor<4xf32>, tensor<4xf32>
}

// -----

// A dead op with several users all dead (a diamond) goes; ops of other dialects are not ours to erase.
// CHECK-LABEL: func.func @diamond_and_other_dialects
// CHECK-NEXT:    "top.input"
// CHECK-NEXT:    arith.constant
// CHECK-NEXT:    return %arg0
func.func @diamond_and_other_dialects(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  %a = "top.input"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  %c = arith.constant dense<1.0> : tensor<4xf32>
  %top = "top.relu"(%a) : (tensor<4xf32>) -> tensor<4xf32>
  %l = "top.exp"(%top) : (tensor<4xf32>) -> tensor<4xf32>
  %r = "top.log"(%top) : (tensor<4xf32>) -> tensor<4xf32>
  %j = "top.mul"(%l, %r) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  return %arg0 : tensor<4xf32>
}

// -----

// Every function of the module is cleaned; nothing to do leaves the IR as it was.
// CHECK-LABEL: func.func @first
// CHECK-NOT:     "top.sqrt"
// CHECK-LABEL: func.func @second
// CHECK:         "top.abs"
// CHECK-NEXT:    return
func.func @first(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  %s = "top.sqrt"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  return %arg0 : tensor<4xf32>
}
func.func @second(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  %a = "top.abs"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  return %a : tensor<4xf32>
}

// -----

// Lowered (tpu) ops are removed the same way.
// CHECK-LABEL: func.func @tpu_ops
// CHECK-NOT:     "tpu.cast"
// CHECK:         "tpu.relu"
// CHECK-NOT:     "tpu.cast"
// CHECK:         return
func.func @tpu_ops(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  %q = "tpu.cast"(%arg0) : (tensor<4xf32>) -> tensor<4xbf16>
  %r = "tpu.relu"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  %d = "tpu.cast"(%q) : (tensor<4xbf16>) -> tensor<4xf32>
  return %r : tensor<4xf32>
}
