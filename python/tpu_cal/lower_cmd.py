"""`tpu-cal lower`: model_deploy's quantization half. Float (or calibrated) top module -> tpu module per chip.

    tpu-cal lower model.mlir --quantize INT8 --processor bm1684x --calibration_table model.cali \
        [--quantize_table model_qtable] -o model_int8.mlir

Steps: read the module and its weights; import the cali_table's thresholds (and its #asym_op block) when one is
given (a module saved by `calibrate --save_mlir` already carries them); assign precisions
(`lowering.assign_precision`, with the qtable); lower (`lowering.lower`); save the module and
`<stem>_weights.npz` atomically; print a summary. Every check runs before anything is written.

Hook for the quantized simulation: with `--test_input`, `check_lowered(float_graph, lowered, options)` calls
`tpu_cal.simulate.simulate_and_report(float_graph, lowered_graph, test_input, test_reference, tolerance,
plot_dir) -> int` (its return value becomes the exit code); it is skipped with a note while that module does
not exist.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from . import ir
from .calibration import attach
from .chips import chip as get_chip
from .cli import float_list, option
from .errors import UserError
from .fileio import check_writable
from .formats.cali_table import read_cali_table
from .formats.qtable import MODES, read_qtable
from .graph import Graph
from .lowering import NONE, assign_precision, lower, resolve_mode, summary
from .report import table


@dataclass
class LowerOptions:
    mlir_file: str = option(positional=True, help="top-dialect module (from `tpu-cal transform`, or a calibrated "
                                                  "one from `tpu-cal calibrate --save_mlir`)")
    output: str = option(required=True, aliases=("-o",), help="output tpu-dialect module; weights go to "
                                                               "<stem>_weights.npz beside it")
    quantize: str = option(required=True, choices=MODES, help="default precision of the ops")
    processor: str = option(required=True, aliases=("--chip",), help="target processor (bm1684x, bm1688, cv183x, ...)")
    calibration_table: str = option(None, help="cali_table from `tpu-cal calibrate` (needed for INT8/INT4 unless "
                                               "the module is calibrated)")
    quantize_table: str = option(None, help="qtable: `op_name MODE` per line, overriding --quantize per op")
    test_input: str = option(None, help="input .npz/.npy: run the float and the lowered module and compare them")
    test_reference: str = option(None, help="reference outputs (.npz) for --test_input")
    tolerance: str = option(None, parse=float_list, help="minimum cosine,euclidean similarity for --test_input, "
                                                         "e.g. 0.99,0.90")
    plot_dir: str = option(None, help="folder for the per-layer comparison plots of --test_input")


@dataclass
class Lowered:
    float_graph: Graph            # the input module, thresholds and precisions attached
    graph: Graph                  # the tpu-dialect graph
    asym: list[str]
    notes: list[str]




def prepare(o: LowerOptions, ctx=None) -> Lowered:
    """Everything but writing: load, import the tables, assign precisions, lower. Library entry point for tools
    that want the lowered Graph without files (search, reports)."""
    chip = get_chip(o.processor)
    mode = resolve_mode(chip, o.quantize)        # a mode the chip lacks fails before any file is read
    g = ir.load_graph(o.mlir_file, ctx or ir.context())
    notes, asym = [], []
    if mode != o.quantize.upper():
        notes.append(f"{chip.name} has no {o.quantize.upper()}; ops run in {mode}")
    if o.calibration_table:
        cali = read_cali_table(o.calibration_table)
        names = {n.name for n in g.nodes if n.op not in ("top.weight", "top.none")}
        known = {k: v for k, v in cali.thresholds.items() if k in names}
        if cali.thresholds and not known:
            raise UserError(f"{o.calibration_table}: none of its {len(cali.thresholds)} entries names an op of "
                            f"{o.mlir_file} (first: {', '.join(list(cali.thresholds)[:3])}); was it made for "
                            f"another model?")
        extra = [k for k in cali.thresholds if k not in names] + [k for k in cali.asym if k not in names]
        if extra:
            notes.append(f"{o.calibration_table}: {len(extra)} entries name no op of the module: "
                         f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}")
        attach(g, known, cali.method)
        asym = [k for k in cali.asym if k in names]
    qtable = read_qtable(o.quantize_table) if o.quantize_table else None
    assign_precision(g, chip, o.quantize, qtable)
    lowered = lower(g, chip, asym)
    return Lowered(g, lowered, asym, notes)


def check_lowered(float_graph: Graph, lowered: Graph, o: LowerOptions) -> int:
    """The hook after lowering: the quantized simulation and its reports, when --test_input asks for them."""
    if not o.test_input:
        return 0
    from .simulate import simulate_and_report
    return int(simulate_and_report(float_graph, lowered, o.test_input, o.test_reference, o.tolerance,
                                   o.plot_dir) or 0)


def summary_table(lowered: Graph, seconds: float) -> str:
    s = summary(lowered)
    order = ["INT8", "INT4", "F16", "BF16", "F32", NONE]
    modes = s["modes"]
    rows = [[m, modes[m]] for m in order if modes.get(m)] + [[m, c] for m, c in modes.items() if m not in order]
    rows.append(["casts", s["casts"]])
    return table(["precision", "ops"], rows,
                 title=f"lowered for {lowered.attrs['chip']} ({lowered.attrs['quantize']}) in {seconds:.1f}s:")


def lower_file(o: LowerOptions) -> int:
    t0 = time.time()
    if o.test_reference and not o.test_input:
        raise UserError("--test_reference needs --test_input")
    check_writable(o.output)
    if os.path.abspath(o.output) == os.path.abspath(o.mlir_file):
        raise UserError(f"{o.output}: the output would overwrite the input module")
    ctx = ir.context()
    res = prepare(o, ctx)
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    ir.save_graph(res.graph, o.output, ctx)
    dt = time.time() - t0
    print(summary_table(res.graph, dt))
    print(f"-> {o.output}, {res.graph.attrs['weight_file']}")
    return check_lowered(res.float_graph, res.graph, o)

