"""top-to-tpu: lower a module whose ops carry `precision` to the tpu dialect (docs/lowering.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from mlir import ir

from tpu_cal.fileio import read_npz, write_npz
from tpu_cal.graph import Graph
from tpu_cal.lowering import lower

from .assign_precision import ModuleView, main_func
from .registry import Pass, PassError, option, register


def lowered_weight_file(old: str | None, chip: str, module_name: str = "module") -> str:
    """`<stem>_<chip>_weights.npz` for a module whose weights were `<stem>_weights.npz` (or `<stem>.npz`)."""
    base = os.path.basename(old) if old else f"{module_name}.npz"
    stem = base[:-len(".npz")] if base.endswith(".npz") else base
    if stem.endswith("_weights"):
        stem = stem[:-len("_weights")]
    return f"{stem}_{chip}_weights.npz"


def replace_func(module: ir.Operation, text: str) -> None:
    """Parses `text` (a whole module) in the module's context and swaps its func and `top.*` attributes in."""
    ctx = module.context
    with ctx:
        new = ir.Module.parse(text)
        old_func = main_func(module)
        new_func = main_func(new.operation)
        new_func.move_before(old_func)
        old_func.erase()
        old_keys = [a.name if hasattr(a, "name") else a for a in module.attributes]
        for k in old_keys:
            if k.startswith("top."):
                del module.attributes[k]
        for a in new.operation.attributes:
            k = a.name if hasattr(a, "name") else a
            module.attributes[k] = new.operation.attributes[k]


@register
@dataclass
class TopToTpu(Pass):
    """Lowers every `top` compute op to `tpu.<op>` by its `precision`, with casts at the precision borders.

    Result types become `!quant.uniform` (int8/int4), f16 or bf16; weights are quantized or rounded.

    Reads: `precision` on every compute op (from top-assign-precision), `cali.threshold` / `cali.min` /
    `cali.max`, the module's weight file (`top.weight_file`, looked up in `weight-dir`). Writes: a new function
    in place of the old one (tpu ops with a `mode` attribute, `!quant.uniform` / f16 / bf16 types, casts named
    `<producer>_<type>`, outputs cast back to f32); module attributes `top.state = "lowered"`, `top.chip`,
    `top.quantize`, `top.weight_file`; a new weight file `<stem>_<chip>_weights.npz` in `weight-dir` holding
    the weights the lowered function uses (int8 `<w>_int8`, int32 `<b>_int32`, rounded `<w>_f16`/`<w>_bf16`).
    """

    argument: ClassVar[str] = "top-to-tpu"
    chip: str = option("", "processor (default: the module's top.chip from top-assign-precision)")
    asym_ops: list[str] = option([], "ops with asymmetric int8 results (a cali_table's #asym_op block)")
    weight_dir: str = option(".", "folder the module's weight file is relative to; the new one is written there")

    def run(self, module: ir.Operation) -> None:
        with module.context:
            graph = Graph.from_module(ModuleView(module))
        chip = self.chip or graph.attrs.get("chip")
        if not chip:
            raise PassError("no chip: give top-to-tpu{chip=...} or run top-assign-precision first")
        wf = graph.attrs.get("weight_file")
        if wf:
            graph.weights = read_npz(os.path.join(self.weight_dir, wf), "weight file")
        elif any(n.op == "top.weight" for n in graph.nodes):
            raise PassError("the module has weights but no top.weight_file attribute")
        lowered = lower(graph, chip, self.asym_ops)
        used = {n.attrs["name"] for n in lowered.nodes if n.op == "top.weight"}
        new_wf = None
        if used:
            new_wf = lowered_weight_file(wf, lowered.attrs["chip"], str(graph.attrs.get("name", "module")))
            lowered.attrs["weight_file"] = new_wf
        else:
            lowered.attrs.pop("weight_file", None)
        text = lowered.to_mlir()
        try:
            replace_func(module, text)
        except ir.MLIRError as e:       # a bug, not a user error: say what did not verify
            raise PassError(f"the lowered function does not parse: {e}") from None
        if new_wf:
            write_npz(os.path.join(self.weight_dir, new_wf),
                      {k: np.asarray(lowered.weights[k], order="C") for k in sorted(used)})


