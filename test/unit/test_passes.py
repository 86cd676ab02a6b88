"""Pass infrastructure: option parsing, the registry, pipelines mixing upstream and Python passes, top-dce on
graphs built with tpu_cal.graph, and the tpu-cal-opt driver's exit statuses."""
from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import pytest
from mlir import ir, passmanager

from tpu_cal import ir as tir
from tpu_cal.errors import UserError
from tpu_cal.graph import Graph, Node
from tpu_cal.opt import OptOptions, run as opt_run, split_input, parse_expectations
from tpu_cal.passes import (Pass, PassError, PassRegistry, PipelineError, PipelineFailed, TopDCE, add_to_pass_manager,
                            build_pass_manager, default_registry, get_pass, option, run_pipeline)
from tpu_cal.passes.registry import convert_value, parse_options


# ------------------------------------------------------------------------------------------ test passes

@dataclass
class Dummy(Pass):
    """Reads nothing, writes nothing: carries options of every supported kind."""
    argument: ClassVar[str] = "test-dummy"
    input_num: int = option(100, "samples")
    method: Literal["kld", "max", "octav"] = option("kld", "threshold method")
    use_mse: bool = option(False, "tune by MSE")
    scale: float = option(1.0, "a float")
    chip: str = option("bm1684x", "target")
    layers: list[int] = option([], "a list")
    names: list[str] = option([], "names")
    limit: Optional[float] = option(None, "optional")

    def run(self, module):
        pass


@dataclass
class Required(Pass):
    """Needs a file."""
    argument: ClassVar[str] = "test-required"
    file: str = option(help="a required option")

    def run(self, module):
        pass


@dataclass
class Fails(Pass):
    """Always reports an error at the first op named `at`."""
    argument: ClassVar[str] = "test-fail"
    at: str = option("top.relu", "op name")

    def run(self, module):
        found = []
        module.walk(lambda op: found.append(op) or ir.WalkResult.ADVANCE if op.name == self.at
                    else ir.WalkResult.ADVANCE)
        raise PassError(f"cannot handle {self.at}", found[0] if found else None)


@dataclass
class Bug(Pass):
    """Raises a non-user error (a bug): it must propagate, not be hidden as a diagnostic."""
    argument: ClassVar[str] = "test-bug"

    def run(self, module):
        raise KeyError("internal")


@pytest.fixture
def reg():
    r = PassRegistry()
    for cls in (Dummy, Required, Fails, Bug, TopDCE):
        r.register(cls)
    return r


# ------------------------------------------------------------------------------------------ options

def test_parse_options_syntax():
    assert parse_options("a=1 b-c='x y' d={1, 2} flag e=\"q\"") == [
        ("a", "1"), ("b-c", "x y"), ("d", "1, 2"), ("flag", True), ("e", "q")]
    assert parse_options("") == []
    assert parse_options("  a=1   ") == [("a", "1")]


@pytest.mark.parametrize("bad", ["=1", "a=1 2", "a='x", "a={1", "a:1"])
def test_parse_options_errors(bad):
    with pytest.raises(PipelineError):
        parse_options(bad)


def test_options_convert_by_field_type(reg):
    p = reg.create("test-dummy", "input-num=10 method=max use-mse scale=0.5 chip='cv 183x' layers=1,2,3 "
                                 "names={a,b} limit=2.5")
    assert p == Dummy(10, "max", True, 0.5, "cv 183x", [1, 2, 3], ["a", "b"], 2.5)
    assert isinstance(p.input_num, int) and isinstance(p.scale, float)
    assert reg.create("test-dummy", "use-mse=false limit=none").use_mse is False
    assert reg.create("test-dummy", "").limit is None
    assert reg.create("test-dummy", {"input_num": 3, "method": "octav"}).input_num == 3


def test_defaults_are_not_shared(reg):
    a, b = reg.create("test-dummy"), reg.create("test-dummy")
    a.layers.append(1)
    assert b.layers == []


@pytest.mark.parametrize("opts, words", [
    ("bogus=1", ["unknown option 'bogus'", "input-num"]),
    ("input_num=3", ["unknown option 'input_num'"]),
    ("input-num=ten", ["bad value 'ten'", "input-num", "integer"]),
    ("method=mse", ["bad value 'mse'", "kld, max, octav"]),
    ("use-mse=maybe", ["true or false"]),
    ("scale=x", ["expected a number"]),
    ("layers=1,x", ["layers"]),
    ("input-num", ["needs a value"]),
    ("input-num=1 input-num=2", ["given twice"]),
])
def test_option_errors(reg, opts, words):
    with pytest.raises(PipelineError) as e:
        reg.create("test-dummy", opts)
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, UserError)


def test_required_option(reg):
    with pytest.raises(PipelineError, match="missing required option.*file"):
        reg.create("test-required")
    assert reg.create("test-required", "file=x.cali").file == "x.cali"


