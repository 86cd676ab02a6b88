"""`tpu-cal export-qdq`: our module as an ONNX model with QuantizeLinear/DequantizeLinear pairs (QDQ format).

    tpu-cal export-qdq model.mlir --calibration_table model.cali [--quantize_table q] [--processor bm1684x] \
        -o model_qdq.onnx
    tpu-cal export-qdq model.mlir --quantize F32 -o model_float.onnx         # the float graph, no QDQ

The model is built from our top module, not from the original ONNX file: the module is lowered exactly as
`tpu-cal lower` does (same table import, qtable, precision assignment and chip rules: `lower_cmd.prepare`), and
every op of the lowered module is written back as ONNX ops. So the export carries what we would run: rewritten
weights of a calibrated module, our precision choices, and the lowered types' exact scales (`quant.exact_scale`,
7 significant digits), written as float32 scales so ONNX Runtime quantizes with the same numbers.

QDQ convention (ONNX Runtime's static quantization format, which its graph optimizer fuses into integer kernels):
- an int8 activation is `DequantizeLinear(QuantizeLinear(x, s, 0), s, 0)`: symmetric per tensor, s = th / 127 of
  the lowered type (the cali_table's or the module's cali.threshold); an asymmetric type (#asym_op) keeps its zero
  point. The dequantized tensor carries the op's name, so ONNX Runtime's tensors pair with ours by name;
- where lowering inserts a cast to int8 (a graph input, a float op feeding an int8 op), the same pair sits there;
- conv / deconv / matmul weights are int8 initializers with per-channel scales and a DequantizeLinear on the
  axis of docs/lowering.md (conv 0, deconv 1, matmul the last); their bias is int32 with scale s_in * s_w[c] and
  zero point 0 (ONNX Runtime's bias convention); both are the lowered module's arrays, bit for bit;
- INT4 tensors use ONNX's int4 type (opset 21); ONNX Runtime 1.32 then loads the model only with its graph
  optimizations off (its ClipQuantFusion rejects an int4 zero point), which is how the load check runs;
- F32 / F16 / BF16 ops (qtable entries, the chip's float ops such as layer_norm and softmax) are left float, with
  no QDQ around them (f16/bf16 weights are the lowered module's rounded values, activations stay float32).

Rounding: we round half away from zero in float64, ONNX Runtime's QuantizeLinear half to even in float32, and
exact ties are common (thresholds such as 6 for ReLU6 make s_in / s_out a small fraction). For int8 elementwise
ops whose inputs can be enumerated, the QuantizeLinear scale (only that one; DequantizeLinear keeps the exact
scale) is moved by a few float32 ulps so ONNX Runtime gives our integers for every input
(`_Builder._rounding_scale`). Convolutions keep near-ties we cannot steer (float32 multipliers in ONNX Runtime).

ONNX Runtime on x86 without VNNI saturates int16 pair sums in its default u8 x s8 kernels (cosine 0.6 on
EfficientNet-Lite0): run it with `session.x64quantprecision=1`, or export `--weight_type uint8` (the same
integers + 128, zero point 128), which takes its unsaturated u8 x u8 path.

Op mapping (top op -> ONNX): conv Conv, deconv ConvTranspose, matmul MatMul (+Add of the bias), pools
MaxPool/AveragePool, scale Mul+Add, gelu as Erf (or Tanh) arithmetic, silu x*Sigmoid(x), group_norm as reductions,
reshape/permute/slice/concat/pad/resize/expand/tile/gather/depth_to_space/space_to_depth, reductions, arg,
softmax/log_softmax, layer_norm LayerNormalization, elementwise ops one to one. Shapes are the module's (static).
An op without a mapping is an error listing every such op. The model is checked with onnx.checker (full check)
and loaded by ONNX Runtime when it is installed, then written atomically; on any error nothing is written.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import quant
from .cli import option
from .errors import UserError
from .fileio import atomic_path, check_writable
from .formats.qtable import MODES
from .graph import Graph, Node

OPSET = 19          # LayerNormalization (17), Resize axes / Mish / reduce axes inputs (18), Pad wrap (19)
OPSET_INT4 = 21     # int4 QuantizeLinear / DequantizeLinear

_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "erf": "Erf", "exp": "Exp", "log": "Log",
          "sqrt": "Sqrt", "abs": "Abs", "neg": "Neg", "reciprocal": "Reciprocal", "softplus": "Softplus",
          "mish": "Mish", "floor": "Floor", "not": "Not", "isnan": "IsNaN", "hardswish": "HardSwish"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min",
           "equal": "Equal", "less": "Less", "greater": "Greater", "and": "And", "or": "Or"}
_REDUCE = {"mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin", "sum": "ReduceSum", "prod": "ReduceProd",
           "l1": "ReduceL1", "l2": "ReduceL2", "sumsquare": "ReduceSumSquare", "logsumexp": "ReduceLogSumExp"}
_MOVE = {"reshape", "permute", "slice", "concat", "pad", "resize", "expand", "tile", "gather", "depth_to_space",
         "space_to_depth"}
# int8 ops whose float32 arithmetic ONNX Runtime does exactly as numpy (IEEE operations), with one or two
# quantized operands: their QuantizeLinear scale is chosen to reproduce our rounding (_Builder._rounding_scale)
_ENUMERABLE = frozenset({"relu", "clip", "neg", "abs", "leaky_relu", "hardsigmoid", "add", "sub", "mul", "div",
                         "max", "min", "concat", "where"})
# int8 ops whose results are values of their data operand (requantized when their own type differs)
_VALUE_OPS = frozenset({"reshape", "permute", "slice", "expand", "tile", "gather", "depth_to_space", "space_to_depth",
                        "maxpool", "resize"})
_ULP_ORDER = [0] + [s * j for j in range(1, 65) for s in (1, -1)]
SUPPORTED = frozenset(set(_UNARY) | set(_BINARY) | _MOVE | {
    "conv", "deconv", "maxpool", "avgpool", "scale", "prelu", "leaky_relu", "clip", "silu", "hardsigmoid", "gelu",
    "softmax", "log_softmax", "where", "matmul", "layer_norm", "group_norm", "reduce", "arg", "cast"})


@dataclass
class ExportQdqOptions:
    mlir_file: str = option(positional=True, help="top-dialect module (from `tpu-cal transform`, or a calibrated "
                                                  "one from `tpu-cal calibrate --save_mlir`)")
    output: str = option(required=True, aliases=("-o",), help="output ONNX model")
    calibration_table: str = option(None, help="cali_table from `tpu-cal calibrate` (needed for INT8 unless the "
                                               "module is calibrated)")
    quantize_table: str = option(None, help="qtable: `op_name MODE`; F32/F16/BF16 ops are exported without QDQ")
    processor: str = option("bm1684x", aliases=("--chip",), help="target processor whose precision rules apply "
                                                                  "(default bm1684x)")
    quantize: str = option("INT8", choices=MODES, help="default precision (INT8; F32 exports the float model)")
    weight_type: str = option("int8", choices=("int8", "uint8"),
                              help="storage of int8 weights: int8 (zero point 0, the usual QDQ form) or uint8 with "
                                   "zero point 128 (the same values; ONNX Runtime on x86 without VNNI then needs no "
                                   "session.x64quantprecision option)")


@dataclass
class ExportResult:
    model: object                 # onnx.ModelProto
    qdq_pairs: int                # QuantizeLinear/DequantizeLinear pairs on activations
    quant_weights: int            # DequantizeLinear on integer weights (and biases)
    float_ops: int                # ops left in float
    int_ops: int                  # ops with quantized results
    opset: int


def _short(op: str) -> str:
    return op.split(".", 1)[1]


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C order without np.ascontiguousarray's promotion of 0-d arrays to 1-d (ORT wants scalar scales)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _onnx_dtype(dtype) -> int:
    from onnx import helper
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Builder:
    """Writes a lowered Graph as ONNX nodes and initializers."""

    def __init__(self, lowered: Graph, float_graph: Graph | None, match_rounding: bool = True,
                 u8_weights: bool = False):
        self.match_rounding = match_rounding
        self.u8_weights = u8_weights
        self.tuned = self.tuned_checked = 0
        self.g = lowered
        self.fnodes = float_graph.node_map() if float_graph is not None else {}
        self.lnodes = lowered.node_map()
        self.nodes: list = []
        self.inits: list = []
        self.inputs: list = []
        self.value: dict[str, str] = {}                   # lowered value name -> ONNX tensor name
        self.used: set[str] = {n.name for n in lowered.nodes} | set(lowered.outputs) | set(self.fnodes)
        self.int4 = any(n.qtype is not None and n.qtype.storage in ("i4", "u4") for n in lowered.nodes)
        self.opset = OPSET_INT4 if self.int4 else OPSET
        self.qdq_pairs = self.quant_weights = self.float_ops = self.int_ops = 0

    # ----- names and constants
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def const(self, base: str, arr, dtype=None) -> str:
        from onnx import numpy_helper
        a = np.asarray(arr, dtype) if dtype is not None else np.asarray(arr)
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(_contiguous(a), name))
        return name

    def int_const(self, base: str, arr, storage: str) -> str:
        """An integer initializer in `storage` (int4 packed through onnx.helper)."""
        from onnx import TensorProto, helper
        if storage in ("i4", "u4"):
            a = np.asarray(arr).astype(np.int64)
            name = self.fresh(base)
            self.inits.append(helper.make_tensor(name, TensorProto.INT4 if storage == "i4" else TensorProto.UINT4,
                                                 list(a.shape), a.ravel().tolist()))
            return name
        dt = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32}[storage]
        return self.const(base, np.asarray(arr).astype(dt), None)

    def node(self, op: str, inputs: list, out: str | None = None, base: str = "", **attrs) -> str:
        from onnx import helper
        out = out or self.fresh(base or op.lower())
        self.nodes.append(helper.make_node(op, [i if i is not None else "" for i in inputs], [out],
                                           name=self.fresh(f"{out}/{op}"), **attrs))
        return out

    # ----- quantization
    def _qparams(self, base: str, q: quant.QType) -> tuple[str, str, dict]:
        scale = np.asarray(q.scale, np.float64).astype(np.float32)
        zp = np.broadcast_to(np.asarray(q.zero_point, np.int64), scale.shape) if scale.ndim else \
            np.asarray(int(q.zero_point), np.int64)
        s = self.const(f"{base}_scale", scale)
        z = self.int_const(f"{base}_zero_point", zp, q.storage)
        attrs = {"axis": int(q.axis)} if q.axis is not None else {}
        return s, z, attrs

    def qdq(self, x: str, q: quant.QType, out: str, q_scale: np.float32 | None = None) -> str:
        """x (float) -> QuantizeLinear -> DequantizeLinear, named `out`. `q_scale` replaces the QuantizeLinear
        scale (see `_rounding_scale`); DequantizeLinear always has the exact scale."""
        s, z, attrs = self._qparams(out, q)
        sq = s if q_scale is None else self.const(f"{out}_quantize_scale", np.float32(q_scale))
        xq = self.node("QuantizeLinear", [x, sq, z], base=f"{out}_quantized", **attrs)
        self.qdq_pairs += 1
        return self.node("DequantizeLinear", [xq, s, z], out=out, **attrs)

    def _rounding_scale(self, n: Node, q: quant.QType) -> np.float32 | None:
        """The float32 QuantizeLinear scale that makes ONNX Runtime's DequantizeLinear -> op -> QuantizeLinear
        give our integers for every input of an elementwise int8 op (None: the exact scale already does, or the
        op is not one whose inputs can be enumerated).

        Ours: dequantize in float64, the float32 kernel, y / s in float64 rounded half away from zero. ONNX
        Runtime: float32 dequantize, the same float32 arithmetic (exact IEEE operations for the ops listed),
        y / s in float32 rounded half to even. They differ at (near) ties, which are common: thresholds such as
        6 (ReLU6) and 13 make s_in / s_out a small fraction, so k * s_in / s_out lands on .5 for whole classes
        of k. An op of one or two int8 tensors (and scalar constants) has at most 65536 distinct inputs; the
        float32 scales a few ulps around the exact one are tried in order of distance and the first that
        reproduces all of our results is used (else the one reproducing most). The error this leaves in the
        quantized value is below 1e-6 relative."""
        self.tuned_checked += 1
        op = _short(n.op)
        if q.axis is not None or not self.match_rounding:
            return None
        if op in _VALUE_OPS and not (op == "resize" and n.attrs["mode"] != "nearest"):
            op = "relu_identity"
        elif op not in _ENUMERABLE:
            return None
        from .interp.core import KERNELS, _load_kernels
        _load_kernels()
        kern = (lambda node, x, shape: x) if op == "relu_identity" else KERNELS.get(f"top.{op}")
        if kern is None:
            return None
        f32 = np.float32
        operands = []               # per operand: (ours, ort) float32 arrays, or a quantized grid
        grids = []
        for i in n.inputs[:1] if op == "relu_identity" else n.inputs[1:] if op == "where" else n.inputs:
            if i is None:
                operands.append(None)
                continue
            src = self.lnodes[i]
            qi = src.qtype
            if src.op == "top.weight":
                arr = np.asarray(self.g.weights[src.attrs["name"]])
                if qi is not None or arr.size > 1 or arr.dtype.kind != "f":
                    return None
                operands.append((arr.astype(f32), arr.astype(f32)))
            elif qi is not None and qi.axis is None and qi.storage in ("i8", "u8", "i4", "u4"):
                operands.append(qi)
                grids.append(len(operands) - 1)
            else:
                return None
        if not grids or (op not in ("concat", "where") and len(grids) > 2):
            return None
        top = Node(f"top.{op}", n.name, list(n.inputs), dict(n.attrs), n.shape, "float32")
        ours_l, ort_l = [], []
        if op in ("concat", "where"):       # each data input is requantized on its own
            for k in grids:
                qi = operands[k]
                ks = np.arange(qi.qmin, qi.qmax + 1)
                ours_l.append(quant.dequantize(ks, qi))
                ort_l.append((ks - int(qi.zero_point)).astype(f32) * f32(qi.scale))
            for v in operands:          # scalar constants are requantized as well
                if isinstance(v, tuple):
                    ours_l.append(v[0].ravel())
                    ort_l.append(v[1].ravel())
        else:
            sizes = [operands[k].qmax - operands[k].qmin + 1 for k in grids]
            xs_ours, xs_ort = [], []
            for k, v in enumerate(operands):
                if k in grids:
                    ks = np.arange(v.qmin, v.qmax + 1)
                    shape = [1] * len(grids)
                    shape[grids.index(k)] = sizes[grids.index(k)]
                    xs_ours.append(quant.dequantize(ks, v).reshape(shape))
                    xs_ort.append(((ks - int(v.zero_point)).astype(f32) * f32(v.scale)).reshape(shape))
                else:
                    xs_ours.append(None if v is None else v[0].reshape(()) if v[0].size == 1 else v[0])
                    xs_ort.append(None if v is None else v[1].reshape(()) if v[1].size == 1 else v[1])
            with np.errstate(all="ignore"):
                ours_l.append(np.asarray(kern(top, *xs_ours, shape=None), f32))
                ort_l.append(np.asarray(kern(top, *xs_ort, shape=None), f32))
        y_ours = np.concatenate([np.ravel(v) for v in ours_l])
        y_ort = np.concatenate([np.ravel(v) for v in ort_l])
        ok = np.isfinite(y_ours) & np.isfinite(y_ort)
        y_ours, y_ort = y_ours[ok], y_ort[ok]
        if not y_ours.size:
            return None
        want = quant.quantize(y_ours, q).astype(np.int64)
        zp = int(q.zero_point)
        base = f32(q.scale)
        best, best_hits = None, -1
        with np.errstate(all="ignore"):
            for j in _ULP_ORDER:
                cand = base
                step = np.inf if j > 0 else -np.inf
                for _ in range(abs(j)):
                    cand = np.nextafter(cand, f32(step))
                got = np.clip(np.rint(y_ort / cand).astype(np.int64) + zp, q.qmin, q.qmax)
                hits = int(np.sum(got == want))
                if hits > best_hits:
                    best, best_hits = cand, hits
                if hits == want.size:
                    break
        if best == base:
            return None
        self.tuned += 1
        return best

    # ----- the graph
    def run(self, outputs: list[str], extra_outputs=()):
        from onnx import helper
        unsupported: dict[str, list[str]] = {}
        for n in self.g.nodes:
            if n.op not in ("top.input", "top.weight") and _short(n.op) not in SUPPORTED:
                unsupported.setdefault(_short(n.op), []).append(n.name)
        if unsupported:
            listing = "; ".join(f"{t} ({', '.join(v[:5])}{', ...' if len(v) > 5 else ''})"
                                for t, v in sorted(unsupported.items()))
            raise UserError(f"cannot export {sum(map(len, unsupported.values()))} op(s) of "
                            f"{len(unsupported)} type(s) to ONNX: {listing}")
        for n in self.g.nodes:
            if n.op == "top.input":
                self.inputs.append(helper.make_tensor_value_info(
                    n.name, _onnx_dtype(self._orig_dtype(n)), list(n.shape)))
                self.value[n.name] = n.name
            elif n.op == "top.weight":
                self.weight(n)
            elif n.op == "tpu.cast" and "precision" not in n.extra:
                self.cast(n)
            else:
                self.op(n)
        outs = []
        for k, lname in enumerate(outputs):
            src = self.value[lname]
            want = self.g.outputs[k] if k < len(self.g.outputs) else lname
            orig = self._orig_name(want)
            name = src
            if src != orig and orig not in self.used_by_graph():
                name = self.node("Identity", [src], out=orig)
            node = self.fnodes.get(orig) or self.lnodes.get(lname)
            outs.append(helper.make_tensor_value_info(name, _onnx_dtype(self._orig_dtype(node)), list(node.shape)))
        have = {o.name for o in outs}
        for lname in extra_outputs:
            if lname not in self.value:
                raise UserError(f"no tensor '{lname}' to add as an output")
            if self.value[lname] in have or self.value[lname] in {i.name for i in self.inputs}:
                continue
            have.add(self.value[lname])
            node = self.fnodes.get(lname) or self.lnodes[lname]
            outs.append(helper.make_tensor_value_info(self.value[lname], _onnx_dtype(self._orig_dtype(node)),
                                                      list(node.shape)))
        return outs

    def used_by_graph(self) -> set:
        made = {o for nd in self.nodes for o in nd.output}
        return made | {i.name for i in self.inputs} | {t.name for t in self.inits}

    def _orig_name(self, lname: str) -> str:
        """A lowered output name (`<out>_f32` cast) -> the float module's output name."""
        if lname in self.fnodes:
            return lname
        n = self.lnodes.get(lname)
        while n is not None and n.op == "tpu.cast" and "precision" not in n.extra and n.inputs:
            if n.inputs[0] in self.fnodes:
                return n.inputs[0]
            n = self.lnodes.get(n.inputs[0])
        return lname

    def _orig_dtype(self, n: Node) -> str:
        """The element type of the value in float terms: quantized and f16/bf16 tensors are float32."""
        f = self.fnodes.get(n.name)
        if f is not None:
            return f.dtype
        if n.qtype is not None:
            return "float32"
        return n.dtype

    def weight(self, n: Node) -> None:
        arr = self.g.weights[n.attrs["name"]]
        q = n.qtype
        if q is None:
            from onnx import numpy_helper
            self.inits.append(numpy_helper.from_array(_contiguous(np.asarray(arr, self._orig_dtype(n))), n.name))
            self.value[n.name] = n.name
            return
        if self.u8_weights and q.storage == "i8" and int(np.max(np.abs(q.zero_point))) == 0:
            # the same values as uint8 with zero point 128 (see `u8_weights`)
            q = dataclasses.replace(q, storage="u8", zero_point=np.full(np.shape(q.scale), 128, np.int64)
                                    if q.axis is not None else 128)
            arr = np.asarray(arr, np.int64) + 128
        w = self.int_const(f"{n.name}_quantized", arr, q.storage)
        s, z, attrs = self._qparams(n.name, q)
        self.quant_weights += 1
        self.value[n.name] = self.node("DequantizeLinear", [w, s, z], out=n.name, **attrs)

    def cast(self, n: Node) -> None:
        src = self.value[n.inputs[0]]
        q = n.qtype
        if q is not None:
            self.value[n.name] = self.qdq(src, q, n.name)
        else:       # dequantize or a float-to-float rounding: the ONNX tensor is already the real value
            self.value[n.name] = src

    def op(self, n: Node) -> None:
        q = n.qtype
        ins = [self.value[i] if i is not None else None for i in n.inputs]
        if q is not None:
            raw = self.fresh(f"{n.name}_float")
            self.emit(n, ins, raw)
            self.int_ops += 1
            self.value[n.name] = self.qdq(raw, q, n.name, self._rounding_scale(n, q))
        else:
            self.float_ops += 1
            self.value[n.name] = self.emit(n, ins, n.name)

    # ----- one op
    def _rank(self, name: str) -> int:
        return len(self.lnodes[name].shape)

    def _per_channel(self, x: str, src: str, ndim: int) -> str:
        """A 1-D per-channel operand viewed as [1, C, 1, ...] (our scale/group_norm broadcasting)."""
        if self._rank(src) != 1:
            return x
        return self.node("Reshape", [x, self.const("shape", [1, -1] + [1] * (ndim - 2), np.int64)], base=f"{x}_nc")

    def emit(self, n: Node, ins: list, out: str) -> str:
        if not n.extra.get("do_relu"):
            return self._emit_op(n, ins, out)
        # a MAC op fused with its ReLU at lowering: the activation in float between the op and its QDQ, which is
        # the form ONNX Runtime fuses into QLinearConv / QGemm with the activation
        pre = self._emit_op(n, ins, self.fresh(f"{out}_pre_act"))
        lim = float(n.extra.get("relu_limit", -1.0))
        if lim < 0:
            return self.node("Relu", [pre], out)
        return self.node("Clip", [pre, self.const("min", np.float32(0)), self.const("max", np.float32(lim))], out)

    def _emit_op(self, n: Node, ins: list, out: str) -> str:
        op = _short(n.op)
        a = n.attrs
        ndim = len(n.shape)
        node = self.node
        f32 = np.float32
        if op == "conv" or op == "deconv":
            attrs = {k: list(a[k]) for k in ("kernel_shape", "strides", "pads", "dilations") if list(a[k])}
            attrs["group"] = int(a["group"])
            if op == "deconv" and list(a["output_padding"]):
                attrs["output_padding"] = list(a["output_padding"])
            args = ins[:2] + ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
            return node("Conv" if op == "conv" else "ConvTranspose", args, out, **attrs)
        if op in ("maxpool", "avgpool"):
            attrs = {"kernel_shape": list(a["kernel_shape"]), "ceil_mode": int(bool(a["ceil_mode"]))}
            for k in ("strides", "pads"):
                if list(a[k]):
                    attrs[k] = list(a[k])
            if list(a["dilations"]) and any(d != 1 for d in a["dilations"]):
                attrs["dilations"] = list(a["dilations"])
            if op == "avgpool":
                attrs["count_include_pad"] = int(bool(a["count_include_pad"]))
                return node("AveragePool", ins, out, **attrs)
            return node("MaxPool", ins, out, **attrs)
        if op == "scale":
            sc = self._per_channel(ins[1], n.inputs[1], ndim)
            b = self._per_channel(ins[2], n.inputs[2], ndim)
            return node("Add", [node("Mul", [ins[0], sc], base=f"{out}_mul"), b], out)
        if op == "prelu":
            return node("PRelu", ins, out)
        if op in _UNARY:
            return node(_UNARY[op], ins, out)
        if op == "leaky_relu":
            return node("LeakyRelu", ins, out, alpha=float(a["alpha"]))
        if op == "hardsigmoid":
            return node("HardSigmoid", ins, out, alpha=float(a["alpha"]), beta=float(a["beta"]))
        if op == "clip":
            lo, hi = float(a["min"]), float(a["max"])
            return node("Clip", [ins[0], self.const("clip_min", lo, f32) if lo > -math.inf else None,
                                 self.const("clip_max", hi, f32) if hi < math.inf else None], out)
        if op == "silu":
            return node("Mul", [ins[0], node("Sigmoid", ins, base=f"{out}_sigmoid")], out)
        if op == "gelu":
            x = ins[0]
            if a["approximate"] == "tanh":
                x3 = node("Mul", [x, node("Mul", [x, x], base=f"{out}_x2")], base=f"{out}_x3")
                inner = node("Add", [x, node("Mul", [x3, self.const("c", 0.044715, f32)], base=f"{out}_cx3")],
                             base=f"{out}_inner")
                t = node("Tanh", [node("Mul", [inner, self.const("c", math.sqrt(2 / math.pi), f32)],
                                       base=f"{out}_scaled")], base=f"{out}_tanh")
            else:
                t = node("Erf", [node("Div", [x, self.const("sqrt2", math.sqrt(2), f32)], base=f"{out}_div")],
                         base=f"{out}_erf")
            half_x = node("Mul", [x, self.const("half", 0.5, f32)], base=f"{out}_half")
            return node("Mul", [half_x, node("Add", [t, self.const("one", 1.0, f32)], base=f"{out}_1p")], out)
        if op in ("softmax", "log_softmax"):
            return node("Softmax" if op == "softmax" else "LogSoftmax", ins, out, axis=int(a["axis"]))
        if op in _BINARY:
            return node(_BINARY[op], ins, out)
        if op == "where":
            return node("Where", ins, out)
        if op == "matmul":
            if len(ins) > 2 and ins[2] is not None:
                mm = node("MatMul", ins[:2], base=f"{out}_matmul")
                return node("Add", [mm, ins[2]], out)
            return node("MatMul", ins[:2], out)
        if op == "layer_norm":
            axis = int(a["axis"])
            x_shape = self.lnodes[n.inputs[0]].shape
            norm_shape = list(x_shape[axis % len(x_shape):])
            sc = ins[1] if len(ins) > 1 and ins[1] is not None else self.const("ln_scale", np.ones(norm_shape, f32))
            b = ins[2] if len(ins) > 2 and ins[2] is not None else None
            return node("LayerNormalization", [ins[0], sc] + ([b] if b else []), out, axis=axis,
                        epsilon=float(a["eps"]))
        if op == "group_norm":
            return self._group_norm(n, ins, out)
        if op == "reshape":
            return node("Reshape", [ins[0], self.const("shape", list(n.shape), np.int64)], out)
        if op == "permute":
            return node("Transpose", ins, out, perm=list(a["order"]))
        if op == "slice":
            c = lambda k: self.const(k, list(a[k]), np.int64)  # noqa: E731
            return node("Slice", [ins[0], c("starts"), c("ends"), c("axes"), c("steps")], out)
        if op == "concat":
            return node("Concat", [i for i in ins if i is not None], out, axis=int(a["axis"]))
        if op == "pad":
            mode = a["mode"]
            args = [ins[0], self.const("pads", list(a["pads"]), np.int64)]
            if mode == "constant":
                args.append(self.const("pad_value", a["value"], self._orig_dtype(self.lnodes[n.inputs[0]])))
            return node("Pad", args, out, mode=mode)
        if op == "resize":
            return self._resize(n, ins, out)
        if op == "expand":
            return node("Expand", [ins[0], self.const("shape", list(n.shape), np.int64)], out)
        if op == "tile":
            return node("Tile", [ins[0], self.const("repeats", list(a["repeats"]), np.int64)], out)
        if op == "reduce":
            axes = list(a["axes"])
            args = [ins[0]] + ([self.const("axes", axes, np.int64)] if axes else [])
            return node(_REDUCE[a["mode"]], args, out, keepdims=int(bool(a["keepdims"])))
        if op == "arg":
            r = node("ArgMax" if a["mode"] == "max" else "ArgMin", ins, None if self._want(n) != "int64" else out,
                     base=f"{out}_arg", axis=int(a["axis"]), keepdims=int(bool(a["keepdims"])))
            return r if r == out else node("Cast", [r], out, to=_onnx_dtype(self._want(n)))
        if op == "depth_to_space":
            return node("DepthToSpace", ins, out, blocksize=int(a["blocksize"]), mode=a["mode"])
        if op == "space_to_depth":
            return node("SpaceToDepth", ins, out, blocksize=int(a["blocksize"]))
        if op == "gather":
            return node("Gather", ins, out, axis=int(a["axis"]))
        if op == "cast":
            return node("Cast", ins[:1], out, to=_onnx_dtype(self._want(n)))
        raise UserError(f"op '{n.name}': no ONNX mapping for {n.op}")     # SUPPORTED lists every case above

    def _want(self, n: Node) -> str:
        return self._orig_dtype(n)

    def _group_norm(self, n: Node, ins: list, out: str) -> str:
        node = self.node
        G = int(n.attrs["num_groups"])
        shape = list(n.shape)
        x = node("Reshape", [ins[0], self.const("shape", [shape[0], G, -1], np.int64)], base=f"{out}_groups")
        ax = self.const("axes", [2], np.int64)
        mean = node("ReduceMean", [x, ax], base=f"{out}_mean", keepdims=1)
        d = node("Sub", [x, mean], base=f"{out}_centered")
        var = node("ReduceMean", [node("Mul", [d, d], base=f"{out}_sq"), ax], base=f"{out}_var", keepdims=1)
        std = node("Sqrt", [node("Add", [var, self.const("eps", n.attrs["eps"], np.float32)], base=f"{out}_vareps")],
                   base=f"{out}_std")
        y = node("Reshape", [node("Div", [d, std], base=f"{out}_normed"), self.const("shape", shape, np.int64)],
                 base=f"{out}_y")
        if len(ins) > 1 and ins[1] is not None:
            y = node("Mul", [y, self._per_channel(ins[1], n.inputs[1], len(shape))], base=f"{out}_scaled")
        if len(ins) > 2 and ins[2] is not None:
            y = node("Add", [y, self._per_channel(ins[2], n.inputs[2], len(shape))], base=f"{out}_biased")
        return node("Identity", [y], out)

    def _resize(self, n: Node, ins: list, out: str) -> str:
        a = n.attrs
        in_shape = list(self.lnodes[n.inputs[0]].shape)
        out_shape = list(n.shape)
        scales = [float(s) for s in a["scales"]]
        mode, nmode = a["mode"], a["nearest_mode"]
        if nmode == "simple":       # Upsample / Resize-10: trunc when upsampling, ceil when downsampling
            changed = [s for s, i, o in zip(scales, in_shape, out_shape) if not (s == 1.0 and i == o)]
            if all(s >= 1 for s in changed):
                nmode = "floor"
            elif all(s < 1 for s in changed):
                nmode = "ceil"
            else:
                raise UserError(f"op '{n.name}': resize with nearest mode 'simple' that both up- and downsamples "
                                f"cannot be written as one ONNX Resize")
        attrs = dict(mode=mode, coordinate_transformation_mode=a["coord_mode"], nearest_mode=nmode,
                     cubic_coeff_a=float(a["cubic_coeff"]), exclude_outside=int(bool(a["exclude_outside"])))
        # ONNX Runtime sizes an axis floor(in * float32(scale)); use the scales when that gives our shape,
        # else give the sizes of the resized axes (the scales then follow from them, as in our kernel's shape)
        ok = all(math.floor(np.float32(s) * np.float32(i)) == o for s, i, o in zip(scales, in_shape, out_shape))
        if ok and len(scales) == len(in_shape):
            return self.node("Resize", [ins[0], None, self.const("scales", scales, np.float32)], out, **attrs)
        axes = [k for k, (i, o) in enumerate(zip(in_shape, out_shape)) if i != o or k > 0]
        return self.node("Resize", [ins[0], None, None, self.const("sizes", [out_shape[k] for k in axes], np.int64)],
                         out, axes=axes, **attrs)


