"""The library behind `tpu-cal-opt`, an mlir-opt-style driver for pipelines that mix our passes with upstream ones.

Input is parsed with file:line:col locations (the name of the file, `<stdin>` for standard input), the pipeline
runs, and the module is printed with its locations inline (`tpu_cal.ir.asm`). Problems come out as MLIR-style
diagnostics on stderr (`in.mlir:3:8: error: ...` with the source line and a caret), never as tracebacks.

Exit status:
  0  success (with --verify-diagnostics: every diagnostic was expected and every expectation met)
  1  the pipeline failed on valid input (a pass reported an error, or the IR a pass produced does not verify),
     or --verify-diagnostics found a mismatch; mlir-opt uses 1 for these too
  2  the user's input is wrong: bad command line, unknown pass, bad pass option, unreadable input file, input
     that does not parse or verify (tpu_cal's convention for user errors)
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from mlir import ir

from .errors import UserError
from .fileio import held_writes, write_text
from . import ir as tir
from .passes import Diagnostic, build_pass_manager, default_registry
from .passes.registry import format_value

EXIT_OK, EXIT_PIPELINE_FAILED, EXIT_USER_ERROR = 0, 1, 2
SPLIT_MARKER = re.compile(r"^[ \t]*// -----[ \t]*$", re.M)


@dataclass
class OptOptions:
    """Options of `tpu-cal-opt` (the command line is built from these fields)."""
    input: str = "-"                       # a file, or "-" for standard input
    pipeline: str = ""                     # e.g. "canonicalize,cse,top-dce"
    output: str = "-"                      # "-" for standard output; files are written atomically
    split_input_file: bool = False
    verify_diagnostics: bool = False
    print_ir_after_all: bool = False
    print_ir_before_all: bool = False
    dump_pass_pipeline: bool = False
    verify_each: bool = True
    list_passes: bool = False


@dataclass
class SourceError(Exception):
    diagnostics: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- parsing

def _diag_list(e: ir.MLIRError):
    return [Diagnostic.from_mlir(d) for d in e.error_diagnostics]


def parse_source(text: str, filename: str, ctx: ir.Context) -> ir.Operation:
    """Parses and verifies `text` into a builtin.module; locations carry `filename`. Several top-level ops, or one
    that is not a module, are wrapped in a module as mlir-opt does. Raises SourceError with the diagnostics."""
    with ctx:
        try:
            op = ir.Operation.parse(text, source_name=filename).operation
        except ir.MLIRError as e:
            diags = _diag_list(e)
            if not (len(diags) == 1 and "source must contain a single top-level operation" in diags[0].message):
                raise SourceError(diags) from None
            if "source must contain a single top-level operation, found: 0" in diags[0].message:
                return ir.Module.create(ir.Location.file(filename, 0, 0)).operation
            # several top-level ops: parse them inside a module opened on line 1 (columns of line 1 shift)
            shift = len("module {")
            try:
                return ir.Operation.parse("module {" + text + "\n}", source_name=filename).operation
            except ir.MLIRError as e2:
                diags = _diag_list(e2)
                for d in diags:
                    if d.file == filename and d.line == 1:
                        d.col = max(1, d.col - shift)
                raise SourceError(diags) from None
        if op.name == "builtin.module":
            return op
        module = ir.Module.create(ir.Location.file(filename, 0, 0))
        module.body.append(op)
        return module.operation


def split_input(text: str, split: bool) -> list[tuple[int, str]]:
    """[(first line number, chunk text padded with newlines so line numbers stay those of the whole file)]."""
    if not split:
        return [(1, text)]
    out, start, line = [], 0, 1
    for m in SPLIT_MARKER.finditer(text):
        out.append((line, "\n" * (line - 1) + text[start:m.start()]))
        line = text.count("\n", 0, m.end()) + 2
        start = min(len(text), m.end() + 1)
    out.append((line, "\n" * (line - 1) + text[start:]))
    return out


# ------------------------------------------------------------------------------------------ diagnostics

def format_diagnostic(d, filename: str, source_lines: list[str] | None = None, _parent=None) -> str:
    """MLIR's style: `file:line:col: error: message`, the source line and a caret, then the notes the same way."""
    if d.file is not None:
        head = f"{d.file}:{d.line}:{d.col}: {d.severity}: {d.message}"
    elif d.loc_text and d.loc_text != "unknown":
        head = f"{filename}: {d.severity}: loc({d.loc_text}): {d.message}"
    else:
        head = f"{filename}: {d.severity}: {d.message}"
    lines = [head]
    same_place = _parent is not None and (_parent.file, _parent.line, _parent.col) == (d.file, d.line, d.col)
    if source_lines is not None and d.file == filename and 1 <= d.line <= len(source_lines) and not same_place:
        src = source_lines[d.line - 1].rstrip("\n")
        lines += [src, " " * max(0, d.col - 1) + "^"]
    for n in d.notes:
        lines.append(format_diagnostic(n, filename, source_lines, d))
    return "\n".join(lines)