def test_convert_value_types():
    assert convert_value("0x10", int) == 16
    assert convert_value("", list[int]) == []
    assert convert_value("1, 2", tuple[int, ...]) == (1, 2)
    assert convert_value("ON", bool) is True


def test_pipeline_element_round_trips(reg):
    p = reg.create("test-dummy", "input-num=7 chip='a b' layers=4,5 names=x,y limit=1.5 use-mse")
    text = p.pipeline_element()
    assert text.startswith("test-dummy{") and "input-num=7" in text
    assert reg.parse_pipeline(text) == [p]
    assert TopDCE().pipeline_element() == "top-dce"


def test_pass_descriptions(reg):
    assert Dummy.summary().startswith("Reads nothing")
    infos = {o.name: o for o in Dummy.options()}
    assert infos["input-num"].help == "samples" and infos["input-num"].default == 100
    assert infos["method"].type_name() == "kld|max|octav"
    assert Required.options()[0].required


# ------------------------------------------------------------------------------------------ registry

def test_default_registry_has_top_dce():
    assert "top-dce" in default_registry()
    assert isinstance(get_pass("top-dce"), TopDCE)
    with pytest.raises(PipelineError, match="top-dce takes no options"):
        get_pass("top-dce", "x=1")


def test_register_checks(reg):
    @dataclass
    class NoArg(Pass):
        pass

    with pytest.raises(TypeError, match="argument"):
        reg.register(NoArg)

    @dataclass
    class Clash(Pass):
        argument: ClassVar[str] = "test-dummy"

    with pytest.raises(TypeError, match="taken by Dummy"):
        reg.register(Clash)

    class NotAPass:
        argument = "x"

    with pytest.raises(TypeError, match="dataclass deriving from Pass"):
        reg.register(NotAPass)


def test_parse_pipeline_mixes_ours_and_upstream(reg):
    els = reg.parse_pipeline("canonicalize, cse,test-dummy{input-num=3},func.func(canonicalize{max-iterations=2}),"
                             "top-dce")
    assert els[0] == "canonicalize" and els[1] == "cse"
    assert els[2] == Dummy(input_num=3)
    assert els[3] == "func.func(canonicalize{max-iterations=2})"
    assert isinstance(els[4], TopDCE)
    assert reg.parse_pipeline("builtin.module(cse,top-dce)")[1] == TopDCE()
    assert reg.parse_pipeline("") == [] and reg.parse_pipeline("  ") == []


@pytest.mark.parametrize("pipeline, words", [
    ("top-nope", ["unknown pass 'top-nope'", "top-dce"]),
    ("cse,,top-dce", ["empty element"]),
    ("top-dce{", ["unbalanced"]),
    ("func.func(top-dce)", ["top-dce is a tpu_cal (Python) pass", "top level"]),
    ("canonicalize{max-iterations=abc}", ["canonicalize", "abc"]),
    ("canonicalize{nope=1}", ["no such option nope"]),
])
def test_pipeline_errors(reg, pipeline, words):
    with pytest.raises(PipelineError) as e:
        reg.parse_pipeline(pipeline)
    for w in words:
        assert w in str(e.value)


def test_consecutive_upstream_passes_are_added_together():
    calls = []

    class FakePM:
        def add(self, what, **kw):
            calls.append(what if isinstance(what, str) else kw["argument"])

    add_to_pass_manager(FakePM(), ["canonicalize", "cse", TopDCE(), "canonicalize", TopDCE(), TopDCE()])
    assert calls == ["canonicalize,cse", "top-dce", "canonicalize", "top-dce", "top-dce"]


def test_build_pass_manager_order():
    ctx = tir.context()
    pm = build_pass_manager("cse,top-dce,canonicalize", ctx)
    text = str(pm)
    assert text.index("cse") < text.index("top-dce") < text.index("canonicalize")


def test_pass_object_goes_straight_into_pass_manager():
    ctx = tir.context()
    m = tir.parse(_DEAD_TEXT, ctx)
    with ctx:
        pm = passmanager.PassManager("builtin.module")
        pm.add("canonicalize")
        pm.add(TopDCE(), argument="top-dce")
        pm.run(m.operation)
    assert '"top.exp"' not in tir.asm(m)


_DEAD_TEXT = """
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = "top.input"(%arg0) : (tensor<2xf32>) -> tensor<2xf32> loc("x")
  %1 = "top.relu"(%0) : (tensor<2xf32>) -> tensor<2xf32> loc("r")
  %2 = "top.exp"(%1) : (tensor<2xf32>) -> tensor<2xf32> loc("dead")
  return %1 : tensor<2xf32>
}
"""


