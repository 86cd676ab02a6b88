"""`tpu-cal transform` end to end: outputs, verification against ONNX Runtime, and every bad-input path
(one clear line, exit code 2, no traceback, no output file left behind)."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tpu_cal import ir
from tpu_cal.interp.core import Interpreter
from clitools import run_cli


def _model(path, op_types=("Add", "Relu"), dyn_batch=False):
    shape = ["N" if dyn_batch else 1, 3, 4, 4]
    x = h.make_tensor_value_info("x", T.FLOAT, shape)
    y = h.make_tensor_value_info("y", T.FLOAT, shape)
    w = nh.from_array(np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4), "w")
    nodes, prev = [], "x"
    for k, t in enumerate(op_types):
        out = "y" if k == len(op_types) - 1 else f"t{k}"
        ins = [prev, "w"] if t in ("Add", "Mul") else [prev]
        nodes.append(h.make_node(t, ins, [out], name=f"{t.lower()}{k}"))
        prev = out
    m = h.make_model(h.make_graph(nodes, "toy", [x], [y], [w]), opset_imports=[h.make_opsetid("", 17)])
    onnx.save(m, path)
    return path



def _assert_clean_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_transform_writes_module_weights_and_verifies(tmp_path):
    model = _model(str(tmp_path / "toy.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc, out, err = run_cli("transform", "--model_name", "toy", "--model_def", model, "--mlir",
                           str(tmp_path / "toy.mlir"), "--test_input", str(tmp_path / "in.npz"),
                           "--test_result", str(tmp_path / "res.npz"), "--mean", "1,2,3")
    assert rc == 0, err
    assert "float module vs ONNX Runtime" in out and "ok" in out
    text = (tmp_path / "toy.mlir").read_text()
    assert 'loc("t0_Add")' in text and 'loc("y_Relu")' in text and '"top.weight"' in text
    assert 'top.weight_file = "toy_weights.npz"' in text
    g = ir.load_graph(str(tmp_path / "toy.mlir"))
    assert g.attrs["preprocess"]["mean"] == [1.0, 2.0, 3.0]
    res = np.load(tmp_path / "res.npz")
    # the saved result is our interpreter's, and it equals the hand-computed relu(x + w)
    w = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    np.testing.assert_allclose(res["y_Relu"], np.maximum(x + w, 0), rtol=1e-6)
    np.testing.assert_allclose(Interpreter(g).run({"x": x})["y_Relu"], np.maximum(x + w, 0), rtol=1e-6)


def test_dynamic_batch_takes_shapes_from_test_input(tmp_path):
    model = _model(str(tmp_path / "toy.onnx"), dyn_batch=True)
    np.save(tmp_path / "in.npy", np.ones((1, 3, 4, 4), np.float32))
    rc, out, err = run_cli("transform", "--model_name", "toy", "--model_def", model, "--mlir",
                           str(tmp_path / "toy.mlir"), "--test_input", str(tmp_path / "in.npy"))
    assert rc == 0, err
    assert "tensor<1x3x4x4xf32>" in (tmp_path / "toy.mlir").read_text()


@pytest.mark.parametrize("case", ["not_onnx", "truncated", "missing", "bad_shape", "rank", "bad_flag_value",
                                  "unknown_choice", "unsupported", "npz_key", "unwritable"])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, case):
    model = _model(str(tmp_path / "toy.onnx"))
    mlir = tmp_path / "out.mlir"
    args = ["transform", "--model_name", "toy", "--model_def", model, "--mlir", str(mlir)]
    needles = []
    if case == "not_onnx":
        bad = tmp_path / "x.onnx"
        bad.write_text("this is not a protobuf\n" * 10)
        args[4] = str(bad)
        needles = ["x.onnx", "ONNX"]
    elif case == "truncated":
        data = open(model, "rb").read()
        bad = tmp_path / "trunc.onnx"
        bad.write_bytes(data[: len(data) // 2])
        args[4] = str(bad)
        needles = ["trunc.onnx"]
    elif case == "missing":
        args[4] = str(tmp_path / "nope.onnx")
        needles = ["nope.onnx", "not found"]
    elif case == "bad_shape":
        args += ["--input_shapes", "[[1,3,8,8]]"]
        needles = ["'x'", "[1, 3, 8, 8]", "contradicts"]
    elif case == "rank":
        args += ["--input_shapes", "[[1,3,4]]"]
        needles = ["'x'", "rank 4"]
    elif case == "bad_flag_value":
        args += ["--input_shapes", "[[1,3,x]]"]
        needles = ["--input_shapes"]
    elif case == "unknown_choice":
        args += ["--pixel_format", "yuv"]
        needles = ["--pixel_format", "yuv"]
    elif case == "unsupported":
        args[4] = _model(str(tmp_path / "uns.onnx"), ("Add", "Celu", "Relu", "Celu", "Shrink"))
        needles = ["Celu (celu1, celu3)", "Shrink (shrink4)", "2 unsupported op type"]
    elif case == "npz_key":
        np.savez(tmp_path / "in.npz", images=np.zeros((1, 3, 4, 4), np.float32), other=np.zeros(3))
        args += ["--test_input", str(tmp_path / "in.npz")]
        needles = ["in.npz", "'x'"]
    elif case == "unwritable":
        mlir = tmp_path / "no_such_dir" / "out.mlir"
        args[6] = str(mlir)
        needles = ["no_such_dir"]
    rc, out, err = run_cli(*args)
    _assert_clean_error(rc, err, *needles)
    assert not mlir.exists()
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-") or f.endswith("_weights.npz")]
    assert leftovers == []
