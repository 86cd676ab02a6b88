"""Pattern-match, shape ops, part_quantize / part_asymmetric (inside `tpu-cal calibrate`) and `tpu-cal fp-forward`.

The expected op sets come from how each graph is built, not from the matcher's rules: on the YOLOv8-style
detector the box decoding is every op computed from the DFL distances (the forward cone of the DFL output minus
its two slices); on the YOLOv5-style one it is every op computed from each head's sigmoid except the slices;
ViT and MiniLM ops are named from the torch modules' layout. fp-forward is checked on a hand-made graph where
every answer is written out. The tables produced are fed to `tpu-cal lower --quantize_table` end to end.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from tpu_cal import ir
from tpu_cal.formats.cali_table import read_cali_table
from tpu_cal.formats.qtable import read_qtable
from tpu_cal.graph import Graph, Node
from tpu_cal.search import part_quantize as pq
from tpu_cal.search import patterns
from tpu_cal.search.fp_forward import descendants, fp_layers
from clitools import assert_clean_error, run_cli


def _torch():
    return pytest.importorskip("torch", reason="torch builds the YOLO-style detectors and the ViT")


def _yolo(version: str, d):
    """The test_real_cnn YOLO-style detector exported with torchscript and imported (graph, mlir path)."""
    import test_real_cnn as cnn
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    torch = _torch()
    torch.manual_seed(0)
    model = cnn._make_yolov8(torch) if version == "v8" else cnn._make_yolov5(torch)
    cnn._randomize_bn(torch, model, 1)
    path = str(d / f"yolo{version}.onnx")
    cnn._export(torch, model, path, 160, "torchscript")
    g = import_onnx(path, ImportOptions(input_shapes=[(1, 3, 160, 160)]), model_name=f"yolo{version}")
    mlir = str(d / f"yolo{version}.mlir")
    ir.save_graph(g, mlir)
    return ir.load_graph(mlir), mlir


@pytest.fixture(scope="module")
def yolo8(tmp_path_factory):
    return _yolo("v8", tmp_path_factory.mktemp("yolo8"))


@pytest.fixture(scope="module")
def yolo5(tmp_path_factory):
    return _yolo("v5", tmp_path_factory.mktemp("yolo5"))


def _ops(g, op):
    return [n.name for n in g.nodes if n.op == f"top.{op}"]


# ---------------------------------------------------------------------------------------------------- YOLO
def test_yolov8_decoding_is_float(yolo8):
    g, _ = yolo8
    nodes = g.node_map()
    dfl_out = "/detect/dfl/Reshape_1_output_0_Reshape"
    slices = [n.name for n in g.nodes if n.inputs[:1] == [dfl_out]]
    assert len(slices) == 2 and all(nodes[s].op == "top.slice" for s in slices)
    expected = descendants(g, [dfl_out]) - {dfl_out, *slices}
    r = patterns.match(g)
    assert r is not None and (r.family, r.kind, r.blocks) == ("yolov6_8_9_11_12", "yolo", 1)
    assert set(r.float_ops) == expected and len(expected) == 8
    assert sorted(nodes[n].op for n in r.float_ops) == sorted(
        ["top.sub", "top.add", "top.add", "top.div", "top.sub", "top.concat", "top.mul", "top.concat"])
    assert g.outputs[0] in r.float_ops
    assert patterns.sppf_blocks(patterns.View(g)) == ["/b9/Concat_output_0_Concat"]


def test_yolov5_decoding_is_float_per_head(yolo5):
    g, _ = yolo5
    nodes = g.node_map()
    heads = [n for n in _ops(g, "sigmoid") if n.startswith("/detect/Sigmoid")]
    assert len(heads) == 3
    expected = set()
    for s in heads:
        expected |= {d for d in descendants(g, [s]) if nodes[d].op != "top.slice"} - {s}
    r = patterns.match(g)
    assert r is not None and (r.family, r.blocks) == ("yolov5", 3)
    assert set(r.float_ops) == expected
    # per head: 2*mul + add + mul (xy), mul + pow + mul (wh), concat, reshape; and the final concat
    assert len(expected) == 3 * 8 + 1 and [nodes[n].op for n in r.float_ops].count("top.pow") == 3


def test_not_yolo_without_sppf_and_decoding(yolo8):
    g, _ = yolo8
    # cut the graph before the detection head: only the backbone (SPPF is there, the decoding is not)
    cut = "/b9/cv2/act/Mul_output_0_Mul"
    keep = {n.name for n in g.nodes if n.name in _ancestors(g, cut)}
    sub = Graph("cut", g.inputs, [cut], [n for n in g.nodes if n.name in keep], g.weights)
    assert patterns.match(sub) is None


def _ancestors(g, name):
    from tpu_cal.search.fp_forward import ancestors
    return ancestors(g, [name]) | {n.name for n in g.nodes if n.op == "top.weight"}


# ------------------------------------------------------------------------------------------- transformers
def test_vit_pattern():
    torch = _torch()
    import test_real_minilm as tm
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    _, vit = tm._vit(False)
    import tempfile
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = os.path.join(d, "vit.onnx")
        torch.onnx.export(vit, (torch.randn(1, 3, 32, 32),), path, input_names=["image"],
                          output_names=["tokens", "logits"], opset_version=17, dynamo=False)
        g = import_onnx(path, ImportOptions())
    r = patterns.match(g)
    assert r is not None and (r.family, r.kind, r.blocks) == ("vit", "transformer", 2)
    b = [f"/blocks/blocks.{i}" for i in range(2)]
    expected = {"/Add_output_0_Add"}                  # cls/patch tokens + position embedding, into block 0's LN
    for p in b:
        expected |= {f"{p}/MatMul_1_output_0_MatMul",  # attn @ V: the matmul after the softmax
                     f"{p}/act/Mul_5_output_0_Gelu",   # GELU
                     f"{p}/Add_output_0_Add", f"{p}/Add_1_output_0_Add"}   # residual sums into a LayerNorm
    assert set(r.float_ops) == expected


@pytest.fixture(scope="module")
def minilm_graph():
    from tpu_cal.frontend.onnx_import import import_onnx
    from tpu_cal.zoo import ModelUnavailable
    from tpu_cal.zoo import minilm as zoo
    try:
        return import_onnx(zoo.minilm_onnx())
    except ModelUnavailable as e:
        pytest.skip(str(e))


def test_minilm_is_bert(minilm_graph):
    g = minilm_graph
    r = patterns.match(g)
    assert r is not None and (r.family, r.blocks) == ("bert", 6)
    L = [f"/m/encoder/layer.{i}" for i in range(6)]
    expected = {"/m/embeddings/Add_1_output_0_Add"}           # word + type + position embeddings, into the LN
    for p in L:
        expected |= {f"{p}/intermediate/intermediate_act_fn/Mul_1_output_0_Gelu",
                     f"{p}/output/dense/Add_output_0_Add",          # the matmul after GELU
                     f"{p}/attention/output/Add_output_0_Add",      # residual sums into a LayerNorm
                     f"{p}/output/Add_output_0_Add"}
    assert set(r.float_ops) == expected
    nodes = g.node_map()
    assert sum(nodes[n].op == "top.matmul" for n in expected) == 6


# --------------------------------------------------------------------------------- small hand-made graphs
def _graph(spec, outputs, name="toy"):
    """spec: (name, op, inputs, dtype) in order; every tensor is (1, 4); weights are (1, 4) ones."""
    nodes = [Node("top.input", "x", [], {}, (1, 4), "float32")]
    weights = {}
    for nm, op, ins, dtype in spec:
        if op == "weight":
            nodes.append(Node("top.weight", nm, [], {"name": nm}, (1, 4), "float32"))
            weights[nm] = np.ones((1, 4), np.float32)
        else:
            nodes.append(Node(f"top.{op}", nm, list(ins), {}, (1, 4), dtype))
    return Graph(name, ["x"], outputs, nodes, weights, {"name": name, "state": "f32"})


def toy():
    #   x -> a(relu) -> b(sigmoid) -> d(add) -> e(relu) -> out
    #              \-> c(tanh) ----/
    #   a -> f(floor) -> i(cast to int64): an index-only branch, which is also an output
    return _graph([("a", "relu", ["x"], "float32"), ("b", "sigmoid", ["a"], "float32"),
                   ("c", "tanh", ["a"], "float32"), ("d", "add", ["b", "c"], "float32"),
                   ("e", "relu", ["d"], "float32"), ("f", "floor", ["a"], "float32"),
                   ("i", "cast", ["f"], "int64")], ["e", "i"])


def test_fp_layers_known_answers():
    g = toy()
    assert fp_layers(g, inputs=["b"])[0] == ["a", "b"]
    assert fp_layers(g, outputs=["c"])[0] == ["c", "d", "e"]
    assert fp_layers(g, outputs=["a"])[0] == ["a", "b", "c", "d", "e", "f"]      # not the integer cast
    assert fp_layers(g, blocks=[(["a"], ["d"])])[0] == ["a", "b", "c", "d"]
    assert fp_layers(g, blocks=[(["b"], ["e"])])[0] == ["b", "d", "e"]
    assert fp_layers(g, inputs=["b"], outputs=["e"], blocks=[(["c"], ["d"])])[0] == ["a", "b", "c", "d", "e"]
    sel, rows = fp_layers(g, blocks=[(["b", "c"], ["d"])])
    assert sel == ["b", "c", "d"] and rows == [["block", "b,c:d", 3]]


def test_fp_layers_errors():
    from tpu_cal.errors import UserError
    g = toy()
    with pytest.raises(UserError, match=r"'bb' \(closest: b\)"):
        fp_layers(g, outputs=["bb"])
    with pytest.raises(UserError, match="empty block"):
        fp_layers(g, blocks=[(["b"], ["c"])])
    with pytest.raises(UserError, match="empty block"):
        fp_layers(g, blocks=[(["e"], ["a"])])                   # reversed


def test_shape_ops_and_part_modes():
    g = toy()
    assert patterns.shape_ops(g) == ["f"]                       # feeds only the integer cast
    assert pq.float_ops_part(g, "H_mode") == ["a", "b", "c", "d", "e", "f"]
    assert pq.float_ops_part(g, "N_mode") == ["c", "f"]          # relu, sigmoid, add are quantized
    assert pq.float_ops_part(g, "custom_mode", ["Tanh", "top.Floor"]) == ["a", "b", "d", "e"]
    from tpu_cal.errors import UserError
    with pytest.raises(UserError, match=r"'Tanhh'"):
        pq.float_ops_part(g, "custom_mode", ["Tanhh"])
    with pytest.raises(UserError, match="needs --custom_operator"):
        pq.float_ops_part(g, "custom_mode", [])


def test_asymmetric_ops_only_before_conv_or_matmul(yolo8):
    g, _ = yolo8
    v = patterns.View(g)
    asym = pq.asymmetric_ops(g)
    silu = [m for m in _ops(g, "mul") if any(v.op(i) == "sigmoid" and g.node_map()[i].inputs[0] in
                                              g.node_map()[m].inputs for i in g.node_map()[m].inputs)]
    expected = [m for m in silu if all(u.op == "top.conv" for u in g.users()[m])]
    assert asym == expected and 0 < len(asym) < len(silu)


# ------------------------------------------------------------------------------------------ command lines
@pytest.fixture(scope="module")
def yolo8_run(yolo8, tmp_path_factory):
    """calibrate with --part_asymmetric on two real photos: cali table with #asym_op and the pattern qtable."""
    import test_real_cnn as cnn
    g, mlir = yolo8
    d = tmp_path_factory.mktemp("yolo8_run")
    os.makedirs(d / "data")
    for k, x in enumerate(cnn._images(160)):
        np.save(d / "data" / f"s{k}.npy", x[None])
    rc, out, err = run_cli("calibrate", mlir, "--dataset", d / "data", "--tune_num", "0", "--part_asymmetric",
                           "-o", d / "yolo8.cali")
    assert rc == 0, err
    return g, mlir, d, out


