"""top-softmax-correction: attention probabilities / S quantized, the attention output times S (seed 001)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.calibration import ATTR_MAX, ATTR_MIN, ATTR_TH, attach
from tpu_cal.optimize import run_softmax_correction
from tpu_cal.optimize.softmax_correction import fix_thresholds

from ._graph_io import dataset, read_graph, write_graph
from .registry import Pass, PassError, option, register


@register
@dataclass
class TopSoftmaxCorrection(Pass):
    """Quantizes attention probabilities as prob / S on [0, 1] and multiplies the attention output by S.

    Puts `prob * (1/S)` before each attention matmul and `* S` after it, and sets the thresholds that make int8
    quantize prob / S on [0, 1] (tpu_cal.optimize.softmax_correction).

    Reads: a calibrated float module (`cali.threshold` / `cali.min` / `cali.max`, from top-calibrate or
    top-import-calibration) and its weight file (in `weight-dir`); the samples of `dataset` or `data-list`, for
    S = the mean largest probability of each softmax row. Writes: `top.mul` ops `<softmax>_smc` (by 1/S, with
    `smc.scale = S`) and `<matmul>_smc` (by S) with their scalar weights; thresholds S on the probability tensors
    from the softmax to the division, 1 on the division, the matmul's old range / S on the matmul and the old
    range on the restoring op; a new weight file `<stem>_smc_weights.npz` in `weight-dir`.
    """

    argument: ClassVar[str] = "top-softmax-correction"
    dataset: str = option("", "folder of images, .npy or .npz samples")
    data_list: str = option("", "file with one sample per line")
    input_num: int = option(0, "samples for S (0: all)")
    weight_dir: str = option(".", "folder of the module's weight file; the new one is written there")
    batch_size: int = option(16, "samples run at once")

    def run(self, module: ir.Operation) -> None:
        graph = read_graph(module, self.weight_dir)
        table = {n.name: (n.extra[ATTR_TH], n.extra.get(ATTR_MIN, -n.extra[ATTR_TH]),
                          n.extra.get(ATTR_MAX, n.extra[ATTR_TH])) for n in graph.nodes if ATTR_TH in n.extra}
        if not table:
            raise PassError("the module has no thresholds; run top-calibrate (or top-import-calibration) first: "
                            "the correction is in the thresholds of the probabilities")
        ds = dataset(graph, self.dataset, self.data_list)
        run_softmax_correction(graph, ds, self.input_num, self.batch_size, out=sys.stderr)
        fix_thresholds(graph, table)
        attach(graph, table, graph.attrs.get("cali_method"))
        write_graph(module, graph, self.weight_dir, "smc")