def build_model(lowered: Graph, float_graph: Graph | None = None, extra_outputs=(), name: str | None = None,
                match_rounding: bool = True, u8_weights: bool = False) -> ExportResult:
    """The ONNX model of a lowered graph (from `lowering.lower` / `lower_cmd.prepare`). `extra_outputs` names
    tensors (op names) to expose as outputs too, e.g. for a per-layer comparison with ONNX Runtime."""
    from onnx import helper
    b = _Builder(lowered, float_graph, match_rounding, u8_weights)
    outs = b.run(list(lowered.outputs), extra_outputs)
    graph = helper.make_graph(b.nodes, name or str(lowered.attrs.get("name") or lowered.name or "main"), b.inputs,
                              outs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)], producer_name="tpu_cal",
                              producer_version="0.1.0")
    model.ir_version = min(model.ir_version, 10)      # ONNX Runtime 1.17+ reads IR version 10
    return ExportResult(model, b.qdq_pairs, b.quant_weights, b.float_ops, b.int_ops, b.opset)


def check_model(model, optimize: bool = True) -> str:
    """onnx.checker (full check, with shape inference), then an ONNX Runtime session when it is installed (with
    its graph optimizations off when `optimize` is False). Returns a note on what ran; raises UserError when a
    check fails."""
    import onnx
    data = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise UserError(f"the exported model fails onnx.checker: {str(e).strip().splitlines()[0][:400]}") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnx.checker passed; ONNX Runtime not installed, load check skipped"
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"ONNX Runtime cannot load the exported model: {str(e).strip().splitlines()[0][:400]}"
                        ) from None
    return f"onnx.checker passed; ONNX Runtime {ort.__version__} loads it" + (
        "" if optimize else " (graph optimizations off)")


