"""`tpu-cal compare`: two result files compared tensor by tensor (TPU-MLIR's `npz_tool.py compare`).

    tpu-cal compare float.npz int8.npz [--tolerance 0.99,0.90] [--excepts a,b] [--plot DIR] [--plot_num 5]

The first file is the reference. Every key both files hold (minus --excepts) is compared: the per-layer table
of `tpu_cal.layer_report` (cosine, Euclidean similarity, SNR dB; worst cosine first), then the keys only one
file holds. Exit codes: 0 when every compared tensor is at or above the tolerance (cosine, and Euclidean
similarity when a second value is given), 1 when one is below, 2 for bad input (an unreadable or malformed
npz, named; no common keys; tensors whose shapes differ, all named at once; non-numeric arrays).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from .cli import float_list, name_list, option
from .errors import UserError
from .fileio import read_npz
from .layer_report import layer_rows, precision_table, sort_worst


@dataclass
class CompareOptions:
    reference: str = option(positional=True, help="reference .npz (e.g. the float run)")
    target: str = option(positional=True, help=".npz to judge against it (e.g. the quantized run)")
    tolerance: list = option([0.99, 0.90], parse=float_list,
                             help="minimum cosine[,euclidean similarity] per tensor (default 0.99,0.90)")
    excepts: list = option([], parse=name_list, help="comma-separated keys left out of the comparison")
    plot: str = option(None, metavar="DIR", help="write a float-vs-target plot of the worst tensors here")
    plot_num: int = option(5, help="how many of the worst tensors --plot draws")
    limit: int = option(0, help="table rows shown (0: all)")


def _listing(keys, n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_numeric(path: str, data: dict) -> None:
    bad = [k for k, v in data.items() if v.dtype.kind not in "biuf"]
    if bad:
        raise UserError(f"{path}: non-numeric array(s) {_listing(bad)} ({data[bad[0]].dtype})")


def compare_files(o: CompareOptions) -> tuple[str, list[dict], list[dict]]:
    """(text, rows, rows below tolerance) of the comparison; UserError for bad input."""
    tol = list(o.tolerance or [])
    if not 1 <= len(tol) <= 2:
        raise UserError("--tolerance: give cosine or cosine,euclidean (e.g. 0.99,0.90)")
    if o.plot_num < 0 or o.limit < 0:
        raise UserError("--plot_num and --limit must be >= 0")
    a = read_npz(o.reference, "npz file")
    b = read_npz(o.target, "npz file")
    _check_numeric(o.reference, a)
    _check_numeric(o.target, b)
    excepts = set(o.excepts or [])
    unknown = sorted(excepts - set(a) - set(b))
    if unknown:
        print(f"note: --excepts names no tensor of either file: {_listing(unknown)}", file=sys.stderr)
    common = [k for k in a if k in b and k not in excepts]
    only_a = [k for k in a if k not in b and k not in excepts]
    only_b = [k for k in b if k not in a and k not in excepts]
    if not common:
        raise UserError(f"{o.reference} and {o.target} have no tensor name in common"
                        f"{' (after --excepts)' if excepts & set(a) & set(b) else ''}: the first holds "
                        f"{_listing(a) or 'nothing'}; the second {_listing(b) or 'nothing'}")
    mism = [k for k in common if a[k].shape != b[k].shape]
    if mism:
        raise UserError(f"{len(mism)} tensor(s) differ in shape between {o.reference} and {o.target}: "
                        + "; ".join(f"'{k}' {list(a[k].shape)} vs {list(b[k].shape)}" for k in mism[:8])
                        + (f"; and {len(mism) - 8} more" if len(mism) > 8 else ""))
    rows = layer_rows(a, b, None, common)
    title = f"{os.path.basename(o.target)} vs {os.path.basename(o.reference)}, per tensor (worst cosine first):"
    text, bad = precision_table(rows, tol, title=title, limit=o.limit or None)
    parts = [text]
    if only_a:
        parts.append(f"only in {o.reference} ({len(only_a)}): {_listing(only_a, 20)}")
    if only_b:
        parts.append(f"only in {o.target} ({len(only_b)}): {_listing(only_b, 20)}")
    if o.plot and o.plot_num:
        from .plots import plot_layers
        fa = {k: a[k].astype(np.float32) for k in common}
        fb = {k: b[k].astype(np.float32) for k in common}
        paths = plot_layers(fa, fb, sort_worst(rows)[:o.plot_num], o.plot)
        parts.append(f"plots of the {len(paths)} worst tensor(s) -> {o.plot}")
    return "\n".join(parts), rows, bad


def compare(o: CompareOptions) -> int:
    text, _, bad = compare_files(o)
    print(text)
    if bad:
        names = ", ".join(f"'{r['name']}'" for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
        print(f"error: {len(bad)} tensor(s) below --tolerance {','.join(map(str, o.tolerance))}: {names}",
              file=sys.stderr)
        return 1
    return 0