def test_calibrate_writes_pattern_qtable_and_asym(yolo8_run):
    g, mlir, d, out = yolo8_run
    assert "The [yolov6_8_9_11_12] post-processing pattern matches this model. Block count: 1" in out
    q = read_qtable(str(d / "qtable"))
    r = patterns.match(g)
    assert list(q.modes) == r.float_ops and set(q.modes.values()) == {"F16"}       # auto on bm1684x
    cali = read_cali_table(str(d / "yolo8.cali"))
    assert cali.asym == pq.asymmetric_ops(g)
    assert not os.path.exists(d / "yolo8_shape_ops")           # no shape computation in this model
    # the tables drive the lowering: the decoding in f16, the SiLU outputs asymmetric
    rc, _, err = run_cli("lower", mlir, "--quantize", "INT8", "--processor", "bm1684x", "--calibration_table",
                         d / "yolo8.cali", "--quantize_table", d / "qtable", "-o", d / "yolo8_mix.mlir")
    assert rc == 0, err
    low = ir.load_graph(str(d / "yolo8_mix.mlir")).node_map()
    for n in r.float_ops:
        assert low[n].extra["precision"] == "F16", n
        assert "f16" in low[n].type_text, low[n].type_text
    for n in cali.asym:
        assert low[n].qtype is not None and low[n].qtype.zero_point != 0, n