def test_pass_error_becomes_diagnostic_at_op(reg):
    ctx = tir.context()
    m = tir.parse(_DEAD_TEXT, ctx)
    with pytest.raises(PipelineFailed) as e:
        run_pipeline(m, "cse,test-fail", registry=reg)
    (d,) = e.value.diagnostics
    assert d.severity == "error" and d.message == "test-fail: cannot handle top.relu"
    assert d.loc_text == '"r"'
    assert isinstance(e.value, UserError)


def test_python_bug_in_pass_propagates(reg):
    ctx = tir.context()
    m = tir.parse(_DEAD_TEXT, ctx)
    with pytest.raises(KeyError):
        run_pipeline(m, "test-bug", registry=reg)


def test_invalid_ir_after_pass_is_reported(reg):
    @dataclass
    class Breaks(Pass):
        """Creates an op without its declared attribute."""
        argument: ClassVar[str] = "test-breaks"

        def run(self, module):
            func = module.regions[0].blocks[0].operations[0]
            block = func.regions[0].blocks[0]
            with ir.InsertionPoint.at_block_begin(block), ir.Location.name("broken"):
                ir.Operation.create("top.softmax", results=[block.arguments[0].type], operands=[block.arguments[0]])

    reg.register(Breaks)
    ctx = tir.context()
    m = tir.parse(_DEAD_TEXT, ctx)
    with pytest.raises(PipelineFailed) as e:
        run_pipeline(m, "test-breaks", registry=reg)
    assert 'attribute "axis" is expected' in e.value.diagnostics[0].message


# ------------------------------------------------------------------------------------------ top-dce on graphs

def _graph():
    f32 = "float32"
    nodes = [
        Node("top.input", "x", [], shape=(1, 3, 8, 8), dtype=f32),
        Node("top.input", "unused_in", [], shape=(1, 4), dtype=f32),
        Node("top.weight", "conv_w", [], {"name": "conv_w"}, (4, 3, 3, 3), f32),
        Node("top.conv", "conv_Conv", ["x", "conv_w", None],
             dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
             (1, 4, 8, 8), f32),
        Node("top.relu", "relu_Relu", ["conv_Conv"], shape=(1, 4, 8, 8), dtype=f32),
        # a dead chain hanging off the live relu, with its own weight
        Node("top.weight", "dead_w", [], {"name": "dead_w"}, (1, 4, 8, 8), f32),
        Node("top.mul", "dead_Mul", ["relu_Relu", "dead_w"], shape=(1, 4, 8, 8), dtype=f32),
        Node("top.sigmoid", "dead_Sigmoid", ["dead_Mul"], shape=(1, 4, 8, 8), dtype=f32),
        Node("top.softmax", "dead_Softmax", ["dead_Sigmoid"], {"axis": 1}, (1, 4, 8, 8), f32),
        # a live op used twice, and a second output
        Node("top.add", "sum_Add", ["relu_Relu", "relu_Relu"], shape=(1, 4, 8, 8), dtype=f32),
        Node("top.concat", "cat_Concat", ["relu_Relu", "sum_Add"], {"axis": 1}, (1, 8, 8, 8), f32),
        Node("top.reduce", "dead_Reduce", ["cat_Concat"], dict(mode="mean", axes=[2, 3], keepdims=False),
             (1, 8), f32),
    ]
    return Graph("net", ["x", "unused_in"], ["sum_Add", "cat_Concat"], nodes)


def _run_dce(g: Graph, pipeline="top-dce") -> Graph:
    ctx = tir.context()
    m = tir.parse(g.to_mlir(), ctx)
    run_pipeline(m, pipeline)
    with ctx:
        m.operation.verify()
        return Graph.from_module(m)


def test_dce_on_graph_removes_dead_chains_and_keeps_live_ops():
    out = _run_dce(_graph())
    names = [n.name for n in out.nodes]
    assert names == ["x", "unused_in", "conv_w", "conv_Conv", "relu_Relu", "sum_Add", "cat_Concat"]
    assert out.inputs == ["x", "unused_in"]                  # graph inputs stay, even unused
    assert out.outputs == ["sum_Add", "cat_Concat"]
    conv = out.node_map()["conv_Conv"]
    assert conv.inputs == ["x", "conv_w", None]              # the none of the absent bias is live


def test_dce_with_upstream_passes_around_it():
    out = _run_dce(_graph(), "canonicalize,cse,top-dce,canonicalize")
    assert "dead_Softmax" not in [n.name for n in out.nodes] and len(out.nodes) == 7


def test_dce_nothing_dead_is_a_no_op():
    g = _graph()
    g.nodes = [n for n in g.nodes if not n.name.startswith("dead")]
    out = _run_dce(g)
    assert [n.name for n in out.nodes] == [n.name for n in g.nodes]


def test_dce_everything_dead_but_inputs():
    g = _graph()
    g.outputs = ["x"]
    out = _run_dce(g)
    assert [n.op for n in out.nodes] == ["top.input", "top.input"]


