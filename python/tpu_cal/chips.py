"""Chip capabilities as data: one entry per chip family (what precisions it computes, what stays float).

`float_ops` are top ops kept in float by default, because their int8 forms lose too much (normalizations,
softmax) — TPU-MLIR does the same; a qtable can still ask for them explicitly. `fallback` maps a requested
float precision the chip lacks to the one it has (cv18xx has no F16, so F16 becomes BF16); a request with no
fallback is an error naming the op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

FLOAT_OPS_DEFAULT = ("layer_norm", "group_norm", "softmax", "log_softmax")


@dataclass(frozen=True)
class Chip:
    name: str
    precisions: tuple[str, ...]                 # what the chip computes
    float_type: str                             # precision for float_ops and `auto` float requests
    float_ops: tuple[str, ...] = FLOAT_OPS_DEFAULT
    fallback: dict = field(default_factory=dict)
    asymmetric: bool = True                     # per-tensor asymmetric int8 activations supported

    def resolve(self, mode: str, op_name: str) -> str:
        """The precision an op gets when `mode` is requested for it."""
        if mode in self.precisions:
            return mode
        if mode in self.fallback:
            return self.fallback[mode]
        raise UserError(f"op '{op_name}': {self.name} cannot compute {mode} "
                        f"(it has {', '.join(self.precisions)})")


_BM = dict(precisions=("F32", "F16", "BF16", "INT8"), float_type="F32")
_BM_INT4 = dict(precisions=("F32", "F16", "BF16", "INT8", "INT4"), float_type="F32")
_CV18 = dict(precisions=("BF16", "INT8"), float_type="BF16", fallback={"F16": "BF16", "F32": "BF16"},
             asymmetric=False)

CHIPS: dict[str, Chip] = {c.name: c for c in [
    Chip("bm1684x", **_BM),
    Chip("bm1688", **_BM_INT4),
    Chip("bm1690", **_BM_INT4),
    Chip("cv186x", **_BM_INT4),
    Chip("bm1684", precisions=("F32", "INT8"), float_type="F32", asymmetric=False),
    Chip("cv183x", **_CV18),
    Chip("cv182x", **_CV18),
    Chip("cv181x", **_CV18),
    Chip("cv180x", **_CV18),
]}


def chip(name: str) -> Chip:
    key = name.lower()
    if key not in CHIPS:
        raise UserError(f"unknown processor '{name}' (choose from: {', '.join(CHIPS)})")
    return CHIPS[key]


MIX_FLOAT_TYPES = ("auto", "F16", "BF16", "F32")


def mix_float_type(c: Chip, fp_type: str = "auto") -> str:
    """The float precision of the layers a mixed-precision table or search lifts out of int8 (fp_forward's,
    run_calibration's and run_sensitive_layer's --fp_type): `auto` is the chip's cheapest float (F16, else BF16,
    else F32: TPU-MLIR's choice, half the cost of F32 and enough for such layers); an explicit type maps as a
    qtable entry does (F16 -> BF16 on cv18xx), and one the chip cannot compute at all is an error."""
    t = str(fp_type).upper() if str(fp_type).lower() != "auto" else "auto"
    if t not in MIX_FLOAT_TYPES:
        raise UserError(f"--fp_type {fp_type}: expected one of {', '.join(MIX_FLOAT_TYPES)}")
    if t == "auto":
        return next(p for p in ("F16", "BF16", "F32") if p in c.precisions)
    if t not in c.precisions and t not in c.fallback:
        raise UserError(f"--fp_type {t}: {c.name} cannot compute {t} (it has {', '.join(c.precisions)})")
    return c.resolve(t, f"--fp_type {t}")
