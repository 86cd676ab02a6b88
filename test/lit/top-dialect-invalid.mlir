// The IRDL verifier of the top dialect rejects malformed ops, in stock mlir-opt and in our driver alike.
// RUN: mlir-opt --irdl-file=%irdl_top %s -split-input-file -verify-diagnostics
// RUN: tpu-cal-opt %s --split-input-file --verify-diagnostics

func.func @missing_attribute(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  // expected-error @+1 {{'top.softmax' op attribute "axis" is expected but not provided}}
  %0 = "top.softmax"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  return %0 : tensor<1x8xf32>
}

// -----

func.func @wrong_attribute_kind(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  // expected-error @+1 {{expected base attribute 'builtin.integer' but got 'builtin.string'}}
  %0 = "top.softmax"(%arg0) {axis = "1"} : (tensor<1x8xf32>) -> tensor<1x8xf32>
  return %0 : tensor<1x8xf32>
}

// -----

func.func @float_where_ints_expected(%arg0: tensor<1x8xf32>) -> tensor<8x1xf32> {
  // expected-error @+1 {{expected base attribute 'builtin.dense_array' but got 'builtin.array'}}
  %0 = "top.permute"(%arg0) {order = [1, 0]} : (tensor<1x8xf32>) -> tensor<8x1xf32>
  return %0 : tensor<8x1xf32>
}

// -----

func.func @too_many_operands(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  // expected-error @+1 {{op expects exactly 1 operands, but got 2}}
  %0 = "top.relu"(%arg0, %arg0) : (tensor<1x8xf32>, tensor<1x8xf32>) -> tensor<1x8xf32>
  return %0 : tensor<1x8xf32>
}

// -----

func.func @too_few_operands(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  // expected-error @+1 {{op expects exactly 2 operands, but got 1}}
  %0 = "top.add"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8xf32>
  return %0 : tensor<1x8xf32>
}

// -----

func.func @none_for_a_required_operand(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
  %none = "top.none"() : () -> none
  // expected-error @+1 {{expected base type 'builtin.tensor' but got 'builtin.none'}}
  %0 = "top.add"(%arg0, %none) : (tensor<1x8xf32>, none) -> tensor<1x8xf32>
  return %0 : tensor<1x8xf32>
}

// -----

func.func @no_result(%arg0: tensor<1x8xf32>) {
  // expected-error @+1 {{op expects exactly 1 results, but got 0}}
  "top.relu"(%arg0) : (tensor<1x8xf32>) -> ()
  return
}
