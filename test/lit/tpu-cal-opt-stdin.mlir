// tpu-cal-opt reads standard input when the input is '-' or absent; locations then name <stdin>.
// RUN: cat %s | tpu-cal-opt -p top-dce | filecheck %s
// RUN: tpu-cal-opt - -p top-dce < %s | filecheck %s
// -o writes the file (atomically) and nothing to stdout.
// RUN: tpu-cal-opt -p top-dce -o %t.mlir < %s | filecheck %s --allow-empty --check-prefix=EMPTY
// RUN: filecheck %s < %t.mlir

// CHECK-LABEL: func.func @main
// CHECK-SAME:    loc("<stdin>":[[# @LINE + 5]]:17)
// CHECK-NEXT:    "top.input"(%arg0) : (tensor<2xf32>) -> tensor<2xf32> loc("<stdin>":[[# @LINE + 5]]:
// CHECK-NEXT:    "top.relu"{{.*}} loc("<stdin>":[[# @LINE + 5]]:
// CHECK-NEXT:    return
// CHECK-NOT:     "top.exp"
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %in = "top.input"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
  %r = "top.relu"(%in) : (tensor<2xf32>) -> tensor<2xf32>
  %dead = "top.exp"(%r) : (tensor<2xf32>) -> tensor<2xf32>
  return %r : tensor<2xf32>
}

// EMPTY-NOT: {{.}}
