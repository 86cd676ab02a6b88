// --mlir-print-ir-after-all prints the IR to stderr after each pass, upstream and ours, as mlir-opt does.
// RUN: tpu-cal-opt %s -p 'cse,top-dce,canonicalize' --mlir-print-ir-after-all 2>&1 >/dev/null | filecheck %s
// RUN: tpu-cal-opt %s -p 'top-dce' --mlir-print-ir-before-all 2>&1 >/dev/null \
// RUN:   | filecheck %s --check-prefix=BEFORE

// CHECK:      // -----// IR Dump After CSE (cse) //----- //
// CHECK:      "top.exp"
// CHECK:      // -----// IR Dump After TopDCE (top-dce) //----- //
// CHECK-NOT:  "top.exp"
// CHECK:      "top.relu"
// CHECK:      // -----// IR Dump After Canonicalizer (canonicalize) //----- //
// CHECK-NOT:  "top.exp"

// BEFORE:     // -----// IR Dump Before TopDCE (top-dce) //----- //
// BEFORE:     "top.exp"
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %in = "top.input"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
  %r = "top.relu"(%in) : (tensor<2xf32>) -> tensor<2xf32>
  %dead = "top.exp"(%r) : (tensor<2xf32>) -> tensor<2xf32>
  return %r : tensor<2xf32>
}
