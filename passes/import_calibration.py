"""top-import-calibration: attach a cali_table's thresholds to the ops of a module."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from mlir import ir

from tpu_cal.calibration import ATTR_MAX, ATTR_MIN, ATTR_TH
from tpu_cal.formats.cali_table import read_cali_table

from .registry import Pass, PassError, option, register


def ops_by_name(module: ir.Operation) -> dict[str, ir.Operation]:
    """top/tpu ops keyed by their name location (TPU-MLIR op names); weights and `none` left out."""
    out: dict[str, ir.Operation] = {}

    def visit(op):
        if op.name.startswith(("top.", "tpu.")) and op.name not in ("top.weight", "top.none"):
            loc = op.location
            if loc.is_a_name():
                out.setdefault(loc.name_str, op)
        return ir.WalkResult.ADVANCE

    module.walk(visit)
    return out


def set_thresholds(module: ir.Operation, table: dict, method: str | None = None) -> tuple[int, list[str]]:
    """Puts (threshold, min, max) on every op the table names; returns (ops set, table names not found)."""
    ops = ops_by_name(module)
    unknown = []
    with module.context:
        for name, (th, lo, hi) in table.items():
            op = ops.get(name)
            if op is None:
                unknown.append(name)
                continue
            for key, v in ((ATTR_TH, th), (ATTR_MIN, lo), (ATTR_MAX, hi)):
                op.attributes[key] = ir.FloatAttr.get_f64(float(v))
        module.attributes["top.state"] = ir.StringAttr.get("calibrated")
        if method:
            module.attributes["top.cali_method"] = ir.StringAttr.get(method)
    return len(table) - len(unknown), unknown


@register
@dataclass
class TopImportCalibration(Pass):
    """Reads a TPU-MLIR cali_table and attaches its thresholds to the ops it names.

    Reads: the table `file`; each op's name location. Writes: `cali.threshold`, `cali.min`, `cali.max` (f64) on
    every op named in the table, and `top.state = "calibrated"` on the module. A table that names none of the
    module's ops (made for another model) is an error; names it has beyond the module are reported on stderr.
    """

    argument: ClassVar[str] = "top-import-calibration"
    file: str = option(help="the cali_table to read")

    def run(self, module: ir.Operation) -> None:
        table = read_cali_table(self.file)
        n, unknown = set_thresholds(module, table.thresholds, table.method)
        if n == 0 and table.thresholds:
            raise PassError(f"{self.file}: none of its {len(table.thresholds)} entries names an op of this module "
                            f"(first: {', '.join(list(table.thresholds)[:3])}); was it made for another model?")
        if unknown:
            print(f"note: {self.file}: {len(unknown)} entries name no op of the module: "
                  f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}", file=sys.stderr)
