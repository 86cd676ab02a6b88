"""bench/qdq_judge.py: our op names map onto ONNX tensors and the QDQ model ORT builds carries our thresholds."""
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import qdq_judge as J  # noqa: E402

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tiny_model(path: str) -> str:
    """x -> Conv -> conv_out -> Relu -> relu_out -> Conv -> out, plus Sigmoid(out) -> sig_out."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv_out"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="r1"),
             helper.make_node("Conv", ["relu_out", "w2"], ["out"], name="c2"),
             helper.make_node("Sigmoid", ["out"], ["sig_out"], name="s1")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("sig_out", TensorProto.FLOAT, ["n", 2, 8, 8])],
                          [w1, b1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


TABLE = {"x": 2.0, "conv_out_Conv": 3.0, "relu_out_Relu": 1.5, "out_Conv": 4.0, "sig_out_Sigmoid": 1.0}


def test_name_mapping(tmp_path):
    path = tiny_model(str(tmp_path / "tiny.onnx"))
    names = list(TABLE) + ["relu_out_LayerNorm", "nothing_here_Conv", "out_Relu"]
    m = J.map_names(path, names)
    assert m.tensors["x"] == "x"
    assert m.tensors["conv_out_Conv"] == "conv_out"
    assert m.tensors["out_Conv"] == "out"
    assert m.tensors["relu_out_LayerNorm"] == "relu_out" and m.fused == {"relu_out_LayerNorm": "relu_out",
                                                                          "out_Relu": "out"}
    assert m.unmatched == ["nothing_here_Conv"]


@pytest.mark.parametrize("exact", [False, True])
def test_qdq_carries_thresholds(tmp_path, exact):
    path = tiny_model(str(tmp_path / "tiny.onnx"))
    r = J.ranges_for(path, TABLE)
    assert not r.names.unmatched and not r.missing
    q = J.quantize_qdq(path, r.ranges, str(tmp_path / "q.onnx"), exact=exact, nodes_to_exclude=r.excluded)
    scales = J.activation_scales(q)
    expect = {"x": 2.0, "relu_out": 1.5, "out": 4.0,   # (ORT's QDQ leaves Sigmoid float)
              # ORT gives a single-consumer Relu's input the Relu output's range unless every range is forced
              "conv_out": 3.0 if exact else 1.5}
    for tensor, th in expect.items():
        assert abs(scales[tensor] - th / 127) <= 1e-6, (tensor, scales[tensor], th / 127)
    # the QDQ model runs and stays close to the float model
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)
    quality = J.compare(J.run_model(path, x, simulate=False), J.run_model(q, x))
    assert quality.min_cos > 0.99, quality


def test_qdq_from_cali_table_file(tmp_path):
    from tpu_cal.formats.cali_table import CaliTable, write_cali_table
    path = tiny_model(str(tmp_path / "tiny.onnx"))
    table = str(tmp_path / "t.cali")
    write_cali_table(table, CaliTable(thresholds={k: (v, -v, v) for k, v in TABLE.items()}))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    keep = str(tmp_path / "kept.onnx")
    quality, r = J.judge(path, table, x, keep=keep)
    assert len(r.names.tensors) == len(TABLE)
    assert abs(J.activation_scales(keep)["out"] - 4.0 / 127) <= 1e-6
    assert 0.99 < quality.mean_cos <= 1.0 + 1e-9 and quality.top1 >= 0.0


def test_unsigned_holds_non_negative_tensors_as_uint8(tmp_path):
    """unsigned=True (TPU-MLIR's symmetric rule): a tensor whose table min is >= 0 gets a uint8 QuantizeLinear
    with scale th / 255 and zero point 0; the others stay int8 at th / 127. Anchors' ranges the same way."""
    path = tiny_model(str(tmp_path / "tiny.onnx"))
    lines = {k: (v, -v, v) for k, v in TABLE.items()}
    lines["relu_out_Relu"] = (1.5, 0.0, 1.5)          # the ReLU's output: non-negative
    r = J.ranges_for(path, lines)
    assert r.nonnegative == {"relu_out"}
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    keep = str(tmp_path / "u.onnx")
    quality, _ = J.judge(path, lines, x, keep=keep, unsigned=True)
    m = onnx.load(keep)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = {n.input[0]: (float(inits[n.input[1]]), inits[n.input[2]]) for n in m.graph.node if n.op_type == "QuantizeLinear"
         and n.input[0] in ("relu_out", "out", "conv_out")}
    assert abs(q["relu_out"][0] - 1.5 / 255) <= 1e-7 and q["relu_out"][1].dtype == np.uint8 and q["relu_out"][1] == 0
    # the conv's output, which the ReLU alone reads, is held like the ReLU's (TPU-MLIR's fused conv + ReLU)
    assert abs(q["conv_out"][0] - 1.5 / 255) <= 1e-7 and q["conv_out"][1].dtype == np.uint8
    assert abs(q["out"][0] - 4.0 / 127) <= 1e-7 and q["out"][1].dtype == np.int8
    assert quality.min_cos > 0.99
    # bare thresholds say nothing about the sign: nothing is unsigned
    assert J.ranges_for(path, TABLE).nonnegative == set()
    ranges = {"x": (-2.0, 2.0), "relu_out": (0.0, 1.5), "out": (-4.0, 4.0), "conv_out": (-3.0, 3.0),
              "sig_out": (0.0, 1.0)}
    ref = J.run_model(path, x, simulate=False)
    signed, uns = J.judge_ranges(path, ranges, x, ref), J.judge_ranges(path, ranges, x, ref, unsigned={"relu_out"})
    assert uns.mean_cos >= signed.mean_cos - 1e-4      # a finer grid on [0, 1.5] loses nothing
