"""Command-line front end: each command is an options dataclass plus a function; argparse is generated from it.

Flag spellings follow TPU-MLIR (`--model_def`, `--input_shapes`, ...). A field's metadata says how to parse it:
`parse` turns the flag's text into the value (errors become one line naming the flag), `choices` limits it,
`positional` makes it an argument, `aliases` adds spellings. Every UserError ends as one line on stderr and exit
code 2; nothing prints a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Callable

from .errors import UserError


def option(default=dataclasses.MISSING, help: str = "", parse: Callable | None = None, choices=None,
           positional: bool = False, aliases: tuple = (), required: bool = False, metavar: str | None = None,
           nargs=None):
    meta = dict(help=help, parse=parse, choices=choices, positional=positional, aliases=aliases,
                required=required, metavar=metavar, nargs=nargs)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----- flag value parsers (each raises ValueError with a readable reason)
def shape_list(text: str) -> list[list[int]]:
    """'[[1,3,224,224],[1,10]]' or '[1,3,224,224]' -> list of shapes."""
    try:
        v = json.loads(text.replace(" ", ""))
    except json.JSONDecodeError:
        raise ValueError(f"'{text}' is not a shape list like [[1,3,224,224]]") from None
    if isinstance(v, list) and v and all(isinstance(d, int) for d in v):
        v = [v]
    if not (isinstance(v, list) and v and all(isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s)
                                             for s in v)):
        raise ValueError(f"'{text}' is not a shape list of positive integers like [[1,3,224,224]]")
    return v


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"'{text}' is not a comma-separated list of numbers") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"'{text}' is not a comma-separated list of integers") from None


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2 (argparse would print the whole usage first)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        m = f.metadata
        kw = dict(help=m.get("help", ""), dest=f.name)
        if m.get("choices"):
            kw["choices"] = m["choices"]
        if m.get("metavar"):
            kw["metavar"] = m["metavar"]
        if m.get("nargs"):   # several shell words for one flag (fp_forward's --fpfwd_blocks a:b c:d)
            kw["nargs"] = m["nargs"]
        if m.get("positional"):
            kw.pop("dest")
            if f.default is not dataclasses.MISSING:
                kw["nargs"] = "?"
            parser.add_argument(f.name, **kw)
            continue
        names = [f"--{f.name}", *m.get("aliases", ())]
        if f.type in ("bool", bool) and not m.get("parse"):
            parser.add_argument(*names, action="store_true", **kw)
        else:
            kw["required"] = m.get("required", False)
            parser.add_argument(*names, **kw)


def build(cls, ns: argparse.Namespace):
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(ns, f.name, None)
        if v is None:
            continue
        parse = f.metadata.get("parse")
        if parse and isinstance(v, list) and f.metadata.get("nargs"):
            v = " ".join(v)
        if parse and isinstance(v, str):
            try:
                v = parse(v)
            except ValueError as e:
                raise UserError(f"--{f.name}: {e}") from None
        elif f.type in ("int", int) and isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise UserError(f"--{f.name}: '{v}' is not an integer") from None
        elif f.type in ("float", float) and isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise UserError(f"--{f.name}: '{v}' is not a number") from None
        values[f.name] = v
    return cls(**values)


def commands() -> dict:
    """name -> (options dataclass, run function, one-line help). Imported lazily so --help is fast."""
    from .calibrate_cmd import CalibrateOptions, calibrate
    from .compare_cmd import CompareOptions, compare
    from .export_qdq import ExportQdqOptions, export_qdq
    from .fp_forward_cmd import FpForwardOptions, fp_forward
    from .lower_cmd import LowerOptions, lower_file
    from .sensitive_cmd import SensitiveOptions, sensitive
    from .transform import TransformOptions, transform
    return {"transform": (TransformOptions, transform, "ONNX model -> top dialect MLIR + weights, checked "
                                                        "against ONNX Runtime"),
            "calibrate": (CalibrateOptions, calibrate, "streaming statistics over a dataset -> thresholds, "
                                                        "cali_table (run_calibration)"),
            "lower": (LowerOptions, lower_file, "top module + cali_table (+ qtable) -> tpu module for a processor: "
                                                "int8/f16/bf16/f32 ops, casts at the borders (model_deploy)"),
            "sensitive": (SensitiveOptions, sensitive, "sensitive-layer search: per-layer thresholds, float layers "
                                                       "-> qtable, new cali table (run_sensitive_layer)"),
            "compare": (CompareOptions, compare, "two result .npz files tensor by tensor: cosine, euclidean, SNR "
                                                 "(npz_tool compare)"),
            "export-qdq": (ExportQdqOptions, export_qdq, "top module + cali_table (+ qtable) -> ONNX with "
                                                         "QuantizeLinear/DequantizeLinear, for ONNX Runtime"),
            "fp-forward": (FpForwardOptions, fp_forward, "a qtable keeping the ops before, after or between named "
                                                         "ops in float (fp_forward)")}


def main(argv=None) -> int:
    cmds = commands()
    parser = _Parser(prog="tpu-cal", description="Post-training quantization calibrator and mixed-precision "
                                                 "planner (MLIR).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (cls, _, help_) in cmds.items():
        add_options(sub.add_parser(name, help=help_, description=help_), cls)
    ns = parser.parse_args(argv)
    cls, run, _ = cmds[ns.command]
    try:
        return run(build(cls, ns)) or 0
    except UserError as e:
        print(f"tpu-cal {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tpu-cal {ns.command}: interrupted", file=sys.stderr)
        return 130