def export_qdq(o: ExportQdqOptions) -> int:
    from .lower_cmd import LowerOptions, prepare
    from .lowering import INT_MODES, resolve_mode
    from .chips import chip as get_chip
    from . import ir

    t0 = time.time()
    check_writable(o.output)
    if os.path.abspath(o.output) == os.path.abspath(o.mlir_file):
        raise UserError(f"{o.output}: the output would overwrite the input module")
    mode = resolve_mode(get_chip(o.processor), o.quantize)
    ctx = ir.context()
    if mode in INT_MODES and not o.calibration_table:
        g = ir.load_graph(o.mlir_file, ctx)
        if not any("cali.threshold" in n.extra for n in g.nodes):
            raise UserError(f"{o.mlir_file} carries no calibration thresholds: give --calibration_table (from "
                            f"`tpu-cal calibrate`), or a module saved by `tpu-cal calibrate --save_mlir`; "
                            f"--quantize F32 exports the float model")
    lo = LowerOptions(mlir_file=o.mlir_file, output=o.output, quantize=o.quantize, processor=o.processor,
                      calibration_table=o.calibration_table, quantize_table=o.quantize_table)
    res = prepare(lo, ctx)
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    ex = build_model(res.graph, res.float_graph, u8_weights=o.weight_type == "uint8")
    int4 = ex.opset == OPSET_INT4
    note = check_model(ex.model, optimize=not int4)
    data = ex.model.SerializeToString()
    with atomic_path(o.output) as tmp, open(tmp, "wb") as f:
        f.write(data)
    print(f"exported {ex.int_ops + ex.float_ops} ops ({ex.int_ops} quantized, {ex.float_ops} float), "
          f"{ex.qdq_pairs} activation QDQ pairs, {ex.quant_weights} integer weights, opset {ex.opset} "
          f"in {time.time() - t0:.1f}s; {note}")
    print(f"-> {o.output}")
    if int4:
        print("note: int4 tensors: ONNX Runtime 1.32's graph optimizer fails on int4 QuantizeLinear after Clip "
              "(ClipQuantFusion); run the model with graph_optimization_level ORT_DISABLE_ALL", file=sys.stderr)
    if ex.quant_weights and o.weight_type == "int8":
        print("note: ONNX Runtime on x86 CPUs without VNNI saturates int8 products in its default kernels; run "
              "with the session option session.x64quantprecision=1, or export with --weight_type uint8",
              file=sys.stderr)
    return 0
