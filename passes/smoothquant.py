"""top-smoothquant: SmoothQuant's per-channel smoothing of matmul / conv inputs (tpu_cal.optimize.smoothquant)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.optimize import run_smoothquant

from ._graph_io import dataset, read_graph, write_graph
from .registry import Pass, PassError, option, register


@register
@dataclass
class TopSmoothQuant(Pass):
    """Moves activation outliers into the weights: X / s into the producer, s into the weights of its readers.

    Reads: the float module and its weight file (`top.weight_file`, in `weight-dir`); the samples of `dataset`
    or `data-list` (per-channel abs-max of every matmul / conv input). Writes: rescaled weights (new keys
    `<key>_sq`) of the smoothed matmul / conv ops and of the producers that absorb 1/s (layer_norm gamma/beta,
    matmul columns, conv / scale channels); `top.mul` / `top.scale` ops `<X>_sq_restore` for other readers of a
    smoothed tensor and, with `insert`, `<X>_sq` where nothing absorbs 1/s; a new weight file
    `<stem>_sq_weights.npz` in `weight-dir`. The float function is unchanged (up to float32 rounding).
    """

    argument: ClassVar[str] = "top-smoothquant"
    alpha: float = option(0.5, "migration strength: s = max|X|^alpha / max|W|^(1-alpha)")
    insert: bool = option(True, "insert a scale op where no producer can absorb 1/s")
    dataset: str = option("", "folder of images, .npy or .npz samples")
    data_list: str = option("", "file with one sample per line")
    input_num: int = option(0, "samples for the activation ranges (0: all)")
    weight_dir: str = option(".", "folder of the module's weight file; the new one is written there")
    batch_size: int = option(16, "samples run at once")

    def run(self, module: ir.Operation) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise PassError(f"alpha must be in [0, 1], got {self.alpha}")
        graph = read_graph(module, self.weight_dir)
        ds = dataset(graph, self.dataset, self.data_list)
        run_smoothquant(graph, ds, self.input_num, self.batch_size, self.alpha, self.insert, sys.stderr)
        write_graph(module, graph, self.weight_dir, "sq")
