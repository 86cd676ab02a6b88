// A pipeline mixing upstream passes with ours. canonicalize and cse alone keep dead top ops (IRDL ops have no
// side-effect traits); with top-dce after them the dead ops go, while cse still merges the duplicate constants.
// RUN: mlir-opt --irdl-file=%irdl_top %s -canonicalize -cse | filecheck %s --check-prefix=UPSTREAM
// RUN: tpu-cal-opt %s -p 'canonicalize,cse,top-dce' | filecheck %s
// The same pipeline in mlir-opt's --pass-pipeline form, with an op-anchored upstream part.
// RUN: tpu-cal-opt %s --pass-pipeline='builtin.module(func.func(canonicalize,cse),top-dce)' | filecheck %s
// Our pass between upstream ones, and twice.
// RUN: tpu-cal-opt %s -p 'cse,top-dce,canonicalize,top-dce' | filecheck %s
// RUN: tpu-cal-opt %s -p 'canonicalize,cse,top-dce' --dump-pass-pipeline 2>&1 >/dev/null \
// RUN:   | filecheck %s --check-prefix=PIPELINE

// UPSTREAM-LABEL: func.func @mixed
// UPSTREAM:         "top.sigmoid"
// UPSTREAM:         "top.exp"

// CHECK-LABEL: func.func @mixed
// CHECK-NEXT:    %[[C:.*]] = arith.constant dense<2.000000e+00> : tensor<4xf32>
// CHECK-NEXT:    %[[IN:.*]] = "top.input"(%arg0)
// CHECK-NEXT:    %[[A:.*]] = "top.add"(%[[IN]], %[[C]])
// CHECK-NEXT:    %[[M:.*]] = "top.mul"(%[[A]], %[[C]])
// CHECK-NEXT:    return %[[M]]
// CHECK-NEXT:  }
func.func @mixed(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  %in = "top.input"(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
  %c1 = arith.constant dense<2.0> : tensor<4xf32>
  %c2 = arith.constant dense<2.0> : tensor<4xf32>
  %unused = arith.constant dense<7.0> : tensor<4xf32>
  %a = "top.add"(%in, %c1) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %dead1 = "top.sigmoid"(%a) : (tensor<4xf32>) -> tensor<4xf32>
  %dead2 = "top.exp"(%dead1) : (tensor<4xf32>) -> tensor<4xf32>
  %m = "top.mul"(%a, %c2) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  return %m : tensor<4xf32>
}

// PIPELINE: builtin.module(canonicalize{{.*}},cse,top-dce)
