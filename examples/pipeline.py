"""Driving tpu_cal's passes from a Python script, next to upstream MLIR passes.

    python examples/pipeline.py

Python passes cannot be named inside an MLIR pipeline string: add upstream passes as text and ours as objects,
or let `build_pass_manager` split a pipeline string for you (what `tpu-cal-opt -p` does).
"""
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir, passmanager

from tpu_cal import ir as tir
from tpu_cal.passes import Pass, TopDCE, build_pass_manager

MODULE = """
func.func @main(%arg0: tensor<1x8xf32> loc("x")) -> tensor<1x8xf32> {
  %x = "top.input"(%arg0) : (tensor<1x8xf32>) -> tensor<1x8xf32> loc("x")
  %c0 = arith.constant dense<0.5> : tensor<1x8xf32> loc("half")
  %c1 = arith.constant dense<0.5> : tensor<1x8xf32> loc("half_again")
  %m = "top.mul"(%x, %c0) : (tensor<1x8xf32>, tensor<1x8xf32>) -> tensor<1x8xf32> loc("scaled_Mul")
  %s = "top.sigmoid"(%m) : (tensor<1x8xf32>) -> tensor<1x8xf32> loc("unused_Sigmoid")
  %e = "top.exp"(%s) : (tensor<1x8xf32>) -> tensor<1x8xf32> loc("unused_Exp")
  %y = "top.add"(%m, %c1) : (tensor<1x8xf32>, tensor<1x8xf32>) -> tensor<1x8xf32> loc("y_Add")
  return %y : tensor<1x8xf32>
}
"""


@dataclass
class CountOps(Pass):
    """Reads every op and prints how many of them start with `prefix`; writes nothing."""

    argument: ClassVar[str] = "count-ops"
    prefix: str = "top."

    def run(self, module: ir.Operation) -> None:
        names = []
        module.walk(lambda op: names.append(op.name) or ir.WalkResult.ADVANCE)
        print(f"{self.argument}: {sum(n.startswith(self.prefix) for n in names)} {self.prefix}* ops")


def main():
    ctx = tir.context()                          # an MLIR context with the top and tpu dialects loaded
    module = tir.parse(MODULE, ctx, "example")

    # 1. A PassManager by hand: upstream passes as pipeline text, ours as objects.
    with ctx:
        pm = passmanager.PassManager("builtin.module")
        pm.add(CountOps(), argument=CountOps.argument)
        pm.add("canonicalize,cse")              # merges the two constants; keeps dead top ops
        pm.add(TopDCE(), argument="top-dce")    # erases them (never pass op_name= for a Python pass)
        CountOps(prefix="arith.").add_to(pm)    # same as pm.add(obj, name=..., argument=..., description=...)
        pm.run(module.operation)
    print(tir.asm(module))

    # 2. The same from one pipeline string, options in braces: what `tpu-cal-opt -p` does.
    module = tir.parse(MODULE, ctx, "example")
    pm = build_pass_manager("canonicalize,cse,top-dce", ctx)
    print(pm)
    pm.run(module.operation)
    print(tir.asm(module))


if __name__ == "__main__":
    main()
