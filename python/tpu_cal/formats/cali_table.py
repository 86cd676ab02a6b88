"""TPU-MLIR's calibration table (cali_table): reader and writer.

Layout, as TPU-MLIR's run_calibration writes it (the misspelling "genetated" is TPU-MLIR's own and kept so
tools that grep for it still work):

    # mlir version: tpu_cal 0.1.0 cali version 1.0
    # mlir: model.mlir
    # genetated time: 2025-01-01 12:00:00.000000
    # quantization threshold calculation method: kl
    # histogram number: 2048
    # sample number: 100
    ###
    # tune number: 0
    ###
    # op_name    threshold    min    max
    images 2.6400001 -2.1179039 2.6400001
    conv1_Conv 5.1234567 -7.2000000 9.1000000

    #int4_th
    conv1_Conv 1.2000000 -1.3714286 1.2000000

    #asym_op
    silu1_SiLU

Data lines are ``op_name threshold min max`` separated by whitespace. Marker comments switch the section
for the lines after them: ``#int4_th`` (int4 thresholds, same four fields), ``#asym_op`` and ``#int4_op``
(one op name per line), ``#weight_scale`` (``name n s1 .. sn [...]``, per-channel scales from MQBench
exports) and ``#tpu-mlir-fp8`` / ``mqbench-fp8`` (fp8 thresholds, four fields). Other ``#`` lines are
comments; ``# key: value`` comments before the first data line form the header. CRLF line ends, blank
lines and runs of spaces are accepted.

Unlike TPU-MLIR's importer, which skips lines it cannot match, the reader rejects every malformed entry
with a UserError naming the file and line: a wrong number of fields, a non-numeric value, a non-finite
number, a threshold that is not positive, min > max, or an op listed twice in one section.
Numbers are written with 7 decimals (TPU-MLIR's ``%.7f``); values below 1e-3 in magnitude are written
``1.2345678e-09`` instead so that no positive threshold is ever written as 0 (TPU-MLIR's importer pattern
``[-0-9.e]+`` accepts both forms).
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

from ..errors import UserError
from ..fileio import write_text

Entry = tuple[float, float, float]           # (threshold, min, max)

# header keys in the order TPU-MLIR writes them
HEADER_KEYS = ("mlir version", "mlir", "genetated time", "quantization threshold calculation method",
               "histogram number", "sample number", "tune number")


@dataclass
class CaliTable:
    """A calibration table. `thresholds` keeps file order. `header` maps header keys (HEADER_KEYS and any
    other ``# key: value`` line before the data) to their text."""
    thresholds: dict[str, Entry] = field(default_factory=dict)
    int4: dict[str, Entry] = field(default_factory=dict)
    fp8: dict[str, Entry] = field(default_factory=dict)
    asym: list[str] = field(default_factory=list)
    int4_ops: list[str] = field(default_factory=list)
    weight_scales: dict[str, list[float]] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        return self.header.get("quantization threshold calculation method")

    def _int(self, key: str) -> int | None:
        try:
            return int(self.header[key])
        except (KeyError, ValueError):
            return None

    @property
    def sample_number(self) -> int | None:
        return self._int("sample number")

    @property
    def histogram_number(self) -> int | None:
        return self._int("histogram number")

    @property
    def tune_number(self) -> int | None:
        return self._int("tune number")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("tpu_cal")
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


def make_header(*, mlir: str | None = None, method: str | None = None, histogram_bins: int | None = None,
                samples: int | None = None, tune_num: int | None = None,
                time: datetime.datetime | None = None) -> dict[str, str]:
    """The header TPU-MLIR writes, for a table made now by tpu_cal."""
    h = {"mlir version": f"tpu_cal {_version()} cali version 1.0"}
    if mlir is not None:
        h["mlir"] = mlir
    h["genetated time"] = str(time or datetime.datetime.now())
    if method is not None:
        h["quantization threshold calculation method"] = method
    if histogram_bins is not None:
        h["histogram number"] = str(histogram_bins)
    if samples is not None:
        h["sample number"] = str(samples)
    if tune_num is not None:
        h["tune number"] = str(tune_num)
    return h


# ----------------------------------------------------------------------------- writing
def _num(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"non-finite value {v}")
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.7e}"
    return f"{v:.7f}"


def _check_name(name: str) -> str:
    if not name or any(ch.isspace() for ch in name) or name.startswith("#"):
        raise ValueError(f"op name {name!r} cannot be written to a cali_table (empty, whitespace or leading '#')")
    return name


def _entry_lines(entries: dict[str, Entry]) -> list[str]:
    out = []
    for name, (th, lo, hi) in entries.items():
        if not (math.isfinite(th) and th > 0):
            raise ValueError(f"op '{name}': threshold {th} is not positive and finite")
        out.append(f"{_check_name(name)} {_num(th)} {_num(lo)} {_num(hi)}")
    return out