_EXPECT = re.compile(r"expected-(error|note|remark|warning)(-re)?[ \t]*(@([+-]\d+|above|below|unknown))?[ \t]*"
                     r"\{\{(.*)\}\}[ \t]*$")


@dataclass
class Expectation:
    kind: str
    pattern: re.Pattern | str
    line: int            # the line the diagnostic must be reported on; 0 for @unknown
    at_line: int         # where the designator is written
    at_col: int
    text: str
    matched: bool = False

    def matches(self, message: str) -> bool:
        if isinstance(self.pattern, str):
            return self.pattern in message
        return self.pattern.search(message) is not None


def _regex_of(text: str) -> re.Pattern:
    """`-re` designators: literal text with `{{regex}}` parts."""
    parts, i = [], 0
    for m in re.finditer(r"\{\{(.*?)\}\}", text):
        parts.append(re.escape(text[i:m.start()]))
        parts.append(f"(?:{m.group(1)})")
        i = m.end()
    parts.append(re.escape(text[i:]))
    return re.compile("".join(parts))


def parse_expectations(chunk: str) -> list[Expectation]:
    lines = chunk.split("\n")
    out: list[Expectation] = []
    pending_below: list[Expectation] = []
    last_plain = 0
    for no, text in enumerate(lines, 1):
        m = _EXPECT.search(text)
        if not m:
            if pending_below and text.strip():
                for e in pending_below:
                    e.line = no
                pending_below = []
            if text.strip():
                last_plain = no
            continue
        kind, is_re, _, where, msg = m.groups()
        pattern = _regex_of(msg) if is_re else msg
        e = Expectation(kind, pattern, no, no, m.start() + 1, msg)
        if where is None:
            pass
        elif where == "unknown":
            e.line = 0
        elif where == "above":
            e.line = last_plain
        elif where == "below":
            pending_below.append(e)
        else:
            e.line = no + int(where)
        out.append(e)
    return out


def verify_diagnostics(diags: list, chunk: str, filename: str) -> list[str]:
    """Checks reported diagnostics against the chunk's expected-* designators; returns the mismatches as
    formatted errors (empty when everything matched)."""
    expected = parse_expectations(chunk)
    problems: list[str] = []
    flat = []
    for d in diags:
        flat.append(d)
        # mlir-opt turns off "see current operation" notes under -verify-diagnostics; the bindings cannot
        flat += [n for n in d.notes if not n.message.startswith("see current operation:")]
    for d in flat:
        line = d.line if d.file == filename else 0
        for e in expected:
            if not e.matched and e.kind == d.severity and e.line == line and e.matches(d.message):
                e.matched = True
                break
        else:
            where = f"{d.file}:{d.line}:{d.col}" if d.file is not None else filename
            problems.append(f"{where}: error: unexpected {d.severity}: {d.message}")
    for e in expected:
        if not e.matched:
            problems.append(f'{filename}:{e.at_line}:{e.at_col}: error: expected {e.kind} "{e.text}" '
                            f"was not produced")
    return problems


# ------------------------------------------------------------------------------------------------ driver