def test_fp_forward_cli_and_lower(yolo8_run):
    g, mlir, d, _ = yolo8_run
    last = ["/detect/cv2.0/cv2.0.2/Conv_output_0_Conv", "/detect/cv3.0/cv3.0.2/Conv_output_0_Conv"]
    rc, out, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "--fpfwd_outputs", ",".join(last),
                           "--fp_type", "F32", "-o", d / "fp_qtable")
    assert rc == 0, err
    q = read_qtable(str(d / "fp_qtable"))
    nodes = g.node_map()
    expected = [n for n in g.nodes if n.name in descendants(g, last) and n.dtype == "float32"
                and n.op != "top.input"]
    assert list(q.modes) == [n.name for n in expected] and set(q.modes.values()) == {"F32"}
    assert "fp_forward selection" in out
    head = open(d / "fp_qtable").read().splitlines()
    assert head[1:4] == ["# chip: bm1684x  mix_mode: F32", f"# number of F32 layer: {len(q.modes)}",
                         f"# quantize: INT8  fp_forward of yolov8.mlir"] and "###" in head
    rc, _, err = run_cli("lower", mlir, "--quantize", "INT8", "--processor", "bm1684x", "--calibration_table",
                         d / "yolo8.cali", "--quantize_table", d / "fp_qtable", "-o", d / "yolo8_fp.mlir")
    assert rc == 0, err
    low = ir.load_graph(str(d / "yolo8_fp.mlir")).node_map()
    assert all(low[n].extra["precision"] == "F32" for n in q.modes)
    assert low["/detect/cv2.1/cv2.1.2/Conv_output_0_Conv"].extra["precision"] == "INT8"
    rc, _, err = run_cli("fp-forward", d / "yolo8_fp.mlir", "--processor", "bm1684x", "--fpfwd_outputs", last[0],
                         "-o", d / "never")
    assert_clean_error(rc, err, "lowered (tpu) module")
    assert not os.path.exists(d / "never")
    assert nodes[last[0]].op == "top.conv"
    # blocks: space-separated words, as TPU-MLIR's nargs
    a, b = "/detect/dfl/Softmax_output_0_Softmax", "/detect/dfl/Reshape_1_output_0_Reshape"
    rc, _, err = run_cli("fp-forward", mlir, "--chip", "cv183x", "--fpfwd_blocks", f"{a}:{b}", f"{last[0]}:{last[0]}",
                         "-o", d / "blk")
    assert rc == 0, err
    q = read_qtable(str(d / "blk"))
    assert list(q.modes) == [last[0], a, "/detect/dfl/conv/Conv_output_0_Conv", b]
    assert set(q.modes.values()) == {"BF16"}


