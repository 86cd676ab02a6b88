# A PassManager built from Python with our pass objects next to upstream passes: the user-facing example
# examples/pipeline.py, run as is.
# RUN: %python %examples/pipeline.py | filecheck %s

# CHECK:      count-ops: 5 top.* ops
# CHECK-NEXT: count-ops: 1 arith.* ops
# CHECK-LABEL: func.func @main
# CHECK-NEXT:    %[[C:.*]] = arith.constant dense<5.000000e-01>
# CHECK-NEXT:    %[[X:.*]] = "top.input"
# CHECK-NEXT:    %[[M:.*]] = "top.mul"(%[[X]], %[[C]]) {{.*}} loc("scaled_Mul")
# CHECK-NEXT:    %[[Y:.*]] = "top.add"(%[[M]], %[[C]]) {{.*}} loc("y_Add")
# CHECK-NEXT:    return %[[Y]]
# CHECK:       builtin.module(canonicalize{{.*}},cse,top-dce)
# CHECK-LABEL: func.func @main
# CHECK-NOT:     "top.sigmoid"
# CHECK-NOT:     "top.exp"
# CHECK:         return