def read_input(path: str) -> tuple[str, str]:
    """(text, the file name diagnostics use)."""
    if path in ("", "-"):
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def list_passes(out=None, registry=None) -> None:
    out = out or sys.stdout
    reg = registry or default_registry()
    print("tpu_cal passes (options as `name{key=value ...}`; dashes in option names):", file=out)
    for name in reg.names():
        cls = reg.get(name)
        print(f"  {name:<24} {cls.summary()}", file=out)
        for o in cls.options():
            default = "" if o.required else f" (default: {_fmt_default(o.default)})"
            print(f"      {o.name}={o.type_name()}{default}  {o.help}".rstrip(), file=out)
    print("Every upstream MLIR pass is available by its mlir-opt name (canonicalize, cse, "
          "func.func(...), ...); see `mlir-opt --help`.", file=out)


def _fmt_default(v) -> str:
    return format_value(v)


def run(opts: OptOptions, stdout=None, stderr=None, registry=None) -> int:
    """Runs the driver; returns the exit status. `registry` replaces the default pass registry (tests)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    registry = registry or default_registry()
    if opts.list_passes:
        list_passes(stdout, registry)
        return EXIT_OK
    try:
        elements = registry.parse_pipeline(opts.pipeline)
        text, filename = read_input(opts.input)
    except UserError as e:
        print(f"tpu-cal-opt: error: {e}", file=stderr)
        return EXIT_USER_ERROR
    source_lines = text.split("\n")
    ctx = tir.context()
    collected: list = []

    def handler(d):
        # errors inside parse / pm.run are captured by the bindings and come back with the MLIRError;
        # warnings and remarks (and errors emitted elsewhere) arrive here
        collected.append(Diagnostic.from_mlir(d))
        return True

    handle = ctx.attach_diagnostic_handler(handler)
    status, outputs = EXIT_OK, []
    try:
        for first_line, chunk in split_input(text, opts.split_input_file):
            collected.clear()
            failed_code = None
            try:
                module = parse_source(chunk, filename, ctx)
            except SourceError as e:
                collected.extend(e.diagnostics)
                failed_code = EXIT_USER_ERROR
                module = None
            if module is not None:
                pm = build_pass_manager(elements, ctx, print_ir_after_all=opts.print_ir_after_all,
                                        print_ir_before_all=opts.print_ir_before_all,
                                        verify_each=opts.verify_each)
                if opts.dump_pass_pipeline:
                    print(f"Pass Manager with {len(elements)} passes:\n{pm}", file=stderr)
                stdout.flush()
                stderr.flush()
                # files the passes write (top-to-tpu's weights) reach the disk only if the whole pipeline works
                with held_writes() as held:
                    try:
                        pm.run(module)
                    except ir.MLIRError as e:
                        collected.extend(_diag_list(e))
                        failed_code = EXIT_PIPELINE_FAILED
                sys.stderr.flush()
            if opts.verify_diagnostics:
                problems = verify_diagnostics(collected, chunk, filename)
                for p in problems:
                    print(p, file=stderr)
                if problems:
                    status = max(status, EXIT_PIPELINE_FAILED)
            else:
                for d in collected:
                    print(format_diagnostic(d, filename, source_lines), file=stderr)
                if failed_code is None and any(d.severity == "error" for d in collected):
                    failed_code = EXIT_PIPELINE_FAILED
                if failed_code is not None:
                    status = max(status, failed_code)
            if module is not None and failed_code is None:
                try:
                    held.commit()
                except UserError as e:
                    print(f"tpu-cal-opt: error: {e}", file=stderr)
                    status, failed_code = max(status, EXIT_USER_ERROR), EXIT_USER_ERROR
            # like mlir-opt: one slot per chunk, empty where the chunk failed, so separators line up
            outputs.append(tir.asm(module) if failed_code is None and module is not None else "")
    finally:
        handle.detach()
    result = "// -----\n".join(o if o.endswith("\n") or not o else o + "\n" for o in outputs)
    if opts.output in ("", "-"):
        stdout.write(result)
        stdout.flush()
    elif status == EXIT_OK:
        try:
            write_text(opts.output, result)
        except UserError as e:
            print(f"tpu-cal-opt: error: {e}", file=stderr)
            return EXIT_USER_ERROR
    return status
