// A file that parses but fails the dialect's verifier: the op's file:line:col, the message, the op as a note.
// RUN: not tpu-cal-opt %s -p top-dce 2>&1 | filecheck %s -DFILE=%s

// CHECK: [[FILE]]:[[# @LINE + 4]]:8: error: 'top.softmax' op attribute "axis" is expected but not provided
// CHECK-NEXT: {{^}}  %0 = "top.softmax"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
// CHECK: note: see current operation
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = "top.softmax"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}
