"""Rewrites that make a model quantize better, run by `tpu-cal calibrate --sq --smc --we --bc` and as passes.

- `smoothquant`: per-channel smoothing of matmul / conv inputs (float-equivalent), before calibration;
- `softmax_correction`: prob / S before the attention matmul and the output times S (seed 001), after it;
- `weight_equalization`: cross-layer equalization of conv -> conv and conv -> relu -> conv (float-equivalent);
- `bias_correction`: the mean int8-vs-float error of poorly matching conv / matmul outputs folded into their
  biases, after calibration (it needs the thresholds).

`calibrate(graph, ds, cfg, tune_ds, options)` is the calibration with the rewrites the options ask for, in the
seeds' order (sq, smc, we, bc): sq, smc and we are float-equivalent and change the graph before the statistics,
so the thresholds are those of the rewritten graph (smc then fixes the thresholds of the probabilities it
corrects); bc simulates the calibrated graph, so it runs last. The graph is changed in place: a module saved
afterwards carries the rewritten weights. Each rewrite prints a table of what it did.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from ..calibration import CalibrationConfig, CalibrationResult, calibrate_graph
from ..dataset import Dataset
from ..errors import UserError
from ..graph import Graph
from ..report import table


@dataclass
class Rewrites:
    """Which rewrites to run and their settings (`tpu-cal calibrate`'s flags of the same names)."""
    sq: bool = False
    sq_alpha: float = 0.5
    sq_insert: bool = True
    smc: bool = False
    we: bool = False
    bc: bool = False
    bc_inference_num: int = 30
    min_layer_cos: float = 0.99
    bc_part: str = "output"     # the error corrected: "output" (all the layer adds) or "weights" (its int8 weights')
    processor: str = "bm1684x"

    @staticmethod
    def from_options(o) -> "Rewrites":
        """From any options object with (some of) these fields (`tpu-cal calibrate`'s)."""
        r = Rewrites()
        for k in Rewrites.__dataclass_fields__:
            if hasattr(o, k):
                setattr(r, k, getattr(o, k))
        return r

    def check(self) -> None:
        if not 0.0 <= self.sq_alpha <= 1.0:
            raise UserError(f"--sq_alpha must be in [0, 1], got {self.sq_alpha}")
        if self.bc_inference_num < 0:
            raise UserError("--bc_inference_num must be >= 0")
        if not 0.0 <= self.min_layer_cos <= 1.0:
            raise UserError(f"--min_layer_cos must be in [0, 1], got {self.min_layer_cos}")
        if self.bc:
            from ..chips import chip
            chip(self.processor)        # an unknown processor fails now, not after the calibration


def run_smoothquant(graph: Graph, ds: Dataset, n: int, batch_size: int, alpha: float, insert: bool = True,
                    out=None) -> list:
    """SmoothQuant on `graph` with activation ranges from the first `n` samples of `ds`; prints its table to `out`
    (stdout; passes give stderr, their stdout is the module)."""
    from .common import channel_absmax
    from .smoothquant import smoothquant, targets
    axes = {name: t.axis for name, t in targets(graph).items()}
    absmax = channel_absmax(graph, axes, ds, n, batch_size, "smoothquant statistics")
    rows = smoothquant(graph, absmax, alpha, insert)
    print(table(["tensor", "producer", "smoothing", "readers", "restored", "max/median before", "after"], rows,
                title=f"smoothquant (alpha {alpha}): {len(rows)} activations"), file=out or sys.stdout)
    return rows


def run_softmax_correction(graph: Graph, ds: Dataset, n: int, batch_size: int, per: str = "row", out=None) -> list:
    """Softmax correction on `graph` with S from the first `n` samples of `ds`; prints its table to `out`."""
    from ..calibration import run_batches
    from ..interp.core import Interpreter
    from . import softmax_correction as smc
    found = smc.find(graph)
    col = smc.MaxProb([a.softmax for a in found], per)
    if found:
        run_batches(Interpreter(graph, [col]), ds, ds.take(n), batch_size, "softmax correction statistics")
    rows = smc.rewrite(graph, col.scales())
    print(table(["softmax", "attention matmul", "S", "division", "restore"], rows,
                title=f"softmax correction: {sum(r[3] != 'skipped' for r in rows)} of {len(rows)} attention "
                      f"softmaxes"), file=out or sys.stdout)
    return rows


def run_weight_equalization(graph: Graph, out=None) -> tuple[list, list]:
    """Weight equalization on `graph`; prints what it equalized and what it skipped (with the reason) to `out`."""
    from .weight_equalization import equalize
    rows, skipped, sweeps = equalize(graph)
    out = out or sys.stdout
    print(table(["conv1", "via", "conv2", "channels", "range ratio before", "after"], rows,
                title=f"weight equalization: {len(rows)} pairs, {sweeps} sweeps (range ratio: mean over channels "
                      f"of max(r1, r2) / min(r1, r2))"), file=out)
    if skipped:
        print(table(["conv1", "via", "conv2", "skipped because"], skipped,
                    title=f"weight equalization skipped {len(skipped)} chains:"), file=out)
    return rows, skipped


def run_bias_correction(graph: Graph, ds: Dataset, n: int, batch_size: int, chip: str, min_layer_cos: float,
                        out=None, part: str = "output") -> dict:
    """Bias correction of a calibrated graph (thresholds attached) on the first `n` samples of `ds`; prints the
    corrected layers (those below `min_layer_cos`) to `out`. Returns layer -> the error subtracted from its bias
    (`bias_correction.uncorrect` adds it back to a layer a qtable lifts to float)."""
    from .bias_correction import correct, measure
    samples = ds.take(n, "--bc_inference_num")
    stats = measure(graph, ds, samples, chip, batch_size, part)
    rows = correct(graph, stats, min_layer_cos)
    fixed = [r for r in rows if r[5]]
    print(table(["layer", "op", "int8 cosine", "mean |error|", "max |error|", "corrected"], fixed,
                title=f"bias correction on {len(samples)} samples ({chip}): {len(fixed)} of {len(rows)} conv/matmul "
                      f"layers below cosine {min_layer_cos}"), file=out or sys.stdout)
    return {name: err for name, (cos, err) in stats.items() if cos < min_layer_cos}


def calibrate(graph: Graph, ds: Dataset, cfg: CalibrationConfig, tune_ds: Dataset | None, options) \
        -> CalibrationResult:
    """`calibrate_graph` with the rewrites `options` asks for (a Rewrites, or an object with its fields)."""
    rw = options if isinstance(options, Rewrites) else Rewrites.from_options(options)
    rw.check()
    asked = [f"--{k}" for k in ("sq", "smc", "we", "bc") if getattr(rw, k)]
    if asked and hasattr(options, "save_mlir") and not options.save_mlir:
        raise UserError(f"{' '.join(asked)} rewrite the module: give --save_mlir to keep it (the cali_table "
                        f"describes the rewritten module, not the original)")
    if rw.sq:
        run_smoothquant(graph, ds, cfg.input_num, cfg.batch_size, rw.sq_alpha, rw.sq_insert)
    if rw.smc:
        run_softmax_correction(graph, ds, cfg.input_num, cfg.batch_size)
    if rw.we:
        run_weight_equalization(graph)
    if rw.bc:       # bias correction measures each conv's own int8 output: it needs their thresholds
        cfg = dataclasses.replace(cfg, preactivation_stats=True)
    res = calibrate_graph(graph, ds, cfg, tune_ds)
    if rw.smc:
        from .softmax_correction import fix_thresholds
        fix_thresholds(graph, res.table)
    if rw.bc:
        from ..calibration import attach, method_table
        from ..lowering import activation_pairs
        from ..thresholds import canonical_method
        # measured unfused, each conv's own int8 output needs a threshold of its own (the table gives it the
        # activation's: calibration.share_fused)
        own = method_table(graph, res.stats, res.op_types, canonical_method(cfg.method), shared=False)
        attach(graph, {**res.table, **{m: own[m] for m in activation_pairs(graph).values() if m in own}})
        res.bias_corrections = run_bias_correction(graph, ds, rw.bc_inference_num, cfg.batch_size, rw.processor,
                                                   rw.min_layer_cos, part=rw.bc_part)
    return res
