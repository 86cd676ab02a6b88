// Pipeline errors are one-line diagnostics on stderr and a failing exit status, never a traceback.
// RUN: not tpu-cal-opt %s -p 'canonicalize,top-nonexistent' 2>&1 | filecheck %s --check-prefix=UNKNOWN
// RUN: not tpu-cal-opt %s -p 'top-dce{bogus=1}' 2>&1 | filecheck %s --check-prefix=OPTION
// RUN: not tpu-cal-opt %s -p 'canonicalize{max-iterations=many}' 2>&1 | filecheck %s --check-prefix=UPSTREAM-OPTION
// RUN: not tpu-cal-opt %s -p 'func.func(top-dce)' 2>&1 | filecheck %s --check-prefix=NESTED
// RUN: not tpu-cal-opt %s -p 'top-dce{' 2>&1 | filecheck %s --check-prefix=UNBALANCED
// RUN: not tpu-cal-opt %s.missing -p top-dce 2>&1 | filecheck %s --check-prefix=MISSING
// RUN: not tpu-cal-opt %s --no-such-flag 2>&1 | filecheck %s --check-prefix=FLAG

// UNKNOWN: tpu-cal-opt: error: unknown pass 'top-nonexistent': neither a tpu_cal pass ({{.*}}top-dce{{.*}}) nor a registered MLIR pass
// UNKNOWN-NOT: Traceback
// OPTION: tpu-cal-opt: error: top-dce: unknown option 'bogus'
// UPSTREAM-OPTION: tpu-cal-opt: error: invalid pipeline element 'canonicalize{max-iterations=many}': {{.*}}'many' value invalid
// NESTED: tpu-cal-opt: error: 'func.func(top-dce)': top-dce is a tpu_cal (Python) pass and runs on the whole module
// UNBALANCED: tpu-cal-opt: error: unbalanced
// MISSING: tpu-cal-opt: error: {{.*}}tpu-cal-opt-errors.mlir.missing: file not found
// FLAG: tpu-cal-opt: error: unrecognized arguments: --no-such-flag

func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  return %arg0 : tensor<2xf32>
}
