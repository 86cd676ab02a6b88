"""`tpu-cal transform`: ONNX -> top dialect module + weights, verified against ONNX Runtime (model_transform)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from . import ir, metrics
from .cli import float_list, int_list, name_list, option, shape_list
from .errors import UserError
from .fileio import write_npz
from .frontend.onnx_import import ImportOptions, import_onnx
from .interp.core import Interpreter
from .preprocess import CHANNEL_FORMATS, PIXEL_FORMATS, Preprocess, load_inputs
from .report import table


@dataclass
class TransformOptions:
    model_name: str = option(required=True, help="model name (recorded in the module)")
    model_def: str = option(required=True, help="the float ONNX model")
    mlir: str = option(required=True, help="output top-dialect module; weights go to <stem>_weights.npz beside it")
    input_shapes: list = option(None, parse=shape_list, help="input shapes, e.g. [[1,3,224,224]] (default: the "
                                                             "model's, dynamic batch = 1)")
    resize_dims: list = option(None, parse=int_list, help="h,w the image is resized to before the centre crop "
                                                          "(default: the input size)")
    keep_aspect_ratio: bool = option(False, help="resize keeping the aspect ratio, padding the rest")
    pad_value: int = option(0, help="pad value with --keep_aspect_ratio")
    pad_type: str = option("center", choices=("center", "normal"), help="where the image sits when padded")
    mean: list = option(None, parse=float_list, help="per-channel mean, default 0,0,0")
    scale: list = option(None, parse=float_list, help="per-channel scale, default 1,1,1")
    pixel_format: str = option("bgr", choices=PIXEL_FORMATS, help="pixel format the model expects")
    channel_format: str = option("nchw", choices=CHANNEL_FORMATS, help="layout of image inputs")
    output_names: list = option(None, parse=name_list, help="tensors to use as outputs instead of the graph's")
    test_input: str = option(None, help="input for verification: .npz (keys = input names), .npy or an image")
    test_result: str = option(None, help="write every tensor of our float run on test_input to this .npz")
    excepts: list = option(None, parse=name_list, help="outputs left out of the verification")
    tolerance: list = option([0.99999, 0.999], parse=float_list,
                             help="minimum cosine,euclidean similarity against ONNX Runtime (default "
                                  "0.99999,0.999)")


def transform(o: TransformOptions) -> int:
    if not o.model_def.lower().endswith(".onnx"):
        raise UserError(f"{o.model_def}: only ONNX models are supported (expected a .onnx file)")
    if o.test_result and not o.test_input:
        raise UserError("--test_result needs --test_input")
    pre = Preprocess(mean=o.mean or [0.0, 0.0, 0.0], scale=o.scale or [1.0, 1.0, 1.0], pixel_format=o.pixel_format,
                     channel_format=o.channel_format, keep_aspect_ratio=o.keep_aspect_ratio,
                     resize_dims=o.resize_dims or [], pad_value=o.pad_value, pad_type=o.pad_type)
    if o.resize_dims is not None and len(o.resize_dims) != 2:
        raise UserError(f"--resize_dims: expected h,w, got {o.resize_dims}")
    t0 = time.time()
    feeds = None
    if o.test_input:
        # the test input is the sample the importer evaluates, so shapes are checked against real data
        from .frontend.onnx_import import load_onnx
        probe = _input_nodes(load_onnx(o.model_def), o)
        feeds = load_inputs(o.test_input, probe, pre)
        if o.input_shapes is None:   # dynamic axes take the test input's shape
            o.input_shapes = [list(feeds[n.name].shape) for n in probe]
    graph = import_onnx(o.model_def, ImportOptions(input_shapes=o.input_shapes, output_names=o.output_names,
                                                   test_input=feeds),
                        preprocess=pre.to_attrs(), model_name=o.model_name)
    ir.save_graph(graph, o.mlir)
    n_ops = len(graph.compute_nodes())
    print(f"imported {o.model_def}: {n_ops} ops, {len(graph.weights)} weights "
          f"({sum(w.nbytes for w in graph.weights.values()) / 1e6:.1f} MB) in {time.time() - t0:.1f}s -> {o.mlir}")
    if feeds is None:
        return 0
    outs = Interpreter(graph).run(feeds, keep="all" if o.test_result else ())
    if o.test_result:
        names = [n.name for n in graph.nodes if n.op not in ("top.weight", "top.none")]
        write_npz(o.test_result, {k: outs[k] for k in names if k in outs})
        print(f"wrote {len(names)} tensors to {o.test_result}")
    return verify_against_onnxruntime(o, graph, feeds, outs)


def _input_nodes(model, o: TransformOptions):
    """Graph inputs as (name, shape, dtype) nodes for load_inputs, before the import itself."""
    from .frontend.onnx_import import _ONNX_TO_NP
    from .graph import Node
    inits = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    nodes = []
    for k, vi in enumerate(ins):
        if o.input_shapes and k < len(o.input_shapes):
            shape = tuple(o.input_shapes[k])
        else:
            shape = tuple(d.dim_value if d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim)
        dtype = np.dtype(_ONNX_TO_NP.get(vi.type.tensor_type.elem_type, np.float32)).name
        nodes.append(Node("top.input", vi.name, [], {}, shape, dtype))
    return nodes


def verify_against_onnxruntime(o: TransformOptions, graph, feeds, outs) -> int:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: verification against it skipped")
        return 0
    sess_opt = ort.SessionOptions()
    sess_opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(o.model_def, sess_opt, providers=["CPUExecutionProvider"])
    out_names = o.output_names or [x.name for x in sess.get_outputs()]
    ref = sess.run(out_names, {k: v for k, v in feeds.items()})
    rows, ok = [], True
    min_cos, min_euc = (list(o.tolerance) + [0.0, 0.0])[:2]
    for tensor, op_name, r in zip(out_names, graph.outputs, ref):
        if o.excepts and (tensor in o.excepts or op_name in o.excepts):
            continue
        ours = outs[op_name]
        if ours.shape != r.shape:
            rows.append([op_name, str(r.shape), "shape differs", "", "", "FAIL"])
            ok = False
            continue
        c, e = metrics.cosine(r, ours), metrics.euclid_similarity(r, ours)
        passed = c >= min_cos and e >= min_euc
        ok &= passed
        rows.append([op_name, "x".join(map(str, r.shape)), c, e, metrics.max_abs_rel(r, ours),
                     "ok" if passed else "FAIL"])
    print(table(["output", "shape", "cosine", "euclid sim", "max err / range", ""], rows,
                title=f"float module vs ONNX Runtime on {os.path.basename(o.test_input)}:"))
    if not ok:
        print(f"verification FAILED: below cosine {min_cos} / euclidean similarity {min_euc}")
        return 1
    return 0