def test_fp_forward_bad_input(yolo8, tmp_path):
    _, mlir = yolo8
    out = tmp_path / "q"
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "--fpfwd_outputs", "/detect/Sub_output_0_Su",
                         "-o", out)
    assert_clean_error(rc, err, "--fpfwd_outputs", "'/detect/Sub_output_0_Su'", "closest: /detect/Sub_output_0_Sub")
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "-o", out)
    assert_clean_error(rc, err, "nothing to select")
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "--fpfwd_blocks",
                         "output0_Concat:/detect/Sub_output_0_Sub", "-o", out)
    assert_clean_error(rc, err, "empty block")
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "--fpfwd_blocks", "a-b", "-o", out)
    assert_clean_error(rc, err, "'a-b' is not 'start:end'")
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684x", "--fpfwd_inputs", "a,,b", "-o", out)
    assert_clean_error(rc, err, "--fpfwd_inputs", "empty name")
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "bm1684", "--fp_type", "BF16", "--fpfwd_inputs",
                         "output0_Concat", "-o", out)
    assert_clean_error(rc, err, "bm1684 cannot compute BF16")
    assert not os.listdir(tmp_path)
    # F16 on cv18xx maps to BF16, as a qtable's F16 entry does there
    rc, _, err = run_cli("fp-forward", mlir, "--processor", "cv183x", "--fp_type", "F16", "--fpfwd_inputs",
                         "output0_Concat", "-o", out)
    assert rc == 0, err
    modes = {ln.split()[1] for ln in open(out) if ln.strip() and not ln.startswith("#")}
    assert modes == {"BF16"}, modes