def format_cali_table(table: CaliTable) -> str:
    """The table as text, header first, in TPU-MLIR's layout."""
    lines = []
    header = dict(table.header)
    for key in HEADER_KEYS[:6]:
        if key in header:
            lines.append(f"# {key}: {header.pop(key)}")
    tune = header.pop("tune number", None)
    for key, value in header.items():
        lines.append(f"# {key}: {value}")
    lines.append("###")
    if tune is not None:
        lines.append(f"# tune number: {tune}")
        lines.append("###")
    lines.append("# op_name    threshold    min    max")
    lines += _entry_lines(table.thresholds)
    if table.int4:
        lines += ["", "#int4_th"] + _entry_lines(table.int4)
    if table.fp8:
        lines += ["", "#tpu-mlir-fp8 caliration table"] + _entry_lines(table.fp8)
    if table.weight_scales:
        lines += ["", "#weight_scale"]
        for name, scales in table.weight_scales.items():
            lines.append(" ".join([_check_name(name), str(len(scales))] + [_num(s) for s in scales]))
    if table.int4_ops:
        lines += ["", "#int4_op"] + [_check_name(n) for n in table.int4_ops]
    if table.asym:
        lines += ["", "#asym_op"] + [_check_name(n) for n in table.asym]
    return "\n".join(lines) + "\n"


def write_cali_table(path: str, table: CaliTable) -> None:
    """Writes atomically: the file appears complete or not at all."""
    write_text(path, format_cali_table(table))


# ----------------------------------------------------------------------------- reading
def _section_of(comment: str) -> str | None:
    body = comment.lstrip("#").strip().lower()
    if body.startswith("int4_th"):
        return "int4"
    if body.startswith("asym_op"):
        return "asym"
    if body.startswith("int4_op"):
        return "int4_ops"
    if body.startswith("weight_scale"):
        return "weight_scales"
    if "tpu-mlir-fp8" in body or "mqbench-fp8" in body:
        return "fp8"
    return None


def parse_cali_table(text: str, source: str = "<cali_table>") -> CaliTable:
    table = CaliTable()
    section = "thresholds"
    seen_data = False
    first_line: dict[tuple[str, str], int] = {}

    def fail(lineno: int, msg: str, line: str):
        raise UserError(f"{source}:{lineno}: {msg}: '{line.strip()}'")

    def number(lineno: int, tok: str, what: str, line: str) -> float:
        try:
            v = float(tok)
        except ValueError:
            fail(lineno, f"{what} '{tok}' is not a number", line)
        if not math.isfinite(v):
            fail(lineno, f"{what} {tok} is not finite", line)
        return v

    def claim(lineno: int, name: str, line: str):
        key = (section, name)
        if key in first_line:
            fail(lineno, f"op '{name}' is listed twice (first at line {first_line[key]})", line)
        first_line[key] = lineno

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            new = _section_of(line)
            if new is not None:
                section = new
            elif not seen_data:
                body = line.lstrip("#").strip()
                key, sep, value = body.partition(":")
                if sep and key.strip() and not key.strip().startswith("op_name"):
                    table.header[key.strip()] = value.strip()
            continue
        seen_data = True
        fields = line.split()
        if section in ("asym", "int4_ops"):
            if len(fields) != 1:
                fail(lineno, f"expected one op name per line in the #{'asym_op' if section == 'asym' else 'int4_op'}"
                             f" block, got {len(fields)} fields", line)
            claim(lineno, fields[0], line)
            getattr(table, section).append(fields[0])
        elif section == "weight_scales":
            if len(fields) < 2:
                fail(lineno, "expected 'name count scale...' in the #weight_scale block", line)
            try:
                n = int(fields[1])
            except ValueError:
                fail(lineno, f"scale count '{fields[1]}' is not an integer", line)
            if n < 0 or len(fields) < 2 + n:
                fail(lineno, f"expected {n} scales after the count, got {len(fields) - 2}", line)
            claim(lineno, fields[0], line)
            table.weight_scales[fields[0]] = [number(lineno, t, "scale", line) for t in fields[2:2 + n]]
        else:
            if len(fields) != 4:
                fail(lineno, f"expected 'op_name threshold min max' (4 fields), got {len(fields)}", line)
            name = fields[0]
            th = number(lineno, fields[1], "threshold", line)
            lo = number(lineno, fields[2], "min", line)
            hi = number(lineno, fields[3], "max", line)
            if th <= 0:
                fail(lineno, f"threshold {fields[1]} is not positive", line)
            if lo > hi:
                fail(lineno, f"min {fields[2]} is greater than max {fields[3]}", line)
            claim(lineno, name, line)
            getattr(table, section)[name] = (th, lo, hi)
    return table


def read_cali_table(path: str) -> CaliTable:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: calibration table not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text calibration table ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read calibration table ({e.strerror})") from None
    return parse_cali_table(text, path)
