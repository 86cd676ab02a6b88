"""top-assign-precision: decide each op's precision (qtable, chip float ops, mode) before lowering."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.formats.qtable import read_qtable
from tpu_cal.graph import Graph
from tpu_cal.lowering import ATTR_PRECISION, assign_precision

from .registry import Pass, PassError, option, register


class ModuleView:
    """Graph.from_module wants a module-like object (`.operation`, `.body`); a pass gets the module operation."""

    def __init__(self, op: ir.Operation):
        self.operation = op
        self.body = op.regions[0].blocks[0]


def main_func(module: ir.Operation) -> ir.Operation:
    funcs = [op.operation for op in module.regions[0].blocks[0].operations if op.operation.name == "func.func"]
    if len(funcs) != 1:
        raise PassError(f"expected one func.func in the module, found {len(funcs)}")
    return funcs[0]


def graph_ops(module: ir.Operation) -> list[ir.Operation]:
    """The func's ops in the order Graph.from_module makes nodes of them (top.none and the return left out)."""
    block = main_func(module).regions[0].blocks[0]
    return [op.operation for op in block.operations
            if op.operation.name not in ("top.none", "func.return")]


@register
@dataclass
class TopAssignPrecision(Pass):
    """Sets a `precision` (INT8, INT4, F16, BF16, F32 or NONE) on every compute op.

    The qtable's entry wins; else, in an integer mode, the chip's float-by-default ops (softmax, layer_norm, ...)
    take the chip's float type; else the op takes `mode`. Ops with non-float results get `NONE`.

    Reads: the module's ops and their `cali.threshold` (needed by every tensor that will be held in int8/int4),
    the `qtable` file when given. Writes: `precision` (string) on every op other than `top.input`, `top.weight`
    and `top.none`; module attributes `top.chip` and `top.quantize` (the mode as the chip computes it). Errors
    name the op: qtable names the module lacks (with the closest names), a precision the chip cannot compute,
    an int8 tensor without a threshold. The ops are annotated in place; nothing else changes.
    """

    argument: ClassVar[str] = "top-assign-precision"
    qtable: str = option("", "quantize table (`op_name MODE` per line) overriding the mode per op")
    mode: str = option("INT8", "default precision: INT8, INT4, F16, BF16 or F32 (--quantize)")
    chip: str = option("bm1684x", "processor whose capabilities decide the float ops and fallbacks")

    def run(self, module: ir.Operation) -> None:
        with module.context:
            graph = Graph.from_module(ModuleView(module))
        table = read_qtable(self.qtable) if self.qtable else None
        assign_precision(graph, self.chip, self.mode, table)
        ops = graph_ops(module)
        with module.context:
            for op, node in zip(ops, graph.nodes):
                assert op.name == node.op, (op.name, node.op)
                if ATTR_PRECISION in node.extra:
                    op.attributes[ATTR_PRECISION] = ir.StringAttr.get(node.extra[ATTR_PRECISION])
            for key in ("chip", "quantize"):
                module.attributes[f"top.{key}"] = ir.StringAttr.get(graph.attrs[key])
