"""Graph editing and statistics shared by the rewrites (smoothquant, softmax correction, weight equalization, bias
correction): private copies of weights, inserted nodes, per-channel abs-max of activations over samples."""
from __future__ import annotations

import numpy as np

from ..calibration import run_batches
from ..dataset import Dataset
from ..graph import Graph, Node, unique_name as graph_unique
from ..interp.core import Interpreter, Listener


def unique_name(graph: Graph, base: str, taken: set | None = None) -> str:
    """A name not among `taken` (default: the graph's op names)."""
    return graph_unique(base, taken if taken is not None else {n.name for n in graph.nodes})


def weight_of(graph: Graph, nodes: dict, name: str | None) -> np.ndarray | None:
    """The float array of a `top.weight` node, or None when `name` is absent or not a float weight."""
    if name is None:
        return None
    n = nodes[name]
    if n.op != "top.weight":
        return None
    a = graph.weights[n.attrs["name"]]
    return a if np.issubdtype(a.dtype, np.floating) else None


def set_weight(graph: Graph, consumer: Node, index: int, array: np.ndarray, tag: str) -> None:
    """Gives `consumer.inputs[index]` (a top.weight) the new value `array` under a new key `<key>_<tag>`.

    A weight node read by other ops too is copied first, so only this consumer sees the new value; the old array
    stays in `graph.weights` for those (save_graph writes only the arrays still referenced)."""
    nodes = graph.node_map()
    w = nodes[consumer.inputs[index]]
    key = unique_name(graph, f"{w.attrs['name']}_{tag}", set(graph.weights))
    graph.weights[key] = np.array(array, dtype=np.float32, order="C")
    shared = sum(i == w.name for n in graph.nodes for i in n.inputs) > 1
    if shared:
        new = Node("top.weight", unique_name(graph, f"{w.name}_{tag}"), [], {"name": key}, tuple(array.shape),
                   "float32")
        graph.nodes.insert(graph.nodes.index(consumer), new)
        consumer.inputs[index] = new.name
    else:
        w.attrs["name"] = key
        w.shape = tuple(array.shape)


def add_weight(graph: Graph, base: str, array: np.ndarray, before: Node) -> str:
    """A new top.weight node holding `array`, placed before `before`; returns its name."""
    key = unique_name(graph, base, set(graph.weights))
    graph.weights[key] = np.array(array, dtype=np.float32, order="C")
    node = Node("top.weight", unique_name(graph, base), [], {"name": key}, tuple(array.shape), "float32")
    graph.nodes.insert(graph.nodes.index(before), node)
    return node.name


def insert_after(graph: Graph, after: Node, node: Node) -> None:
    graph.nodes.insert(graph.nodes.index(after) + 1, node)


def redirect(graph: Graph, old: str, new: str, users: list[Node]) -> None:
    """Makes `users` read `new` wherever they read `old`."""
    for u in users:
        u.inputs = [new if i == old else i for i in u.inputs]


class ChannelAbsMax(Listener):
    """Running per-channel abs-max of chosen tensors: name -> channel axis; the other axes are reduced."""

    def __init__(self, axes: dict[str, int]):
        self.axes = axes
        self.absmax: dict[str, np.ndarray] = {}

    def after_op(self, node: Node, inputs: list, output):
        ax = self.axes.get(node.name)
        if ax is None:
            return None
        a = np.abs(np.moveaxis(np.asarray(output, np.float32), ax, 0)).reshape(output.shape[ax], -1).max(axis=1)
        old = self.absmax.get(node.name)
        self.absmax[node.name] = a if old is None else np.maximum(old, a)
        return None


def channel_absmax(graph: Graph, axes: dict[str, int], ds: Dataset, n: int, batch_size: int, desc: str,
                   what: str = "--input_num"):
    """Per-channel abs-max of the tensors in `axes` over the first `n` samples of `ds` (0: all)."""
    col = ChannelAbsMax(axes)
    if not axes:
        return {}
    samples = ds.take(n, what)
    run_batches(Interpreter(graph, [col]), ds, samples, batch_size, desc)
    return col.absmax
