"""top-dce: dead-code elimination for top/tpu ops."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from .registry import Pass, register

# Ops that stand for a graph input (lowered modules keep top.input too): they are kept even when nothing reads
# them, so the function signature and the graph's input list stay as the model declares them.
KEEP = frozenset({"top.input"})
DIALECTS = ("top.", "tpu.")


def _dead(op: ir.Operation) -> bool:
    for r in op.results:
        for _ in r.uses:
            return False
    return True


@register
@dataclass
class TopDCE(Pass):
    """Erases top/tpu ops whose results are unused, to a fixed point (dead chains go entirely).

    Reads: every op of the module. Writes: erases dead `top.*` / `tpu.*` ops (weights, `top.none`, compute ops).
    Never erases graph inputs (`top.input`), ops of other dialects, or anything whose value reaches
    a `return` (or any other live user). Needed because IRDL ops have no side-effect traits, so `canonicalize`
    and `cse` keep them even when dead.
    """

    argument: ClassVar[str] = "top-dce"

    def run(self, module: ir.Operation) -> None:
        erase_dead_ops(module)


def erase_dead_ops(root: ir.Operation) -> int:
    """Erases dead top/tpu ops under `root`; returns how many. Walks in post-order and sweeps each list in
    reverse, so a user dies before its producers are looked at and a chain goes in one sweep; sweeps repeat
    until nothing changes (ops nested in regions of other ops can free values across regions)."""
    candidates: list[ir.Operation] = []

    def collect(op):
        name = op.name
        if name.startswith(DIALECTS) and name not in KEEP and not op.regions:
            candidates.append(op)
        return ir.WalkResult.ADVANCE

    root.walk(collect, ir.WalkOrder.POST_ORDER)
    alive = list(reversed(candidates))
    total = 0
    while True:
        keep, erased = [], 0
        for op in alive:
            if _dead(op):
                op.erase()
                erased += 1
            else:
                keep.append(op)
        total += erased
        if not erased:
            return total
        alive = keep
