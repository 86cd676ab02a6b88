"""Pass infrastructure: the `Pass` base class, the registry of our passes, and pipelines that mix them with
upstream MLIR passes.

A pass is a dataclass whose fields are its options:

    @register
    @dataclass
    class TopFoo(Pass):
        '''Reads X, writes Y.'''
        argument: ClassVar[str] = "top-foo"
        input_num: int = option(100, "samples to read")

        def run(self, module: ir.Operation) -> None: ...

In a pipeline it is written `top-foo{input-num=10}` (dashes in option names stand for the underscores of the
fields; values are converted by the field's type). `Pass.__call__(op, pass_)` is what MLIR calls, so an instance
goes straight into `PassManager.add(obj, argument=...)`; errors a pass raises as `UserError`/`PassError` become
MLIR error diagnostics at the op's location and the pass fails.

Python passes cannot be named inside an MLIR pipeline string, so `build_pass_manager` splits a pipeline, adds
runs of consecutive upstream passes as text (`pm.add("canonicalize,cse")`) and each of ours as an object.
Pass modules in this folder register themselves; `registry()` imports them all on first use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import os
import pkgutil
import re
import sys
import tempfile
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from mlir import ir, passmanager

from tpu_cal.errors import UserError


class PassError(UserError):
    """A pass cannot do its work on this IR; `location` (an ir.Location, or an op) says where."""

    def __init__(self, message: str, location=None):
        super().__init__(message)
        self.location = location


class PipelineError(UserError):
    """A pipeline string names an unknown pass or gives a bad option."""


def option(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING):
    """A pass option: a dataclass field with a help text (shown by `tpu-cal-opt --list-passes`)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Pass:
    """Base class of our passes. Subclasses set `argument`, write a docstring saying what they read and write on
    the IR, declare options as dataclass fields and implement `run(module)`."""

    argument: ClassVar[str] = ""

    @property
    def __name__(self) -> str:       # PassManager.add names a callable pass by its __name__ by default
        return type(self).__name__

    # ----- what MLIR calls
    def __call__(self, op: ir.Operation, pass_=None) -> None:
        try:
            self.run(op)
        except UserError as e:
            loc = getattr(e, "location", None)
            loc = getattr(loc, "location", loc)      # an op was given
            if not isinstance(loc, ir.Location):
                loc = op.location
            loc.emit_error(f"{self.argument}: {e}")
            if pass_ is None:
                raise
            pass_.signal_pass_failure()

    def run(self, module: ir.Operation) -> None:
        raise NotImplementedError(f"{type(self).__name__}.run")

    def add_to(self, pm: passmanager.PassManager) -> None:
        """Adds this pass to a PassManager (never with op_name=: a Python pass on a module manager must run on
        the module itself, anything else aborts the process)."""
        pm.add(self, name=type(self).__name__, argument=self.argument, description=self.summary())

    # ----- descriptions
    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.split("\n\n")[0].replace("\n", " ").strip() if doc else ""

    @classmethod
    def options(cls) -> list["OptionInfo"]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            out.append(OptionInfo(f.name.replace("_", "-"), f.name, hints[f.name], default,
                                  f.metadata.get("help", "")))
        return out

    def pipeline_element(self) -> str:
        """This pass as pipeline text, options included: `top-foo{input-num=10 method=kld}`."""
        opts = " ".join(f"{o.name}={format_value(getattr(self, o.field))}" for o in self.options())
        return f"{self.argument}{{{opts}}}" if opts else self.argument


@dataclass(frozen=True)
class OptionInfo:
    name: str          # as written in a pipeline (dashes)
    field: str         # the dataclass field (underscores)
    type: Any
    default: Any
    help: str

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    def type_name(self) -> str:
        return _type_name(self.type)


