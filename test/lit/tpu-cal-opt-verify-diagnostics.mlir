// --verify-diagnostics checks expected-error designators (@+N, @-N, @above, @below, -re) chunk by chunk;
// chunks without errors still produce output, separated by '// -----' like mlir-opt's.
// RUN: tpu-cal-opt %s -p top-dce --split-input-file --verify-diagnostics | filecheck %s
// Without --split-input-file the file is one module and the verifier reports all three errors: still a match.
// RUN: tpu-cal-opt %s -p top-dce --verify-diagnostics | filecheck %s --allow-empty --check-prefix=EMPTY
// An expectation that is not met, and an error nobody expected, fail the run (exit status 1).
// RUN: sed 's/exactly 1 operands/exactly 7 operands/' %s \
// RUN:   | not tpu-cal-opt - --split-input-file --verify-diagnostics 2>&1 | filecheck %s --check-prefix=MISMATCH

func.func @at_below(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  // expected-error @below {{attribute "axis" is expected but not provided}}
  %0 = "top.softmax"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}

// -----

func.func @at_minus_one(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = "top.relu"(%arg0, %arg0) : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  // expected-error @-1 {{expects exactly 1 operands}}
  return %0 : tensor<2xf32>
}

// -----

func.func @regex(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = "top.softmax"(%arg0) {axis = 1.0 : f32} : (tensor<2xf32>) -> tensor<2xf32>
  // expected-error-re @above {{expected base attribute '{{.*}}integer' but got '{{[a-z.]+}}float'}}
  return %0 : tensor<2xf32>
}

// -----

// CHECK-LABEL: func.func @valid
// CHECK-NOT:     "top.exp"
func.func @valid(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %dead = "top.exp"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
  return %arg0 : tensor<2xf32>
}

// MISMATCH-DAG: <stdin>:19:8: error: unexpected error: op expects exactly 1 operands, but got 2
// MISMATCH-DAG: <stdin>:20:6: error: expected error "expects exactly 7 operands" was not produced

// EMPTY-NOT: {{.}}
