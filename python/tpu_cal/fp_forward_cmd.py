"""`tpu-cal fp-forward`: TPU-MLIR's fp_forward (seed 002, "Local Non-Quantization"): a qtable that keeps the
pre-processing before some ops, the post-processing after others, or the blocks between two ops in float.

    tpu-cal fp-forward yolov5s.mlir --processor bm1684x --fpfwd_outputs 474_Conv,326_Conv,622_Conv -o yolov5s_qtable

The table goes to `tpu-cal lower --quantize_table`; the selection rules are in `tpu_cal.search.fp_forward`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import ir
from .chips import MIX_FLOAT_TYPES, chip as get_chip, mix_float_type
from .cli import option
from .errors import UserError
from .formats.qtable import MODES
from .report import table
from .search.fp_forward import fp_layers, parse_blocks, parse_names, write_float_qtable


@dataclass
class FpForwardOptions:
    mlir_file: str = option(positional=True, help="top-dialect module from `tpu-cal transform`")
    output: str = option(required=True, aliases=("-o",), help="output qtable")
    processor: str = option(required=True, aliases=("--chip",), help="target processor (bm1684x, bm1688, cv183x, ...)")
    fpfwd_inputs: str = option(None, help="comma-separated ops: each of them and everything before it stays float")
    fpfwd_outputs: str = option(None, help="comma-separated ops: each of them and everything after it stays float")
    fpfwd_blocks: str = option(None, parse=str, nargs="+", metavar="START:END",
                               help="blocks 'start:end' (space-separated; start or end may be a comma list): "
                                    "the ops from start to end, both included, stay float")
    fp_type: str = option("auto", choices=MIX_FLOAT_TYPES, help="float type of the listed ops (auto: F16 where "
                                                                 "the chip has it, else its float type)")
    quantize: str = option("INT8", choices=MODES, help="the precision of the rest of the model (recorded in the "
                                                       "table's header)")


def fp_forward(o: FpForwardOptions) -> int:
    t0 = time.time()
    chip = get_chip(o.processor)
    mode = mix_float_type(chip, o.fp_type)
    inputs = parse_names(o.fpfwd_inputs, "--fpfwd_inputs") if o.fpfwd_inputs is not None else []
    outputs = parse_names(o.fpfwd_outputs, "--fpfwd_outputs") if o.fpfwd_outputs is not None else []
    blocks = parse_blocks(o.fpfwd_blocks) if o.fpfwd_blocks is not None else []
    if not (inputs or outputs or blocks):
        raise UserError("nothing to select: give --fpfwd_inputs, --fpfwd_outputs and/or --fpfwd_blocks")
    folder = os.path.dirname(os.path.abspath(o.output))
    if os.path.isdir(o.output) or not os.path.isdir(folder):
        raise UserError(f"{o.output}: cannot write a qtable there")
    g = ir.load_graph(o.mlir_file, ir.context())
    if any(n.op.startswith("tpu.") for n in g.nodes):
        raise UserError(f"{o.mlir_file}: a lowered (tpu) module; give the float top module from `tpu-cal transform`")
    names, rows = fp_layers(g, inputs, outputs, blocks)
    if not names:
        raise UserError("the selection holds no real-valued op (only inputs, indices or masks); no qtable written")
    write_float_qtable(o.output, names, mode, chip.name, [f"quantize: {o.quantize.upper()}  fp_forward of "
                                                          f"{os.path.basename(o.mlir_file)}"])
    print(table(["flag", "layer", "float ops"], rows, title="fp_forward selection:"))
    print(f"{len(names)} of {len(g.compute_nodes())} ops in {mode} in {time.time() - t0:.1f}s -> {o.output}")
    return 0
