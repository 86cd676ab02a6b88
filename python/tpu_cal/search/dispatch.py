"""`tpu-cal calibrate --search ...`: checks the search flags before calibration starts (`prepare`), then runs
the search on the calibration's statistics and writes its outputs (`CalibrateSearch.run`).

search_qtable writes the qtable (--quantize_table), `new_cali_table.txt` and the `Search_Qtable` log next to the
-o table; search_threshold makes the best method's table the -o table and writes the `Search_Threshold` log.
Everything is computed before the first file is written.
"""
from __future__ import annotations

import os
import sys

from ..calibration import CalibrationConfig, CalibrationResult, method_table, tune_table
from ..chips import chip as get_chip
from ..dataset import Dataset
from ..errors import UserError
from ..fileio import check_writable
from ..formats.cali_table import CaliTable, make_header, write_cali_table
from ..formats.qtable import read_qtable, write_qtable
from ..graph import Graph
from ..lowering import FLOAT_MODES, with_pairs
from ..optimize.bias_correction import uncorrect
from . import qtable as qsearch
from . import threshold as tsearch
from .common import (MIX_MODES, check_expected_cos, compare_layers, float_type, inference_feeds,
                     load_post_process, method_list)
from .engine import Engine

SEARCHES = ("false", "search_qtable", "search_threshold")
BENCHMARKS = ("cos", "snr")
# inference samples run at once by the searches (at least --batch_size): larger batches run the kernels faster
# (EfficientNet-Lite0, 30 samples: 1.2x faster in one batch than in two), the cache holds every tensor anyway
ENGINE_BATCH = 64


def prepare(o, graph: Graph, ds: Dataset, tune_ds: Dataset | None = None):
    """None without --search; else a CalibrateSearch whose flags have all been checked."""
    s = str(o.search or "false").strip().lower()
    if s == "false":
        return None
    if s not in SEARCHES:
        raise UserError(f"--search '{o.search}' (choose from {', '.join(SEARCHES)})")
    return CalibrateSearch(s, o, graph, ds, tune_ds)


