"""MLIR context with our dialects, and reading/writing modules with their weight files.

A module file `net.mlir` names its weights file in the module attribute `top.weight_file` (a path relative to the
module's folder); `top.weight` ops refer to arrays in it by name.
"""
from __future__ import annotations

import os

import numpy as np
from mlir import ir
from mlir.dialects import irdl

from .dialects import path as dialect_path
from .errors import UserError
from .fileio import atomic_path, read_npz, write_npz
from .graph import Graph

_IRDL_TEXT: dict[str, str] = {}


def context() -> ir.Context:
    """A fresh context with the top and tpu dialects loaded (no global state: each caller owns its context)."""
    ctx = ir.Context()
    with ctx:
        for d in ("top", "tpu"):
            if d not in _IRDL_TEXT:
                with open(dialect_path(d)) as f:
                    _IRDL_TEXT[d] = f.read()
            irdl.load_dialects(ir.Module.parse(_IRDL_TEXT[d]))
    return ctx


def parse(text: str, ctx: ir.Context, filename: str = "<input>") -> ir.Module:
    """Parses and verifies; MLIR diagnostics become a UserError naming the file and line."""
    with ctx:
        try:
            return ir.Module.parse(text)
        except ir.MLIRError as e:
            msgs = "; ".join(_diag_text(d, filename) for d in e.error_diagnostics) or str(e)
            raise UserError(f"{filename}: invalid module: {msgs}") from None


def _diag_text(d, filename: str) -> str:
    loc = str(d.location)
    if loc.startswith('loc("-":') or loc.startswith('loc("<input>":'):
        loc = loc.replace('"-"', filename).replace('"<input>"', filename)
    return f"{loc[4:-1]}: {d.message}" if loc.startswith("loc(") else d.message


def asm(module: ir.Module) -> str:
    """Readable text: locations inline and SSA values named after them."""
    return module.operation.get_asm(enable_debug_info=True, use_local_scope=True, use_name_loc_as_prefix=True)


def load_module(path: str, ctx: ir.Context) -> ir.Module:
    if not os.path.exists(path):
        raise UserError(f"{path}: file not found")
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    return parse(text, ctx, path)


def weight_path(module_path: str, graph_or_attrs) -> str | None:
    attrs = graph_or_attrs.attrs if isinstance(graph_or_attrs, Graph) else graph_or_attrs
    wf = attrs.get("weight_file")
    if not wf:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(module_path)), wf)


def load_graph(path: str, ctx: ir.Context | None = None) -> Graph:
    """Reads a module and its weights into a Graph; every referenced weight must exist with its declared shape."""
    ctx = ctx or context()
    module = load_module(path, ctx)
    with ctx:
        g = Graph.from_module(module)
    wp = weight_path(path, g)
    weights = read_npz(wp, "weight file") if wp else {}
    for n in g.nodes:
        if n.op == "top.weight":
            key = n.attrs["name"]
            if key not in weights:
                raise UserError(f"{path}: weight '{key}' of op '{n.name}' is missing from {wp}")
            if tuple(weights[key].shape) != tuple(n.shape):
                raise UserError(f"{path}: weight '{key}' has shape {weights[key].shape} in {wp}, "
                                f"but op '{n.name}' declares {tuple(n.shape)}")
    g.weights = weights
    return g


def save_graph(g: Graph, path: str, ctx: ir.Context | None = None) -> ir.Module:
    """Verifies the graph as MLIR, then writes `path` and its weights file (`<stem>_weights.npz`) atomically."""
    ctx = ctx or context()
    stem = os.path.splitext(os.path.basename(path))[0]
    wfile = f"{stem}_weights.npz"
    g.attrs["weight_file"] = wfile
    module = parse(g.to_mlir(), ctx, path)
    used = {n.attrs["name"] for n in g.nodes if n.op == "top.weight"}
    wdir = os.path.dirname(os.path.abspath(path))
    text = asm(module)
    with atomic_path(path) as tmp:
        write_npz(os.path.join(wdir, wfile), {k: np.asarray(g.weights[k], order="C") for k in sorted(used)})
        with open(tmp, "w") as f:
            f.write(text)
    return module