def test_calibrate_part_quantize_shape_ops_and_bad_input(tmp_path):
    """A toy module through calibrate: H_mode's qtable and the shape-op table; bad flags fail before the run."""
    g = toy()
    g.nodes[-1] = Node("top.cast", "i", ["f"], {}, (1, 4), "int64")
    mlir = str(tmp_path / "toy.mlir")
    ir.save_graph(g, mlir)
    os.makedirs(tmp_path / "data")
    for k in range(3):
        np.save(tmp_path / "data" / f"s{k}.npy", np.random.default_rng(k).standard_normal((1, 4)).astype(np.float32))
    rc, out, err = run_cli("calibrate", mlir, "--dataset", tmp_path / "data", "--tune_num", "0", "--part_quantize",
                           "N_mode", "--processor", "bm1684", "-o", tmp_path / "toy.cali")
    assert rc == 0, err
    q = read_qtable(str(tmp_path / "qtable"))
    assert q.modes == {"c": "F32", "f": "F32"}
    s = read_qtable(str(tmp_path / "toy_shape_ops"))
    assert s.modes == {"f": "F32"}
    rc, _, err = run_cli("lower", mlir, "--quantize", "INT8", "--processor", "bm1684", "--calibration_table",
                         tmp_path / "toy.cali", "--quantize_table", tmp_path / "qtable", "-o", tmp_path / "low.mlir")
    assert rc == 0, err
    os.makedirs(tmp_path / "bad")
    for args, needles in [(["--part_quantize", "custom_mode"], ["needs --custom_operator"]),
                          (["--part_quantize", "custom_mode", "--custom_operator", "Conv,Foo"], ["'Foo'"]),
                          (["--custom_operator", "Conv"], ["custom_mode"]),
                          (["--part_asymmetric", "--processor", "bm1684"], ["no asymmetric int8"]),
                          (["--fp_type", "BF16", "--processor", "bm1684"], ["bm1684 cannot compute BF16"])]:
        rc, _, err = run_cli("calibrate", mlir, "--dataset", tmp_path / "data", "-o", tmp_path / "bad" / "t", *args)
        assert_clean_error(rc, err, *needles)
    assert not os.listdir(tmp_path / "bad")


def test_plan_tables_leaves_search_qtable_alone(yolo8, tmp_path):
    from types import SimpleNamespace
    g, _ = yolo8
    plain = patterns.plan_tables(g, SimpleNamespace(output=str(tmp_path / "t")))
    assert len(plain.float_ops) == 8 and plain.mode == "F16" and plain.qtable_path == str(tmp_path / "qtable")
    searched = patterns.plan_tables(g, SimpleNamespace(output=str(tmp_path / "t"), search="search_qtable",
                                                       fp_type="F32", part_quantize="H_mode"))
    assert searched.mode == "F32" and set(searched.float_ops) == set(pq.float_ops_part(g, "H_mode"))
    assert plain.notes == ["pattern: yolov6_8_9_11_12 (1 block(s))"] and searched.notes == ["part_quantize H_mode"]
