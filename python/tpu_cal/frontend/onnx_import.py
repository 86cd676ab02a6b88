"""ONNX -> top Graph.

Every ONNX node goes through a converter (`@converter("Conv")`) that emits top ops with `Importer.emit`. `emit`
evaluates each op at once with the interpreter's own kernels on a sample input, which gives three things with
one mechanism: exact static shapes and dtypes for every result, constant folding of everything that does not
depend on the inputs (Shape/Gather/Unsqueeze/Concat chains, mask arithmetic), and a kernel check at import time.
Op names follow TPU-MLIR: ONNX output tensor name + "_" + ONNX op type; graph inputs keep their names.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedOps, UserError
from ..graph import Graph, Node, unique_name
from ..interp.core import KERNELS, _load_kernels

CONVERTERS: dict[str, Callable] = {}


def converter(*op_types: str):
    def deco(fn):
        for t in op_types:
            CONVERTERS[t] = fn
        return fn
    return deco


# Fusions: `fn(imp, node) -> V | list | None` tried in registration order before the node's converter; one that
# recognizes a pattern ending at `node` (looking back through the ONNX graph, see `onnx_ops.transformer`) emits the
# fused op and returns its value, else returns None. The pattern's earlier nodes were already emitted; they die in
# the final DCE when nothing else reads them.
FUSIONS: dict[str, list[Callable]] = {}


def fusion(*op_types: str):
    def deco(fn):
        for t in op_types:
            FUSIONS.setdefault(t, []).append(fn)
        return fn
    return deco


@dataclass(eq=False)
class V:
    """A value during import: `name` is the producing top op (None while the value is a folded constant);
    `data` is the value on the sample input (the constant itself when `name` is None)."""
    data: np.ndarray
    name: str | None = None
    label: str = ""            # initializer / tensor name, used to name weights

    @property
    def const(self) -> bool:
        return self.name is None

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype


_BOOL_OPS = {"top.equal", "top.less", "top.greater", "top.and", "top.or", "top.not", "top.isnan"}


@dataclass
class ImportOptions:
    input_shapes: list | None = None     # one shape per graph input, overrides the model's
    output_names: list | None = None     # tensors to make outputs instead of the graph's
    test_input: dict | None = None       # input name -> array; used as the sample for evaluation
    seed: int = 0


class Importer:
    def __init__(self, model, path: str, options: ImportOptions):
        _load_kernels()
        self.model, self.path, self.opt = model, path, options
        self.env: dict[str, V] = {}
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self._used: set[str] = set()
        # id(constant V) -> (that V, weight name); the V is kept so that its id cannot be reused by another
        # constant after it is garbage-collected (which named a scalar constant after an earlier bias)
        self._materialized: dict[int, tuple] = {}
        self.node = None          # the ONNX node being converted (for error messages)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    # ----- helpers for converters
    def attr(self, name: str, default=None):
        import onnx
        for a in self.node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def fail(self, msg: str):
        n = self.node
        raise UserError(f"{self.path}: node '{n.name or n.output[0]}' ({n.op_type}): {msg}")

    def input(self, i: int) -> V | None:
        """The i-th input of the current node, None when absent (empty name or beyond the list)."""
        names = self.node.input
        if i >= len(names) or not names[i]:
            return None
        return self.env[names[i]]

    def const_input(self, i: int, what: str) -> np.ndarray | None:
        v = self.input(i)
        if v is None:
            return None
        if not v.const:
            self.fail(f"{what} must be a constant for the given input shapes (it depends on the model inputs)")
        return v.data

    def out_name(self, k: int = 0) -> str:
        return f"{self.node.output[k]}_{self.node.op_type}"

    def const(self, value, label: str = "") -> V:
        return V(np.asarray(value), None, label)

    def emit(self, op: str, inputs: list, attrs: dict | None = None, name: str | None = None,
             dtype=None, shape=None, fold: bool = True) -> V:
        """Adds `op` (or folds it when every input is constant). `shape` is the result shape for ops that take
        it from their result type (reshape, expand, resize); `dtype` overrides the inferred result dtype."""
        attrs = dict(attrs or {})
        present = [v for v in inputs if v is not None]
        if dtype is None:
            if op in _BOOL_OPS:
                dtype = np.bool_
            elif op == "top.arg":
                dtype = np.int64
            else:
                dtype = present[0].dtype if op != "top.where" else np.result_type(inputs[1].dtype, inputs[2].dtype)
        dtype = np.dtype(dtype).name
        name = self._unique(name or self.out_name())
        node = Node(op, name, [], attrs, tuple(shape) if shape is not None else (), dtype)
        args = [None if v is None else v.data for v in inputs]
        try:
            data = KERNELS[op](node, *args, shape=node.shape)
        except UserError:
            raise
        except Exception as e:  # a kernel rejecting the operands means the model's shapes do not fit
            self.fail(f"cannot evaluate as {op} on the given input shapes: {type(e).__name__}: {e}")
        data = np.asarray(data)
        if fold and all(v.const for v in present):
            self._used.discard(name)
            return V(data, None, name)
        node.inputs = [None if v is None else self.materialize(v, name) for v in inputs]
        node.shape = tuple(data.shape)
        self.nodes.append(node)
        return V(data, name)

    def materialize(self, v: V, consumer: str) -> str:
        """Name of the op producing `v`; constants become top.weight ops (once per constant)."""
        if not v.const:
            return v.name
        key = id(v)
        hit = self._materialized.get(key)
        if hit is None or hit[0] is not v:
            base = v.label or f"{consumer}_weight"
            name = self._unique(base)
            self.weights[name] = np.asarray(v.data, order="C")   # ascontiguousarray makes 0-d arrays 1-d
            self.nodes.append(Node("top.weight", name, [], {"name": name}, tuple(v.data.shape), v.data.dtype.name))
            self._materialized[key] = (v, name)
        return self._materialized[key][1]

    def _unique(self, name: str) -> str:
        return unique_name(name, self._used)

    # ----- the import itself
    def run(self, preprocess: dict | None = None, model_name: str | None = None) -> Graph:
        import onnx.numpy_helper as nh

        g = self.model.graph
        unsupported: dict[str, list[str]] = {}
        for n in g.node:
            if n.op_type not in CONVERTERS or (n.domain not in ("", "ai.onnx")):
                unsupported.setdefault(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}",
                                       []).append(n.name or n.output[0])
        if unsupported:
            raise UnsupportedOps(self.path, unsupported)
        init_names = set()
        for t in g.initializer:
            init_names.add(t.name)
            self.env[t.name] = V(nh.to_array(t), None, t.name)
        inputs = [i for i in g.input if i.name not in init_names]
        shapes = self._input_shapes(inputs)
        rng = np.random.default_rng(self.opt.seed)
        input_names = []
        for vi, shape in zip(inputs, shapes):
            dtype = _onnx_dtype(vi.type.tensor_type.elem_type, f"input '{vi.name}'", self.path)
            sample = self._sample(vi.name, shape, dtype, rng)
            self._used.add(vi.name)
            self.nodes.append(Node("top.input", vi.name, [], {}, tuple(shape), dtype.name))
            self.env[vi.name] = V(sample, vi.name)
            input_names.append(vi.name)
        for n in _toposort(g, self.path):
            self.node = n
            outs = None
            for fuse in FUSIONS.get(n.op_type, ()):
                outs = fuse(self, n)
                if outs is not None:
                    break
            if outs is None:
                outs = CONVERTERS[n.op_type](self, n)
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, v in zip(n.output, outs):
                if name:
                    self.env[name] = v
        self.node = None
        out_names = self.opt.output_names or [o.name for o in g.output]
        outputs = []
        for o in out_names:
            if o not in self.env:
                raise UserError(f"{self.path}: output '{o}' is not a tensor of the model")
            v = self.env[o]
            if v.const or v.name in input_names:
                # outputs must be ops of their own so results have a name and statistics
                v = self._identity_output(v, o)
            outputs.append(v.name)
        graph = Graph(model_name or g.name or "model", input_names, outputs, self.nodes, self.weights,
                      {"name": model_name or g.name or "model", "state": "f32"})
        if preprocess:
            graph.attrs["preprocess"] = preprocess
        _dce(graph)
        return graph

    def _identity_output(self, v: V, tensor: str) -> V:
        name = self._unique(f"{tensor}_Output")
        src = self.materialize(v, name)
        node = Node("top.reshape", name, [src], {}, v.shape, v.dtype.name)
        self.nodes.append(node)
        return V(v.data, name)

    def _input_shapes(self, inputs) -> list[tuple]:
        given = self.opt.input_shapes
        if given is not None and len(given) != len(inputs):
            raise UserError(f"{self.path}: --input_shapes gives {len(given)} shape(s) but the model has "
                            f"{len(inputs)} input(s): {', '.join(i.name for i in inputs)}")
        shapes = []
        for k, vi in enumerate(inputs):
            dims = vi.type.tensor_type.shape.dim
            model_shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
            if given is not None:
                shape = [int(x) for x in given[k]]
                if len(shape) != len(model_shape):
                    raise UserError(f"{self.path}: input '{vi.name}' has rank {len(model_shape)} "
                                    f"(shape {_fmt(model_shape)}) but --input_shapes gives {shape}")
                for m, s in zip(model_shape, shape):
                    if m is not None and m != s:
                        raise UserError(f"{self.path}: input '{vi.name}' has shape {_fmt(model_shape)}; "
                                        f"--input_shapes {shape} contradicts it")
                if any(s <= 0 for s in shape):
                    raise UserError(f"{self.path}: input '{vi.name}': shape {shape} must be positive")
            else:
                if any(m is None for m in model_shape):
                    # dynamic batch defaults to 1; other dynamic axes need the user's shapes
                    if model_shape and model_shape[0] is None and all(m is not None for m in model_shape[1:]):
                        model_shape[0] = 1
                    else:
                        raise UserError(f"{self.path}: input '{vi.name}' has dynamic shape {_fmt(model_shape)}; "
                                        f"give --input_shapes")
                shape = model_shape
            shapes.append(tuple(shape))
        return shapes

    def _sample(self, name, shape, dtype, rng) -> np.ndarray:
        ti = self.opt.test_input
        if ti is not None and name in ti:
            x = np.asarray(ti[name])
            if tuple(x.shape) != tuple(shape):
                raise UserError(f"test input '{name}' has shape {tuple(x.shape)}, expected {tuple(shape)}")
            return x.astype(dtype)
        if np.issubdtype(dtype, np.floating):
            return rng.standard_normal(shape).astype(dtype)
        return np.zeros(shape, dtype)   # integer inputs are usually indices or masks: zero is always valid


def _fmt(shape):
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


_ONNX_TO_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64}


def _onnx_dtype(code: int, what: str, path: str) -> np.dtype:
    if code not in _ONNX_TO_NP:
        raise UserError(f"{path}: {what} has an unsupported element type (ONNX code {code})")
    return np.dtype(_ONNX_TO_NP[code])


def _toposort(g, path):
    """Nodes in an order where every input is defined first (ONNX requires it, not every exporter obeys)."""
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            n = rest[0]
            missing = [i for i in n.input if i not in known]
            raise UserError(f"{path}: node '{n.name or n.output[0]}' ({n.op_type}) reads undefined tensor(s) "
                            f"{', '.join(missing)}")
        pending = rest
    return order


def _dce(graph: Graph):
    """Drops ops nothing reads (branches made dead by folding, unused weights)."""
    live = set(graph.outputs) | set(graph.inputs)
    for n in reversed(graph.nodes):
        if n.name in live:
            live.update(i for i in n.inputs if i is not None)
    graph.nodes = [n for n in graph.nodes if n.name in live]
    keep = {n.attrs["name"] for n in graph.nodes if n.op == "top.weight"}
    graph.weights = {k: v for k, v in graph.weights.items() if k in keep}


def load_onnx(path: str):
    """Loads and checks an ONNX file; any problem is a UserError naming the file."""
    import onnx

    if not os.path.exists(path):
        raise UserError(f"{path}: file not found")
    try:
        model = onnx.load(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:   # exporters often break rules ONNX Runtime tolerates: warn, and let import decide
        print(f"warning: {path}: ONNX checker: {str(e).splitlines()[0][:300]}", file=sys.stderr)
    return model


def import_onnx(path: str, options: ImportOptions | None = None, preprocess: dict | None = None,
                model_name: str | None = None) -> Graph:
    from . import onnx_ops  # noqa: F401  (registers the converters)

    model = load_onnx(path)
    return Importer(model, path, options or ImportOptions()).run(preprocess, model_name)
