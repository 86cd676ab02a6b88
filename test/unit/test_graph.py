"""Graph <-> MLIR text: every attribute kind, odd names and extra attributes survive a round trip."""
import math

import numpy as np
import pytest

from tpu_cal import ir
from tpu_cal.errors import UserError
from tpu_cal.graph import Graph, Node


def _graph():
    nodes = [
        Node("top.input", "in/put:0", [], {}, (1, 4), "float32"),
        Node("top.weight", 'w"q', [], {"name": 'w"q'}, (4,), "float32"),
        Node("top.add", "a_Add", ["in/put:0", 'w"q'], {}, (1, 4), "float32",
             extra={"calibration.threshold": 1.5e-7, "odd.inf": math.inf, "flag": True, "tag": "x\\y",
                    "vals": [1, -2, 3], "fvals": [0.5, -1e30], "nested": {"a": 1, "b": "c"}}),
        Node("top.clip", "c_Clip", ["a_Add"], {"min": -math.inf, "max": 6.0}, (1, 4), "float32"),
        Node("top.concat", "cat", ["c_Clip", "a_Add", "c_Clip"], {"axis": 1}, (1, 12), "float32"),
        Node("top.matmul", "mm", ["cat", "cat_t", None], {}, (1, 1), "float32"),
    ]
    nodes.insert(5, Node("top.permute", "cat_t", ["cat"], {"order": [1, 0]}, (12, 1), "float32"))
    nodes.append(Node("top.layer_norm", "ln", ["mm", None, None], {"axis": 1, "eps": 1e-5}, (1, 1), "float32"))
    return Graph("g", ["in/put:0"], ["ln"], nodes, {'w"q': np.ones(4, np.float32)},
                 {"state": "f32", "preprocess": {"mean": [1.0, 2.0], "pixel_format": "rgb"}})


def test_round_trip_keeps_everything(tmp_path):
    g = _graph()
    ir.save_graph(g, str(tmp_path / "m.mlir"))
    back = ir.load_graph(str(tmp_path / "m.mlir"))
    assert back.inputs == g.inputs and back.outputs == g.outputs
    assert [n.name for n in back.nodes] == [n.name for n in g.nodes]
    for a, b in zip(g.nodes, back.nodes):
        assert (a.op, a.inputs, a.shape, a.dtype) == (b.op, b.inputs, b.shape, b.dtype), a.name
        assert a.attrs == b.attrs, a.name
        assert a.extra == b.extra, a.name
    assert back.attrs["preprocess"] == g.attrs["preprocess"]
    np.testing.assert_array_equal(back.weights['w"q'], g.weights['w"q'])


def test_invalid_text_is_a_user_error_with_a_location():
    g = _graph()
    text = g.to_mlir().replace("{axis = 1 : i64", "{axis = 1.0 : f64", 1)
    # the op is named by its location; IRDL says which attribute kind it expected
    with pytest.raises(UserError, match=r"bad\.mlir: invalid module: \"cat\": expected base attribute 'builtin\.integer'"):
        ir.parse(text, ir.context(), "bad.mlir")


def test_missing_weight_is_named(tmp_path):
    g = _graph()
    ir.save_graph(g, str(tmp_path / "m.mlir"))
    np.savez(tmp_path / "m_weights.npz", other=np.zeros(1))
    with pytest.raises(UserError, match="weight 'w\"q'.*missing"):
        ir.load_graph(str(tmp_path / "m.mlir"))
