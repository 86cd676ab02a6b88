"""The interpreter: a table of per-op numpy kernels plus listeners called around every op.

Kernels are registered with `@impl("top.conv", ...)` and called as `kernel(node, *inputs, shape=...)`, where
`shape` is the node's declared result shape with the batch axis scaled to the batch actually run (a module
imported for batch 1 runs a batch of N samples at once). Absent optional operands arrive as None.
A registered object with a `bind(graph)` method is bound to the graph once per Interpreter and the bound callable
runs instead (the `tpu.*` precision dispatcher, kernels/tpu.py, reads its operands' quantized types that way).

Listeners observe or replace values without forking the interpreter: statistics collectors, fake-quant and
per-layer comparison are all listeners. Each tensor is freed after its last use unless a caller keeps it.

In place: an op registered with `@impl_inplace` as well (relu, clip: a separate pass over a fresh array costs about
three times one over a buffer already in cache and mapped) writes its result into its first operand when `run`
can prove that nothing else sees that operand: it dies at this op, it is not kept, not a graph input or a weight,
no other reference or view holds its memory (reference counts, measured against a probe that takes the same
path, so the test does not depend on the Python version), and every listener says its `after_op` does not read
the operands' values (`Listener.after_op_reads_inputs`). The values are those of the ordinary kernel, bit for bit.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable

import numpy as np

from .. import native
from . import workers
from ..errors import UserError
from ..graph import Graph, Node

KERNELS: dict[str, Callable] = {}
RANGE_KEY = "interp.output_range"


class OutputRange:
    """The range of an op's output, reported by its kernel piece by piece: a conv fused with its ReLU6 clips each
    piece of its output while the piece is in cache and measures it there (tc_clip_range), so a listener that
    needs no more than the range (the statistics of a bounded tensor) takes no pass over memory. A node carries
    one in `extra[RANGE_KEY]` (calibration's fused view); the kernel resets it at each call. Pieces run on the
    worker threads: list.append is atomic under the GIL."""

    def __init__(self):
        self.parts: list[tuple[int, float, float, bool]] = []

    def reset(self) -> None:
        self.parts = []

    def add(self, n: int, lo: float, hi: float, nan: bool) -> None:
        self.parts.append((int(n), float(lo), float(hi), bool(nan)))

    def total(self, size: int) -> tuple[float, float, bool] | None:
        """(min, max, holds a NaN) over the pieces, or None unless they cover exactly `size` values."""
        parts = self.parts
        if not parts or sum(p[0] for p in parts) != size:
            return None
        return min(p[1] for p in parts), max(p[2] for p in parts), any(p[3] for p in parts)


def impl(*op_names: str):
    """Registers a kernel for one or more ops (both dialects may share one)."""
    def deco(fn):
        for n in op_names:
            if n in KERNELS:
                raise RuntimeError(f"two kernels for {n}")
            KERNELS[n] = fn
        return fn
    return deco


INPLACE: dict[str, Callable] = {}


def impl_inplace(*op_names: str):
    """Registers a variant of an op's kernel, called as `kernel(node, x, *rest, shape=...)`, that writes the result
    into `x` (float, the node's dtype and shape) and returns it; the interpreter calls it only on an operand that
    nothing else can see (module docstring)."""
    def deco(fn):
        for n in op_names:
            if n in INPLACE:
                raise RuntimeError(f"two in-place kernels for {n}")
            INPLACE[n] = fn
        return fn
    return deco


def _ref_counts(env: dict, name: str) -> tuple[int, int]:
    """(references to env[name], the most references to any array in its chain of bases), counted the same way
    for the probe and for real operands."""
    a = env[name]
    top, chain = sys.getrefcount(a), 0
    b = a.base if isinstance(a, np.ndarray) else None
    while b is not None:
        if not isinstance(b, np.ndarray):       # memory of another object (a buffer, a mapped file): never ours
            return top, 1 << 30
        chain = max(chain, sys.getrefcount(b))
        b = b.base
    return top, chain


def _probe_counts() -> tuple[int, int]:
    """`_ref_counts` of an operand that only the interpreter holds: one entry in env, one in the args list, and a
    view of a base that nothing else holds (conv outputs are reshaped views)."""
    env = {"x": np.empty(8, np.float32).reshape(2, 4)}
    args = [env["x"]]
    counts = _ref_counts(env, "x")
    del args
    return counts


_SOLE = _probe_counts()


class Listener:
    """Hooks around each op. `after_op` may return a replacement for the output (e.g. fake-quantized).

    after_op_reads_inputs: whether `after_op` reads its operands' values (the default, which is always safe).
    False lets ops run in place (module docstring): an operand handed to after_op may then hold the output."""

    after_op_reads_inputs = True

    def before_run(self, graph: Graph, feeds: dict[str, np.ndarray]): ...
    def before_op(self, node: Node, inputs: list): ...
    def after_op(self, node: Node, inputs: list, output: np.ndarray): ...
    def after_run(self, graph: Graph, outputs: dict[str, np.ndarray]): ...


_BOUND = ("top.none", "top.weight")   # ops the interpreter binds itself instead of calling a kernel


def _load_kernels():
    from . import kernels  # noqa: F401  (registers the table on first use)


class Interpreter:
    def __init__(self, graph: Graph, listeners: Iterable[Listener] = ()):
        _load_kernels()
        native.keep_freed_memory()       # activations freed and allocated again per op: no page faults each time
        self.graph = graph
        self.listeners = list(listeners)
        missing = sorted({n.op for n in graph.nodes if n.op not in KERNELS and n.op not in _BOUND})
        if missing:
            raise UserError(f"no interpreter kernel for: {', '.join(missing)}")
        # a kernel object with a `bind(graph)` method (the tpu precision dispatcher, which reads its operands'
        # types from the graph) is bound once per interpreter; the bound callable is what runs
        self._kernels: dict[str, Callable] = {}
        bound: dict[int, Callable] = {}
        for n in graph.nodes:
            if n.op in _BOUND or n.op in self._kernels:
                continue
            k = KERNELS[n.op]
            if hasattr(k, "bind"):
                if id(k) not in bound:
                    bound[id(k)] = k.bind(graph)
                k = bound[id(k)]
            self._kernels[n.op] = k
        # in-place variants, used only where every listener leaves the operands alone after the op
        self._inplace = {} if any(ls.after_op_reads_inputs for ls in self.listeners) else \
            {op: INPLACE[op] for op in self._kernels if op in INPLACE}
        # graph inputs (the caller's arrays) and weights (the graph's) are never written
        self._not_ours = {n.name for n in graph.nodes if n.op in ("top.input", "top.weight", "top.none")}
        # last use of each value, so tensors are freed as soon as nothing needs them
        self._last_use: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                if i is not None:
                    self._last_use[i] = k
        nodes = graph.node_map()
        self._declared_batch = {name: nodes[name].shape[0] if nodes[name].shape else 1 for name in graph.inputs}

    def run(self, feeds: dict[str, np.ndarray], keep: Iterable[str] | str = ()) -> dict[str, np.ndarray]:
        """Runs the graph on `feeds` (input name -> batch). Returns the outputs plus every name in `keep`
        (`keep="all"` keeps every tensor)."""
        with workers.blas_single():     # the kernels' pieces give the parallelism (see interp.workers)
            return self._run(feeds, keep)

    def _run(self, feeds, keep):
        g = self.graph
        for name in g.inputs:
            if name not in feeds:
                raise UserError(f"missing input '{name}' (inputs: {', '.join(g.inputs)})")
        batch = self._batch_factor(feeds)
        keep_all = keep == "all"
        keep = set() if keep_all else set(keep)
        keep.update(g.outputs)
        for ls in self.listeners:
            ls.before_run(g, feeds)
        env: dict[str, np.ndarray] = {}
        for k, n in enumerate(g.nodes):
            if n.op == "top.none":
                continue
            if n.op == "top.input":
                args = [self._check_feed(n, feeds[n.name], batch)]
            else:
                args = [None if i is None else env[i] for i in n.inputs]
            for ls in self.listeners:
                ls.before_op(n, args)
            if n.op == "top.weight":
                out = g.weights[n.attrs["name"]]
            elif n.op in self._inplace and not keep_all and self._donated(n, k, env, keep, self._shape(n, batch)):
                out = self._inplace[n.op](n, *args, shape=self._shape(n, batch))
            else:
                out = self._compute(n, args, batch)
            for ls in self.listeners:
                rep = ls.after_op(n, args, out)
                if rep is not None:
                    out = rep
            env[n.name] = out
            out = rep = None        # no stray reference: the in-place test counts them
            if not keep_all:
                for i in set(n.inputs):
                    if i is not None and self._last_use.get(i) == k and i not in keep:
                        del env[i]
                if n.name not in self._last_use and n.name not in keep:
                    env.pop(n.name, None)
        outputs = env if keep_all else {name: env[name] for name in keep if name in env}
        for ls in self.listeners:
            ls.after_run(g, outputs)
        return outputs

    def run_from(self, values, todo: Iterable[str], keep: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Runs only the ops named in `todo`, in program order, reading every other operand from `values` (the
        cached tensors of a run of a graph that computes them identically, e.g. the searches' reference run).
        Listeners are not called. Returns the computed tensors named in `keep`; the others are freed after
        their last use."""
        with workers.blas_single():
            return self._run_from(values, todo, keep)

    def _run_from(self, values, todo, keep):
        g = self.graph
        todo = set(todo)
        keep = set(keep)
        batch = self._batch_factor({name: values[name] for name in g.inputs})
        env: dict[str, np.ndarray] = {}
        order = [(k, n) for k, n in enumerate(g.nodes) if n.name in todo]
        last = {}
        for k, n in order:
            for i in n.inputs:
                if i is not None and i in todo:
                    last[i] = k
        for k, n in order:
            if n.op == "top.none":
                continue
            if n.op == "top.weight":
                out = g.weights[n.attrs["name"]]
            elif n.op == "top.input":
                out = self._check_feed(n, values[n.name], batch)
            else:
                args = [None if i is None else (env[i] if i in env else values[i]) for i in n.inputs]
                out = self._compute(n, args, batch)
            env[n.name] = out
            for i in set(n.inputs):
                if i is not None and last.get(i) == k and i not in keep:
                    env.pop(i, None)
            if n.name not in last and n.name not in keep:
                env.pop(n.name, None)
        return {name: env[name] for name in keep if name in env}

    @staticmethod
    def _shape(n: Node, batch: int) -> tuple:
        return tuple(n.shape if batch == 1 or not n.shape else (n.shape[0] * batch,) + tuple(n.shape[1:]))

    def _compute(self, n: Node, args: list, batch: int):
        """The op's kernel on `args`, for a batch of `batch` times the module's declared batch."""
        return self._kernels[n.op](n, *args, shape=self._shape(n, batch))

    def _donated(self, n: Node, k: int, env: dict, keep: set, shape: tuple) -> bool:
        """Whether op `n` (the k-th, result of `shape`) may write into its first operand: the module docstring's
        conditions."""
        src = n.inputs[0] if n.inputs else None
        if src is None or src in self._not_ours or src in keep or self._last_use.get(src) != k \
                or n.inputs.count(src) != 1:
            return False
        a = env[src]
        if type(a) is not np.ndarray or a.dtype != np.dtype(n.dtype) or a.dtype.kind != "f" \
                or not a.flags.writeable or a.shape != shape:
            return False
        del a
        top, chain = _ref_counts(env, src)
        return top <= _SOLE[0] and chain <= _SOLE[1]

    def _batch_factor(self, feeds) -> int:
        factors = set()
        for name in self.graph.inputs:
            x = np.asarray(feeds[name])
            b0 = self._declared_batch[name]
            if x.ndim == 0 or b0 == 0 or x.shape[0] % b0:
                raise UserError(f"input '{name}': batch of shape {x.shape} does not fit the declared batch {b0}")
            factors.add(x.shape[0] // b0)
        if len(factors) > 1:
            raise UserError(f"inputs have different batch sizes: {sorted(factors)}")
        return factors.pop() if factors else 1

    @staticmethod
    def _check_feed(n: Node, x, batch: int) -> np.ndarray:
        x = np.asarray(x)
        want = (n.shape[0] * batch,) + tuple(n.shape[1:]) if n.shape else ()
        if tuple(x.shape) != want:
            raise UserError(f"input '{n.name}': got shape {tuple(x.shape)}, the module expects "
                            f"{tuple(n.shape)} per batch of {n.shape[0] if n.shape else 1}")
        if x.dtype != np.dtype(n.dtype):
            if np.issubdtype(x.dtype, np.floating) != np.issubdtype(np.dtype(n.dtype), np.floating):
                raise UserError(f"input '{n.name}': got dtype {x.dtype}, the module expects {n.dtype}")
            x = x.astype(n.dtype)
        return x
