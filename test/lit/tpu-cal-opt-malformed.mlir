// A file that does not parse gives an MLIR-style diagnostic with file:line:col, the source line and a caret.
// RUN: not tpu-cal-opt %s -p top-dce 2>&1 | filecheck %s -DFILE=%s

// CHECK: [[FILE]]:[[# @LINE + 4]]:24: error: expected ')' to end operand list
// CHECK-NEXT: {{^}}  %0 = "top.relu"(%arg0 : (tensor<2xf32>) -> tensor<2xf32>
// CHECK-NEXT: {{^}}                       ^
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = "top.relu"(%arg0 : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}
// CHECK-NOT: Traceback
