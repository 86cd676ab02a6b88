"""top-weight-equalization: cross-layer equalization of conv -> conv and conv -> relu -> conv chains."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.optimize import run_weight_equalization

from ._graph_io import read_graph, write_graph
from .registry import Pass, option, register


@register
@dataclass
class TopWeightEqualization(Pass):
    """Cross-layer equalization: the channels between two convs get the same weight range in both.

    Data-free (tpu_cal.optimize.weight_equalization); the float function is unchanged.

    Reads: the float module and its weight file (`top.weight_file`, in `weight-dir`). Writes: new filters and
    biases (keys `<key>_we`) of the convs of every equalized pair (conv -> conv, or through relu / leaky_relu /
    unbounded clip; depthwise and grouped convs included) and a new weight file `<stem>_we_weights.npz` in
    `weight-dir`; prints the pairs and the chains it skipped, with the reason (a ReLU6's fixed bound), to stderr.
    """

    argument: ClassVar[str] = "top-weight-equalization"
    weight_dir: str = option(".", "folder of the module's weight file; the new one is written there")

    def run(self, module: ir.Operation) -> None:
        graph = read_graph(module, self.weight_dir)
        run_weight_equalization(graph, sys.stderr)
        write_graph(module, graph, self.weight_dir, "we")
