"""What the rewrite passes (top-smoothquant, top-softmax-correction, top-weight-equalization, top-bias-correction)
share: the module as a Graph with its weights, a Dataset from the pass options, and the rewritten graph put back
with its new weight file."""
from __future__ import annotations

import os

import numpy as np
from mlir import ir

from tpu_cal.dataset import Dataset
from tpu_cal.fileio import read_npz, write_npz
from tpu_cal.graph import Graph
from tpu_cal.preprocess import Preprocess

from .assign_precision import ModuleView
from .registry import PassError
from .top_to_tpu import lowered_weight_file, replace_func


def read_graph(module: ir.Operation, weight_dir: str) -> Graph:
    with module.context:
        graph = Graph.from_module(ModuleView(module))
    if graph.attrs.get("state") == "lowered" or any(n.op.startswith("tpu.") for n in graph.nodes):
        raise PassError("the module is lowered to the tpu dialect; rewrites work on the float (top) module")
    wf = graph.attrs.get("weight_file")
    if wf:
        graph.weights = read_npz(os.path.join(weight_dir, wf), "weight file")
    elif any(n.op == "top.weight" for n in graph.nodes):
        raise PassError("the module has weights but no top.weight_file attribute")
    return graph


def dataset(graph: Graph, folder: str, data_list: str) -> Dataset:
    nodes = graph.node_map()
    return Dataset([nodes[n] for n in graph.inputs], Preprocess.from_attrs(graph.attrs.get("preprocess")),
                   folder or None, data_list or None)


def write_graph(module: ir.Operation, graph: Graph, weight_dir: str, tag: str) -> None:
    """Puts the rewritten function into the module; its weights go to `<stem>_<tag>_weights.npz` in weight_dir
    (the old weight file is left as it is, so the original module still runs)."""
    used = {n.attrs["name"] for n in graph.nodes if n.op == "top.weight"}
    new_wf = None
    if used:
        new_wf = lowered_weight_file(graph.attrs.get("weight_file"), tag, str(graph.attrs.get("name", "module")))
        graph.attrs["weight_file"] = new_wf
    try:
        replace_func(module, graph.to_mlir())
    except ir.MLIRError as e:       # a bug, not a user error: say what did not verify
        raise PassError(f"the rewritten function does not parse: {e}") from None
    if new_wf:
        write_npz(os.path.join(weight_dir, new_wf),
                  {k: np.asarray(graph.weights[k], order="C") for k in sorted(used)})