class CalibrateSearch:
    def __init__(self, kind: str, o, graph: Graph, ds: Dataset, tune_ds: Dataset | None):
        self.kind, self.o, self.graph, self.ds, self.tune_ds = kind, o, graph, ds, tune_ds
        self.reference_graph: Graph | None = None
        self.bias_corrections: dict = {}
        self.chip = get_chip(o.processor)
        if o.inference_num < 1:
            raise UserError(f"--inference_num must be >= 1, got {o.inference_num}")
        if o.workers < 0:
            raise UserError(f"--workers must be >= 0 (0: all cores), got {o.workers}")
        if o.benchmark_method not in BENCHMARKS:
            raise UserError(f"--benchmark_method '{o.benchmark_method}' (choose from cos, snr)")
        self.compare = compare_layers(o.global_compare_layers, graph)
        self.post = load_post_process(o.post_process)
        self.fixed = {}
        out_dir = os.path.dirname(os.path.abspath(o.output))
        self.log_path = os.path.join(out_dir, "Search_Qtable" if kind == "search_qtable" else "Search_Threshold")
        if kind == "search_qtable":
            check_expected_cos(o.expected_cos)
            if o.max_float_layers < 0:
                raise UserError(f"--max_float_layers must be >= 0, got {o.max_float_layers}")
            self.methods = method_list(o.quantize_method_list)
            if o.mix_mode not in MIX_MODES:
                raise UserError(f"--mix_mode '{o.mix_mode}' (choose from {', '.join(MIX_MODES)})")
            if o.mix_mode == "4_8":
                if "INT4" not in self.chip.precisions:
                    raise UserError(f"--mix_mode 4_8: {self.chip.name} has no INT4 (it has "
                                    f"{', '.join(self.chip.precisions)})")
                self.base_mode, self.float_mode = "INT4", "INT8"
            else:
                self.base_mode, self.float_mode = "INT8", float_type(self.chip, o.fp_type)
            if not o.quantize_table:
                raise UserError("--search search_qtable needs --quantize_table (where to write the qtable)")
            check_writable(o.quantize_table)
            self.new_table_path = os.path.join(out_dir, "new_cali_table.txt")
            if o.fixed_qtable:
                q = read_qtable(o.fixed_qtable)
                q.check_names(n.name for n in graph.nodes)
                self.fixed = dict(q.modes)

    def _engine(self, table: dict) -> Engine:
        feeds, _ = inference_feeds(self.ds, self.o.inference_num)
        return Engine(self.graph, table, self.chip, feeds, compare=self.compare, post_process=self.post,
                      batch_size=max(self.o.batch_size, min(self.o.inference_num, ENGINE_BATCH)),
                      workers=self.o.workers, fixed=self.fixed,
                      metric=self.o.benchmark_method if self.kind == "search_threshold" else "cos",
                      reference_graph=self.reference_graph, bias_corrections=self.bias_corrections)

    def run(self, res: CalibrationResult, method: str, reference_graph: Graph | None = None) \
            -> tuple[CalibrationResult, str, int]:
        """Runs the search; returns the calibration result whose table -o gets, its method name, the exit code.
        `reference_graph`: the float function to match when a rewrite (bias correction) changed the module's."""
        self.reference_graph = reference_graph
        self.bias_corrections = res.bias_corrections
        o = self.o
        model = os.path.basename(o.mlir_file)
        if self.kind == "search_threshold":
            cfg = CalibrationConfig(tune_num=o.tune_num, batch_size=o.batch_size)
            if method == "kl" and (res.tune_samples or o.tune_num == 0):
                kl = res.table                     # the calibration's own KLD (+ auto-tune)
            else:
                kl = method_table(self.graph, res.stats, res.op_types, "kl")
                if o.tune_num > 0:
                    kl = tune_table(self.graph, kl, res.stats, self.tune_ds or self.ds, cfg)[0]
            tables = {"kl+tune" if o.tune_num > 0 else "kl": kl}
            for m in tsearch.METHODS[1:]:
                tables[m] = res.table if m == method else method_table(self.graph, res.stats, res.op_types, m)
            engine = self._engine(res.table)
            tres = tsearch.run(engine, tables, model, o.benchmark_method)
            print(tsearch.report(tres, o.benchmark_method))
            tres.log.write(self.log_path)
            best = tres.best
            res.table = tables[best]
            return res, best, 0
        cfg = qsearch.QtableConfig(self.methods, o.expected_cos, o.max_float_layers, self.float_mode,
                                   self.base_mode, o.transformer, o.cluster)
        pre = {"kl": res.table} if method == "kl" and res.tune_samples else {}    # KLD + auto-tune as calibrated
        engine = self._engine(res.table)
        qres = qsearch.run(engine, self.graph, res.stats, res.op_types, cfg, model, self.fixed, pre)
        # the module written (--save_mlir) runs its float layers as the search measured them: uncorrected
        restored = uncorrect(self.graph, res.bias_corrections,
                             [n for n, m in with_pairs(self.graph, {**self.fixed, **qres.qtable}).items()
                              if m in FLOAT_MODES])
        if restored:
            print(f"bias correction taken back from {len(restored)} float layer(s): {', '.join(restored)}")
        write_outputs(qres, o.quantize_table, self.new_table_path, self.log_path, model, self.fixed,
                      f"search_qtable {','.join(self.methods)}", res.samples)
        print(qsearch.report(qres, o.quantize_table, cfg))
        return res, method, finish(qres, cfg, "search qtable")


def write_outputs(qres, qtable_path: str, table_path: str, log_path: str, model: str, fixed: dict, method: str,
                  samples: int) -> None:
    """The qtable (the user's fixed entries first), the new cali table and the log; each written atomically."""
    modes = dict(fixed)
    modes.update(qres.qtable)
    write_qtable(qtable_path, modes, [f"tpu_cal {method}: outputs cos {qres.mix_cos:.6f} (all int8 "
                                      f"{qres.int8_cos:.6f}) with {len(qres.qtable)} float layer(s)"])
    write_cali_table(table_path, CaliTable(thresholds=dict(qres.new_table),
                                           header=make_header(mlir=model, method=method, samples=samples)))
    qres.log.write(log_path)


def finish(qres, cfg, what: str) -> int:
    """Exit code of a layer search: 0 when --expected_cos was reached, else 1 with a message (the best mix found
    within --max_float_layers is written all the same)."""
    if qres.reached:
        print(f"success {what}")
        return 0
    print(f"warning: expected_cos {cfg.expected_cos} not reached within --max_float_layers "
          f"{cfg.max_float_layers}: the best mix found ({len(qres.qtable)} float layer(s)) reaches outputs cos "
          f"{qres.mix_cos:.6f}; it was written all the same", file=sys.stderr)
    return 1