# ----------------------------------------------------------------------------------------------------- values

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) if len(inner) == 1 else " or ".join(map(_type_name, inner))
    if origin in (list, tuple):
        return f"list of {_type_name(args[0]) if args else 'str'}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(m.name.lower() for m in tp)
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert_value(text: str, tp):
    """Converts option text to the field type; raises ValueError with a short reason."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and text.strip().lower() in ("", "none"):
            return None
        errors = []
        for a in inner:
            try:
                return convert_value(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(" or ".join(errors))
    if origin is Literal:
        for a in args:
            if str(a) == text:
                return a
        raise ValueError(f"expected one of {', '.join(str(a) for a in args)}")
    if origin in (list, tuple):
        elem = args[0] if args else str
        items = [] if text.strip() == "" else [t.strip() for t in _split_top(text, ",")]
        vals = [convert_value(_unquote(t), elem) for t in items]
        return vals if origin is list else tuple(vals)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true or false")
    if tp is int:
        try:
            return int(text.strip(), 0)
        except ValueError:
            try:
                return int(text.strip())
            except ValueError:
                raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for m in tp:
            if text.strip().lower() in (m.name.lower(), str(m.value).lower()):
                return m
        raise ValueError(f"expected one of {', '.join(m.name.lower() for m in tp)}")
    if isinstance(tp, type):        # pathlib.Path and friends
        return tp(text)
    raise ValueError(f"unsupported option type {tp}")


def format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, enum.Enum):
        return v.name.lower()
    if isinstance(v, (list, tuple)):
        return ",".join(format_value(x) for x in v)
    s = str(v)
    if s == "" or any(c in s for c in " \t{}'\""):
        return "{" + s + "}" if "}" not in s and "{" not in s else repr(s)
    return s


# --------------------------------------------------------------------------------------------------- registry

class PassRegistry:
    """Maps pipeline arguments (`top-dce`) to pass classes and parses pipelines into pass instances."""

    def __init__(self):
        self._passes: dict[str, type[Pass]] = {}

    def register(self, cls: type[Pass]) -> type[Pass]:
        if not dataclasses.is_dataclass(cls) or not issubclass(cls, Pass):
            raise TypeError(f"{cls.__name__}: a pass must be a dataclass deriving from Pass")
        if not cls.argument:
            raise TypeError(f"{cls.__name__}: set the class attribute `argument` (its name in pipelines)")
        old = self._passes.get(cls.argument)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise TypeError(f"pass argument '{cls.argument}' is taken by {old.__name__}")
        self._passes[cls.argument] = cls
        return cls

    def __contains__(self, argument: str) -> bool:
        return argument in self._passes

    def names(self) -> list[str]:
        return sorted(self._passes)

    def get(self, argument: str) -> type[Pass]:
        if argument not in self._passes:
            raise PipelineError(f"unknown pass '{argument}'; tpu_cal passes: {', '.join(self.names()) or 'none'}")
        return self._passes[argument]

    def create(self, argument: str, options: str | dict | None = None) -> Pass:
        """An instance from option text (`input-num=10 method=kld`) or a dict of option names to values."""
        cls = self.get(argument)
        infos = {o.name: o for o in cls.options()}
        if isinstance(options, dict):
            pairs = [(k.replace("_", "-"), v) for k, v in options.items()]
        else:
            pairs = parse_options(options or "", argument)
        kwargs = {}
        for name, value in pairs:
            info = infos.get(name)
            if info is None:
                known = ", ".join(infos) if infos else f"{argument} takes no options"
                raise PipelineError(f"{argument}: unknown option '{name}' (options: {known})")
            if info.field in kwargs:
                raise PipelineError(f"{argument}: option '{name}' given twice")
            if value is True and not isinstance(options, dict):     # a bare `flag` means flag=true
                if info.type_name() != "bool":
                    raise PipelineError(f"{argument}: option '{name}' needs a value ({info.type_name()})")
            elif isinstance(value, str):
                try:
                    value = convert_value(value, info.type)
                except ValueError as e:
                    raise PipelineError(f"{argument}: bad value '{value}' for option '{name}' "
                                        f"({info.type_name()}): {e}") from None
            kwargs[info.field] = value
        missing = [o.name for o in infos.values() if o.required and o.field not in kwargs]
        if missing:
            raise PipelineError(f"{argument}: missing required option(s) {', '.join(missing)}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:      # __post_init__ checks
            raise PipelineError(f"{argument}: {e}") from None

    def parse_pipeline(self, text: str) -> list[Pass | str]:
        """Splits a pipeline into our pass instances and upstream pipeline elements (text, validated).

        Accepts `a,b{x=1},c` and mlir-opt's `builtin.module(a,b,c)`; upstream elements may nest
        (`func.func(cse)`), ours must be at the top level because Python passes run on the module."""
        text = text.strip()
        m = re.fullmatch(r"builtin\.module\s*\((.*)\)", text, re.S)
        if m:
            text = m.group(1)
        out: list[Pass | str] = []
        for elem in _split_top(text, ","):
            elem = elem.strip()
            if not elem:
                if text.strip():
                    raise PipelineError(f"empty element in pipeline '{text}'")
                continue
            name, opts = _split_element(elem, text)
            if name in self._passes:
                out.append(self.create(name, opts))
            else:
                _check_upstream(elem, self)
                out.append(elem)
        return out


def _split_element(elem: str, pipeline: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"([\w.\-]+)\s*(?:\{(.*)\})?", elem, re.S)
    if not m:
        return elem, None      # nested upstream pipeline such as func.func(cse): validated by MLIR
    return m.group(1), m.group(2)


def _split_top(text: str, sep: str) -> list[str]:
    """Splits on `sep` outside (), {}, [] and quotes."""
    parts, depth, cur, quote = [], 0, [], None
    for c in text:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in "'\"":
            quote = c
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{c}' in '{text}'")
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if depth or quote:
        raise PipelineError(f"unbalanced brackets or quotes in '{text}'")
    parts.append("".join(cur))
    return parts


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and (s[0] == s[-1] in "'\"" or (s[0] == "{" and s[-1] == "}")):
        return s[1:-1]
    return s


def parse_options(text: str, argument: str = "pass") -> list[tuple[str, str | bool]]:
    """`a=1 b-c='x y' d={1, 2} flag` -> [(a, '1'), (b-c, 'x y'), (d, '1, 2'), (flag, True)] (MLIR's syntax)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        m = re.compile(r"[A-Za-z_][\w\-]*").match(text, i)
        if not m:
            raise PipelineError(f"{argument}: cannot parse options '{text}' at '{text[i:]}'")
        key, i = m.group(0), m.end()
        if i >= n or text[i].isspace():
            out.append((key, True))
            continue
        if text[i] != "=":
            raise PipelineError(f"{argument}: expected '=' after option '{key}' in '{text}'")
        i += 1
        start, depth, quote = i, 0, None
        while i < n:
            c = text[i]
            if quote:
                if c == quote:
                    quote = None
            elif c in "'\"":
                quote = c
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c.isspace() and depth == 0:
                break
            i += 1
        if quote or depth:
            raise PipelineError(f"{argument}: unbalanced quotes or braces in option '{key}'")
        out.append((key, _unquote(text[start:i])))
    return out


@contextlib.contextmanager
def _capture_stderr_fd():
    """Captures what C++ writes straight to file descriptor 2 (LLVM's option parser does), as a list of one str."""
    box = [""]
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield box
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box[0] = tmp.read().decode(errors="replace")


def _clean_mlir_message(msg: str) -> str:
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    return "; ".join(ln.strip().lstrip(":").strip() for ln in lines if ln.strip() != "^")


def _check_upstream(elem: str, reg: PassRegistry) -> None:
    """Adds the element to a scratch PassManager: unknown passes and bad options fail here, with a clear message,
    before anything runs (a failed add can leave a PassManager half-filled)."""
    ctx = ir.Context()
    pm = passmanager.PassManager("builtin.module", context=ctx)
    with _capture_stderr_fd() as leaked:
        try:
            pm.add(elem)
            return
        except ValueError as e:
            err = str(e)
    ours = [n for n in reg.names() if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", elem)]
    if ours:
        raise PipelineError(f"'{elem}': {', '.join(ours)} is a tpu_cal (Python) pass and runs on the whole module; "
                            f"put it at the top level of the pipeline, not inside an op-anchored pipeline")
    name = re.match(r"[\w.\-]*", elem).group(0)
    if "does not refer to a registered pass" in err:
        raise PipelineError(f"unknown pass '{name}': neither a tpu_cal pass ({', '.join(reg.names())}) "
                            f"nor a registered MLIR pass")
    detail = _clean_mlir_message(leaked[0] + "\n" + err)
    raise PipelineError(f"invalid pipeline element '{elem}': {detail}")


# ---------------------------------------------------------------------------------------------- pass managers

def add_to_pass_manager(pm: passmanager.PassManager, elements: list[Pass | str]) -> None:
    """Adds parsed pipeline elements: consecutive upstream ones together as one pipeline text, ours as objects."""
    run: list[str] = []
    for e in elements:
        if isinstance(e, str):
            run.append(e)
            continue
        if run:
            pm.add(",".join(run))
            run = []
        e.add_to(pm)
    if run:
        pm.add(",".join(run))


def build_pass_manager(pipeline: str | list, context: ir.Context | None = None, *, registry: PassRegistry | None = None,
                       print_ir_after_all: bool = False, print_ir_before_all: bool = False,
                       verify_each: bool = True) -> passmanager.PassManager:
    """A module PassManager for a pipeline string (or parsed elements / pass objects / upstream texts).

    IR printing goes to stderr, as mlir-opt's `--mlir-print-ir-after-all` does."""
    reg = registry or default_registry()
    elements = reg.parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    ctx = context or ir.Context.current
    pm = passmanager.PassManager("builtin.module", context=ctx)
    pm.enable_verifier(verify_each)
    if print_ir_after_all or print_ir_before_all:
        pm.enable_ir_printing(print_before_all=print_ir_before_all, print_after_all=print_ir_after_all)
    with ctx:
        add_to_pass_manager(pm, elements)
    return pm


# -------------------------------------------------------------------------------------------- diagnostics

@dataclass
class Diagnostic:
    """An MLIR diagnostic as plain data; file/line/col come from the first file location inside its location."""
    severity: str                  # error, warning, note, remark
    message: str
    file: str | None = None
    line: int = 0
    col: int = 0
    loc_text: str = ""             # the location as MLIR prints it, for locations without a file
    notes: list["Diagnostic"] = dataclasses.field(default_factory=list)

    @staticmethod
    def from_mlir(d, severity: str | None = None) -> "Diagnostic":
        sev = severity or str(d.severity).rsplit(".", 1)[-1].lower()
        file, line, col = file_location(d.location)
        loc = str(d.location)
        return Diagnostic(sev, d.message, file, line, col, loc[4:-1] if loc.startswith("loc(") else loc,
                          [Diagnostic.from_mlir(n, "note") for n in d.notes])

    def where(self) -> str:
        if self.file is not None:
            return f"{self.file}:{self.line}:{self.col}"
        return self.loc_text if self.loc_text and self.loc_text != "unknown" else ""

    def format(self, with_notes: bool = True) -> str:
        w = self.where()
        text = f"{w}: {self.severity}: {self.message}" if w else f"{self.severity}: {self.message}"
        if with_notes:
            text += "".join("\n" + n.format() for n in self.notes)
        return text


def file_location(loc) -> tuple[str | None, int, int]:
    """(file, line, col) of the first FileLineColLoc inside a location (name, callsite and fused ones included)."""
    try:
        if loc.is_a_file():
            return loc.filename, loc.start_line, loc.start_col
        if loc.is_a_name():
            return file_location(loc.child_loc)
        if loc.is_a_callsite():
            return file_location(loc.callee)
        if loc.is_a_fused():
            for sub in loc.locations:
                f = file_location(sub)
                if f[0] is not None:
                    return f
    except Exception:      # locations of kinds the bindings do not expose
        pass
    return None, 0, 0


class PipelineFailed(UserError):
    """Running a pipeline failed; `diagnostics` holds what MLIR reported."""

    def __init__(self, diagnostics: list[Diagnostic], message: str = "pass pipeline failed"):
        self.diagnostics = diagnostics
        body = "\n".join(d.format() for d in diagnostics)
        super().__init__(f"{message}:\n{body}" if body else message)


def run_pipeline(module, pipeline: str | list, *, registry: PassRegistry | None = None, **pm_options) -> None:
    """Runs a pipeline on a module (ir.Module or its operation); MLIR failures become PipelineFailed."""
    op = module.operation
    pm = build_pass_manager(pipeline, op.context, registry=registry, **pm_options)
    try:
        pm.run(op)
    except ir.MLIRError as e:
        raise PipelineFailed([Diagnostic.from_mlir(d) for d in e.error_diagnostics]) from None


# ------------------------------------------------------------------------------------------ default registry

_DEFAULT = PassRegistry()
_loaded = False


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: adds a pass to the default registry."""
    return _DEFAULT.register(cls)


def default_registry() -> PassRegistry:
    """The default registry with every pass module of this package imported (each registers itself)."""
    global _loaded
    if not _loaded:
        _loaded = True
        pkg = importlib.import_module(__package__)
        for m in pkgutil.iter_modules(pkg.__path__):
            if m.name != "registry" and not m.name.startswith("_"):
                importlib.import_module(f"{__package__}.{m.name}")
    return _DEFAULT

