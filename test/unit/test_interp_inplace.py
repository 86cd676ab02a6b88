"""Ops run in place (interp.core, `impl_inplace`: relu, clip) only where nothing else can see the operand, and give
the ordinary kernels' bits."""
from __future__ import annotations

import numpy as np

from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter, Listener
from tpu_cal.stats import StatsCollector

S = (2, 3, 4)


class Quiet(Listener):
    """Reads no operand after an op (in place allowed); records which ops returned their operand's buffer."""
    after_op_reads_inputs = False

    def __init__(self):
        self.inplace = []

    def before_op(self, node, inputs):
        self._first = inputs[0].__array_interface__["data"][0] if inputs and isinstance(inputs[0], np.ndarray) \
            else None

    def after_op(self, node, inputs, output):
        if node.op in ("top.relu", "top.clip") and output.__array_interface__["data"][0] == self._first:
            self.inplace.append(node.name)


class Hoarder(Quiet):
    """Keeps every output it sees (a reference the interpreter must respect)."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def after_op(self, node, inputs, output):
        super().after_op(node, inputs, output)
        self.seen[node.name] = output


def _graph(nodes, outputs):
    w = np.linspace(-3, 3, int(np.prod(S[1:])), dtype=np.float32).reshape(S[1:])
    base = [Node("top.input", "x", [], {}, S), Node("top.weight", "w", [], {"name": "w"}, S[1:])]
    return Graph("g", ["x"], outputs, base + nodes, {"w": w})


def _add(name, a, b):
    return Node("top.add", name, [a, b], {}, S)


def _clip(name, a, lo=0.0, hi=1.5):
    return Node("top.clip", name, [a], {"min": lo, "max": hi}, S)


def _relu(name, a):
    return Node("top.relu", name, [a], {}, S)


def _feed():
    x = np.random.default_rng(0).standard_normal(S).astype(np.float32) * 2
    x[0, 0, :2] = [np.nan, -0.0]
    return x


def _bits(d):
    return {k: v.view(np.uint32).copy() for k, v in d.items()}


def test_in_place_same_bits_and_only_when_safe():
    g = _graph([_add("a", "x", "w"), _relu("r", "a"), _clip("c", "r"), _add("o", "c", "w")], ["o"])
    x = _feed()
    x0 = x.copy()
    ref = _bits(Interpreter(g).run({"x": x}, keep=["a", "r", "c"]))       # keep: never in place
    q = Quiet()
    got = Interpreter(g, [q]).run({"x": x})
    assert q.inplace == ["r", "c"]
    np.testing.assert_array_equal(got["o"].view(np.uint32), ref["o"])
    np.testing.assert_array_equal(x.view(np.uint32), x0.view(np.uint32))   # the caller's array is untouched
    # kept tensors are never written
    q = Quiet()
    got = _bits(Interpreter(g, [q]).run({"x": x}, keep=["a"]))
    assert q.inplace == ["c"] and got["a"].tobytes() == ref["a"].tobytes()
    # a listener that reads operands after the op (the default) turns it off
    q = Quiet()
    Interpreter(g, [q, Listener()]).run({"x": x})
    assert q.inplace == []
    # a listener holding the outputs: nothing it holds changes
    h = Hoarder()
    Interpreter(g, [h]).run({"x": x})
    assert h.inplace == []
    for k in ("a", "r", "c"):
        np.testing.assert_array_equal(h.seen[k].view(np.uint32), ref[k])


def test_no_in_place_on_inputs_weights_shared_or_viewed_operands():
    x = _feed()
    x0 = x.copy()
    # the graph input and a weight directly
    g = _graph([_relu("r", "x"), _clip("c", "w"), _add("o", "r", "c")], ["o"])
    q = Quiet()
    Interpreter(g, [q]).run({"x": x})
    assert q.inplace == [] and np.array_equal(x.view(np.uint32), x0.view(np.uint32))
    assert g.weights["w"].min() == -3
    # an operand used again later, and a view (reshape) of a tensor that is still needed
    nodes = [_add("a", "x", "w"), _relu("r", "a"), _add("b", "r", "a"),
             Node("top.reshape", "v", ["b"], {}, S), _clip("c", "v"), _add("o", "c", "b")]
    g = _graph(nodes, ["o"])
    ref = Interpreter(g).run({"x": x})["o"]
    q = Quiet()
    got = Interpreter(g, [q]).run({"x": x})["o"]
    assert q.inplace == []
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    # the view's base dies with it: in place
    nodes = [_add("a", "x", "w"), Node("top.reshape", "v", ["a"], {}, S), _clip("c", "v"), _add("o", "c", "w")]
    g = _graph(nodes, ["o"])
    ref = Interpreter(g).run({"x": x})["o"]
    q = Quiet()
    got = Interpreter(g, [q]).run({"x": x})["o"]
    assert q.inplace == ["c"]
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_statistics_collector_allows_in_place_and_collects_the_same():
    """StatsCollector (after_op_reads_inputs = False): the pre-activation statistics are taken before the
    activation overwrites them."""
    g = _graph([_add("a", "x", "w"), _clip("c", "a"), _add("o", "c", "w")], ["o"])
    x = _feed()
    x[0, 0, 0] = 0.5                                    # finite: statistics reject NaN
    col, ref = StatsCollector(bins=64), StatsCollector(bins=64)
    q = Quiet()
    Interpreter(g, [col, q]).run({"x": x})
    Interpreter(g, [ref, Listener()]).run({"x": x})
    assert q.inplace == ["c"]
    for k in ref.stats:
        a, b = col.stats[k], ref.stats[k]
        np.testing.assert_array_equal(a.hist, b.hist)
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count)
