"""`tpu-cal sensitive`: run_sensitive_layer (seed 002). The search of `tpu_cal.search.qtable` with the methods
MAX, Percentile9999 and KL (+ auto-tune) per layer, on a given calibration table.

    tpu-cal sensitive model.mlir --dataset images/ --input_num 100 --inference_num 30 \
        --calibration_table model_cali_table --processor bm1684x [--post_process pp.py] -o model_qtable

Writes the qtable (-o), `new_cali_table.txt` (the given table with each searched layer's best threshold) and the
`SensitiveLayerSearch` log next to it; prints the sensitive-layer list and the final cosines. Exit code 1 when
--expected_cos is not reached within --max_float_layers (the best mix found is written all the same).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import ir
from .calibration import CalibrationConfig, calibrate_graph
from .chips import chip as get_chip
from .cli import option
from .dataset import Dataset
from .errors import UserError
from .fileio import check_writable
from .formats.cali_table import read_cali_table
from .formats.qtable import read_qtable
from .preprocess import Preprocess
from .search import qtable as qsearch
from .search.common import (check_expected_cos, compare_layers, float_type, inference_feeds,
                            load_post_process)
from .search.dispatch import finish, write_outputs
from .search.engine import Engine

METHODS = ["max", "percentile9999", "kl"]        # TPU-MLIR's order


@dataclass
class SensitiveOptions:
    mlir_file: str = option(positional=True, help="the top-dialect module")
    output: str = option(required=True, aliases=("-o",), help="output qtable")
    calibration_table: str = option(required=True, help="cali_table of the module (from `tpu-cal calibrate`)")
    dataset: str = option(None, help="folder of images, .npy or .npz samples")
    data_list: str = option(None, help="text file, one sample per line")
    processor: str = option("bm1684x", aliases=("--chip",), help="target processor")
    fp_type: str = option("auto", choices=("auto", "F16", "BF16", "F32"),
                          help="precision of float layers (auto: F16, BF16 or F32 by chip)")
    input_num: int = option(10, help="samples for the per-method statistics")
    inference_num: int = option(10, help="samples the quantized model is measured on")
    max_float_layers: int = option(5, help="at most this many float layers")
    tune_list: str = option(None, help="sample list for auto-tune of the KL thresholds")
    tune_num: int = option(5, help="samples for auto-tune of the KL thresholds; 0 skips it")
    histogram_bin_num: int = option(2048, help="histogram bins for KLD")
    post_process: str = option(None, help="python file whose PostProcess(data) is applied before comparing")
    expected_cos: float = option(0.99, help="wanted output cosine of the mix, in [0, 1]")
    debug_cmd: str = option("", help="TPU-MLIR's debug_cmd (accepted; no effect)")
    global_compare_layers: str = option(None, help="compare these tensors instead of the outputs: a,b or "
                                                   "a:0.3,b:0.7")
    quantize_table: str = option(None, help="a qtable whose entries every candidate keeps (e.g. pattern-match's)")
    workers: int = option(0, help="worker processes (0: all cores)")
    batch_size: int = option(16, help="samples run through the interpreter at once")


def sensitive(o: SensitiveOptions) -> int:
    t0 = time.time()
    chip = get_chip(o.processor)
    check_expected_cos(o.expected_cos)
    if o.max_float_layers < 0:
        raise UserError(f"--max_float_layers must be >= 0, got {o.max_float_layers}")
    if o.inference_num < 1 or o.input_num < 0 or o.tune_num < 0:
        raise UserError("--inference_num must be >= 1, --input_num and --tune_num >= 0")
    if o.workers < 0:
        raise UserError(f"--workers must be >= 0 (0: all cores), got {o.workers}")
    check_writable(o.output)
    fmode = float_type(chip, o.fp_type)
    ctx = ir.context()
    g = ir.load_graph(o.mlir_file, ctx)
    compare = compare_layers(o.global_compare_layers, g)
    post = load_post_process(o.post_process)
    fixed = {}
    if o.quantize_table:
        q = read_qtable(o.quantize_table)
        q.check_names(n.name for n in g.nodes)
        fixed = dict(q.modes)
    cali = read_cali_table(o.calibration_table)
    names = {n.name for n in g.nodes if n.op not in ("top.weight", "top.none")}
    base = {k: v for k, v in cali.thresholds.items() if k in names}
    if not base:
        raise UserError(f"{o.calibration_table}: none of its {len(cali.thresholds)} entries names an op of "
                        f"{o.mlir_file}; was it made for another model?")
    pre = Preprocess.from_attrs(g.attrs.get("preprocess"))
    nodes = g.node_map()
    inputs = [nodes[n] for n in g.inputs]
    ds = Dataset(inputs, pre, o.dataset, o.data_list)
    tune_ds = Dataset(inputs, pre, data_list=o.tune_list) if o.tune_list else None
    # the statistics of every tensor give each method's thresholds; KL is auto-tuned as calibrate does
    res = calibrate_graph(g, ds, CalibrationConfig(method="kl", input_num=o.input_num, tune_num=o.tune_num,
                                                   histogram_bin_num=o.histogram_bin_num,
                                                   batch_size=o.batch_size), tune_ds)
    feeds, _ = inference_feeds(ds, o.inference_num)
    engine = Engine(g, base, chip, feeds, compare=compare, post_process=post, batch_size=o.batch_size,
                    workers=o.workers, fixed=fixed)
    cfg = qsearch.QtableConfig(list(METHODS), o.expected_cos, o.max_float_layers, fmode)
    model = os.path.basename(o.mlir_file)
    qres = qsearch.run(engine, g, res.stats, res.op_types, cfg, model, fixed, {"kl": res.table})
    out_dir = os.path.dirname(os.path.abspath(o.output))
    write_outputs(qres, o.output, os.path.join(out_dir, "new_cali_table.txt"),
                  os.path.join(out_dir, "SensitiveLayerSearch"), model, fixed, "sensitive MAX,Percentile9999,KL",
                  res.samples)
    qres.seconds = time.time() - t0
    print(qsearch.report(qres, o.output, cfg))
    return finish(qres, cfg, "sensitive layer search")