def test_dce_long_chain_in_one_run():
    f32 = "float32"
    nodes = [Node("top.input", "x", [], shape=(4,), dtype=f32)]
    for i in range(200):
        nodes.append(Node("top.relu", f"r{i}", [nodes[-1].name], shape=(4,), dtype=f32))
    g = Graph("chain", ["x"], ["x"], nodes)
    out = _run_dce(g)
    assert [n.name for n in out.nodes] == ["x"]


# ------------------------------------------------------------------------------------------ driver

def _opt(tmp_path, text, *, reg=None, **kw):
    f = tmp_path / "in.mlir"
    f.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    rc = opt_run(OptOptions(input=str(f), **kw), stdout=out, stderr=err, registry=reg)
    return rc, out.getvalue(), err.getvalue()


def test_driver_ok_and_output_file(tmp_path):
    rc, out, err = _opt(tmp_path, _DEAD_TEXT, pipeline="top-dce")
    assert rc == 0 and err == "" and '"top.exp"' not in out and 'loc("r")' in out
    target = tmp_path / "out.mlir"
    rc, out, _ = _opt(tmp_path, _DEAD_TEXT, pipeline="top-dce", output=str(target))
    assert rc == 0 and out == "" and '"top.relu"' in target.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_driver_exit_statuses(tmp_path, reg):
    assert _opt(tmp_path, _DEAD_TEXT, pipeline="top-nope")[0] == 2                     # unknown pass
    assert _opt(tmp_path, _DEAD_TEXT, pipeline="top-dce{x=1}")[0] == 2                 # bad option
    rc, out, err = _opt(tmp_path, "func.func @f( {", pipeline="top-dce")               # does not parse
    assert rc == 2 and "in.mlir:1:14: error:" in err and out == ""
    rc, out, err = _opt(tmp_path, _DEAD_TEXT, pipeline="test-fail", reg=reg)           # a pass fails
    assert rc == 1 and 'loc("r"): test-fail: cannot handle top.relu' in err
    target = tmp_path / "never.mlir"
    rc, _, _ = _opt(tmp_path, _DEAD_TEXT, pipeline="test-fail", reg=reg, output=str(target))
    assert rc == 1 and not target.exists()                                             # no output on failure
    rc, _, err = _opt(tmp_path, _DEAD_TEXT, output=str(tmp_path / "no" / "dir.mlir"))
    assert rc == 2 and "does not exist" in err
    err = io.StringIO()
    rc = opt_run(OptOptions(input=str(tmp_path / "missing.mlir")), stdout=io.StringIO(), stderr=err)
    assert rc == 2 and "file not found" in err.getvalue()


def test_driver_verify_diagnostics(tmp_path):
    text = ('func.func @f(%arg0: tensor<2xf32>) -> tensor<2xf32> {\n'
            '  // expected-error @+1 {{attribute "axis" is expected}}\n'
            '  %0 = "top.softmax"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>\n'
            '  return %0 : tensor<2xf32>\n}\n')
    assert _opt(tmp_path, text, verify_diagnostics=True)[0] == 0
    rc, _, err = _opt(tmp_path, text.replace('"axis"', '"axes"'), verify_diagnostics=True)
    assert rc == 1 and "was not produced" in err and "unexpected error" in err
    rc, _, err = _opt(tmp_path, text.replace("// expected-error", "// nothing"), verify_diagnostics=True)
    assert rc == 1 and "in.mlir:3:8: error: unexpected error" in err


def test_split_input_keeps_line_numbers():
    chunks = split_input("a\n// -----\nb\nc\n  // -----  \nd", True)
    assert [c[0] for c in chunks] == [1, 3, 6]
    assert chunks[1][1].split("\n")[2] == "b" and chunks[2][1].split("\n")[5] == "d"
    assert split_input("x", False) == [(1, "x")]


def test_expectation_designators():
    es = parse_expectations("op\n// expected-error @above {{a}}\n// expected-note @below {{b}}\n\nop2\n"
                            "x // expected-warning {{c}}\n// expected-remark @-2 {{d}}\n"
                            "// expected-error @unknown {{e}}\n")
    assert [(e.kind, e.line) for e in es] == [("error", 1), ("note", 5), ("warning", 6), ("remark", 5),
                                             ("error", 0)]


def test_console_script_has_no_traceback(tmp_path):
    f = tmp_path / "bad.mlir"
    f.write_text('func.func @f() {\n  %0 = "top.nope"() : () -> tensor<1xf32>\n  return\n}\n')
    r = subprocess.run([sys.executable, "-m", "tpu_cal.tools.tpu_cal_opt", str(f), "-p", "top-dce"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and f"{f}:2:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tpu_cal.tools.tpu_cal_opt", "--list-passes"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "top-dce" in r.stdout
