"""TPU-MLIR's quantize table (qtable): `op_name MODE` per line, `#` comments.

    # op_name   quantize_mode
    conv2d_450.tmp_0_Conv F16
    input3.1 F32

Modes: F32, F16, BF16, INT8, INT4. The reader names the file and line of every malformed entry; `check_names`
reports op names the module lacks, each with the closest existing names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..errors import UserError
from ..fileio import write_text

MODES = ("F32", "F16", "BF16", "INT8", "INT4")


@dataclass
class QTable:
    modes: dict[str, str] = field(default_factory=dict)     # op name -> mode, file order
    lines: dict[str, int] = field(default_factory=dict)     # op name -> line number (for messages)
    source: str = "<qtable>"

    def check_names(self, op_names) -> None:
        """Raises a UserError listing every entry that names no op of the module, with close matches."""
        names = set(op_names)
        bad = [n for n in self.modes if n not in names]
        if not bad:
            return
        pool = sorted(names)
        parts = []
        for n in bad[:10]:
            close = difflib.get_close_matches(n, pool, n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(close)})" if close else ""
            parts.append(f"line {self.lines.get(n, '?')}: '{n}'{hint}")
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise UserError(f"{self.source}: {len(bad)} op name(s) not in the module: {'; '.join(parts)}{more}")


def parse_qtable(text: str, source: str = "<qtable>") -> QTable:
    t = QTable(source=source)
    for k, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{source}:{k}: expected 'op_name MODE', got {raw.strip()!r}")
        name, mode = parts[0], parts[1].upper()
        if mode not in MODES:
            raise UserError(f"{source}:{k}: unknown mode '{parts[1]}' for '{name}' (expected one of "
                            f"{', '.join(MODES)})")
        if name in t.modes:
            raise UserError(f"{source}:{k}: '{name}' already given on line {t.lines[name]}")
        t.modes[name] = mode
        t.lines[name] = k
    return t


def read_qtable(path: str) -> QTable:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: quantize table not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the quantize table ({e})") from None
    return parse_qtable(text, path)


def format_qtable(modes: dict[str, str], comments: list[str] = ()) -> str:
    out = [f"# {c}" for c in comments] + ["# op_name   quantize_mode"]
    for name, mode in modes.items():
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} for {name!r}")
        if not name or any(ch.isspace() for ch in name) or name.startswith("#"):
            raise ValueError(f"op name {name!r} cannot be written to a qtable")
        out.append(f"{name} {mode}")
    return "\n".join(out) + "\n"


def write_qtable(path: str, modes: dict[str, str], comments: list[str] = ()) -> None:
    write_text(path, format_qtable(modes, comments))
