"""top-calibrate: the interpreter pass that runs a dataset through the module and attaches thresholds."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.calibration import CalibrationConfig, calibrate_graph
from tpu_cal.dataset import Dataset
from tpu_cal.fileio import read_npz
from tpu_cal.graph import Graph
from tpu_cal.preprocess import Preprocess

from .import_calibration import set_thresholds
from .registry import Pass, PassError, option, register


@register
@dataclass
class TopCalibrate(Pass):
    """Runs calibration samples through the float module and attaches a threshold to every activation.

    Reads: the module (float `top` ops), its weight file (`top.weight_file`, looked up in `weight-dir`), the
    samples of `dataset` or `data-list`, preprocessed as the module's `top.preprocess` says. Writes:
    `cali.threshold`, `cali.min`, `cali.max` on every op with a floating-point result, `top.state =
    "calibrated"` and `top.cali_method` on the module. `tpu-cal calibrate` is the same with a cali_table.
    """

    argument: ClassVar[str] = "top-calibrate"
    dataset: str = option("", "folder of images, .npy or .npz samples")
    data_list: str = option("", "file with one sample per line")
    method: str = option("kl", "kl, mse, max, percentile9999, aciq_gauss, aciq_laplace or torch_observer")
    input_num: int = option(0, "calibration samples (0: all)")
    tune_num: int = option(10, "auto-tune samples (kl and aciq); 0 skips auto-tune")
    histogram_bin_num: int = option(2048, "histogram bins (a power of two)")
    weight_dir: str = option(".", "folder the module's weight file is relative to")
    batch_size: int = option(16, "samples run at once")

    def run(self, module: ir.Operation) -> None:
        with module.context:
            graph = Graph.from_module(_as_module(module))
        wf = graph.attrs.get("weight_file")
        if wf:
            graph.weights = read_npz(os.path.join(self.weight_dir, wf), "weight file")
        nodes = graph.node_map()
        ds = Dataset([nodes[n] for n in graph.inputs], Preprocess.from_attrs(graph.attrs.get("preprocess")),
                     self.dataset or None, self.data_list or None)
        cfg = CalibrationConfig(self.method, self.input_num, self.tune_num, self.histogram_bin_num, self.batch_size)
        res = calibrate_graph(graph, ds, cfg)
        n, unknown = set_thresholds(module, res.table, cfg.method)
        if unknown:
            raise PassError(f"ops without a name location: {', '.join(unknown[:5])}")


class _as_module:
    """Graph.from_module wants a module-like object: `.operation` and `.body`."""

    def __init__(self, op: ir.Operation):
        self.operation = op
        self.body = op.regions[0].blocks[0]
