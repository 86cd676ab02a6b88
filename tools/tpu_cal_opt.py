"""tpu-cal-opt: run a pass pipeline (ours and upstream MLIR passes) on a top/tpu module, like mlir-opt.

    tpu-cal-opt in.mlir -p 'canonicalize,cse,top-dce' -o out.mlir
    cat in.mlir | tpu-cal-opt -p top-dce --mlir-print-ir-after-all

Exit status: 0 success; 1 the pipeline failed (a pass error, IR that no longer verifies) or --verify-diagnostics
found a mismatch; 2 a user error (bad flag, unknown pass or option, unreadable or invalid input).
"""
from __future__ import annotations

import argparse
import sys

from tpu_cal.opt import EXIT_USER_ERROR, OptOptions, run


class _Parser(argparse.ArgumentParser):
    def error(self, message):      # argparse's own exit code is 2 too; keep its usage line, say who complains
        self.print_usage(sys.stderr)
        print(f"tpu-cal-opt: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tpu-cal-opt", description=__doc__.split("\n\n")[0],
                epilog="Exit status: 0 ok; 1 pipeline failure or diagnostics mismatch; 2 user error.")
    p.add_argument("input", nargs="?", default="-", help="input .mlir file ('-' or absent: standard input)")
    p.add_argument("-p", "--pass-pipeline", "--pipeline", dest="pipeline", default="",
                   help="comma-separated passes, e.g. 'canonicalize,cse,top-dce' (or 'builtin.module(...)')")
    p.add_argument("-o", "--output", default="-", help="output file (written atomically; '-' for stdout)")
    p.add_argument("--split-input-file", action="store_true",
                   help="process each chunk between '// -----' lines separately")
    p.add_argument("--verify-diagnostics", action="store_true",
                   help="check diagnostics against expected-error/warning/note/remark {{...}} comments")
    p.add_argument("--mlir-print-ir-after-all", dest="print_ir_after_all", action="store_true",
                   help="print the IR to stderr after each pass")
    p.add_argument("--mlir-print-ir-before-all", dest="print_ir_before_all", action="store_true",
                   help="print the IR to stderr before each pass")
    p.add_argument("--dump-pass-pipeline", action="store_true", help="print the pass pipeline to stderr")
    p.add_argument("--no-verify-each", dest="verify_each", action="store_false",
                   help="do not run the verifier after each pass")
    p.add_argument("--list-passes", action="store_true", help="list tpu_cal's passes and their options")
    return p


def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    return run(OptOptions(**vars(ns)))


if __name__ == "__main__":
    sys.exit(main())
