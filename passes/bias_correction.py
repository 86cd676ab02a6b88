"""top-bias-correction: the mean error int8 adds to conv / matmul outputs, folded into their biases."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.optimize import run_bias_correction

from ._graph_io import dataset, read_graph, write_graph
from .registry import Pass, PassError, option, register


@register
@dataclass
class TopBiasCorrection(Pass):
    """Folds the mean int8 error of conv / matmul layers below `min-layer-cos` into their biases.

    The module is simulated in int8 for `chip` on samples; from the bias of every conv / matmul whose output
    cosine against float is below `min-layer-cos` the mean error that layer adds per output channel is
    subtracted (tpu_cal.optimize.bias_correction; `part=weights`: only its int8 weights' share of it).

    Reads: a calibrated float module (`cali.threshold` on every tensor int8 will hold) and its weight file (in
    `weight-dir`); the first `bc-inference-num` samples of `dataset` or `data-list`. Writes: new biases (keys
    `<key>_bc`, or a new weight `<op>_bias_bc` where the op had none) of the corrected layers; a new weight file
    `<stem>_bc_weights.npz` in `weight-dir`; the table of corrected layers on stderr. Thresholds are kept.
    """

    argument: ClassVar[str] = "top-bias-correction"
    dataset: str = option("", "folder of images, .npy or .npz samples")
    data_list: str = option("", "file with one sample per line")
    bc_inference_num: int = option(30, "samples simulated (0: all)")
    min_layer_cos: float = option(0.99, "layers whose int8 output cosine is below this are corrected")
    chip: str = option("bm1684x", "processor whose int8 lowering is simulated")
    part: str = option("output", "error corrected: output (all a layer adds) or weights (its int8 weights' share)")
    weight_dir: str = option(".", "folder of the module's weight file; the new one is written there")
    batch_size: int = option(8, "samples run at once")

    def run(self, module: ir.Operation) -> None:
        if self.part not in ("output", "weights"):
            raise PassError(f"part must be output or weights, got '{self.part}'")
        if not 0.0 <= self.min_layer_cos <= 1.0:
            raise PassError(f"min-layer-cos must be in [0, 1], got {self.min_layer_cos}")
        graph = read_graph(module, self.weight_dir)
        ds = dataset(graph, self.dataset, self.data_list)
        run_bias_correction(graph, ds, self.bc_inference_num, self.batch_size, self.chip, self.min_layer_cos,
                            sys.stderr, self.part)
        write_graph(module, graph, self.weight_dir, "bc")
