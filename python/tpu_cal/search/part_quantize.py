"""Partial quantization (--part_quantize) and partial asymmetry (--part_asymmetric) of `tpu-cal calibrate`.

    float_ops_part(graph, "H_mode")                          # ops left in float: every type not quantized
    float_ops_part(graph, "custom_mode", ["Conv", "MatMul"])
    asymmetric_ops(graph)                                    # SiLU/GELU outputs read only by conv/matmul

Modes (TPU-MLIR's lists): N_mode quantizes relu, maxpool, conv, matmul, prelu, avgpool, add, sigmoid and deconv;
H_mode only conv, matmul, avgpool, deconv and maxpool (the MAC-array ops and pools, usually the more accurate
choice); custom_mode the op types of --custom_operator. Type names are accepted as TPU-MLIR writes them (Conv,
MatMul, top.MaxPool, LayerNorm) or as ours (conv, layer_norm): case and underscores do not matter.

Asymmetric ops: a SiLU or GELU output is one-sided (>= -0.28 and >= -0.17), so symmetric int8 wastes almost half
of its codes; when every reader is a conv or matmul — which take an asymmetric input through their zero point —
the op goes under the cali_table's `#asym_op` (TPU-MLIR's choose_asym_op).
"""
from __future__ import annotations

from ..errors import UserError
from ..graph import Graph
from ..lowering import _closest, is_float
from ..ops import TOP

MODES = ("N_mode", "H_mode", "custom_mode")
N_MODE = ("relu", "maxpool", "conv", "matmul", "prelu", "avgpool", "add", "sigmoid", "deconv")
H_MODE = ("conv", "matmul", "avgpool", "deconv", "maxpool")


def _key(name: str) -> str:
    name = name.strip()
    if name.lower().startswith("top."):
        name = name[4:]
    return name.replace("_", "").lower()


def quantized_types(mode: str, custom=()) -> set[str]:
    """Our short op names quantized in `mode`."""
    if mode == "N_mode":
        return set(N_MODE)
    if mode == "H_mode":
        return set(H_MODE)
    if mode != "custom_mode":
        raise UserError(f"--part_quantize {mode}: expected one of {', '.join(MODES)}")
    if not custom:
        raise UserError("--part_quantize custom_mode needs --custom_operator (op types to quantize, e.g. Conv,MatMul)")
    by_key = {_key(k): k for k in TOP}
    out, bad = set(), []
    for c in custom:
        k = by_key.get(_key(c))
        (out.add(k) if k else bad.append(c))
    if bad:
        raise UserError("--custom_operator: unknown op type(s): "
                        + "; ".join(f"'{b}'{_closest(_key(b), by_key)}" for b in bad))
    return out


def float_ops_part(graph: Graph, mode: str, custom=()) -> list[str]:
    """Real-valued compute ops whose type `mode` does not quantize, in graph order."""
    keep = quantized_types(mode, custom)
    return [n.name for n in graph.compute_nodes() if is_float(n) and n.op.split(".", 1)[1] not in keep]


def asymmetric_ops(graph: Graph) -> list[str]:
    from .patterns import View, _silu_outputs
    v = View(graph)
    cands = set(v.of("silu", "gelu")) | set(_silu_outputs(v))
    return [n for n in v.sorted(cands)
            if v.users[n] and all(v.op(u) in ("conv", "matmul") for u in v.users[n])]
