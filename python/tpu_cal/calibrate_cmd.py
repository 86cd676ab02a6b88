"""`tpu-cal calibrate`: run_calibration's flags, spellings and defaults (seeds 000 and 002)."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

from . import ir, optimize, search
from .calibration import CalibrationConfig, attach
from .chips import MIX_FLOAT_TYPES
from .cli import name_list, option
from .dataset import Dataset
from .errors import UserError
from .fileio import check_writable
from .formats.cali_table import CaliTable, make_header, write_cali_table
from .lowering import activation_pairs
from .preprocess import Preprocess
from .report import table
from .search.common import parse_bool
from .search.part_quantize import MODES as PART_MODES
from .search.patterns import plan_tables
from .thresholds import canonical_method

CALI_METHODS = ("use_kl", "use_mse", "use_max", "use_percentile9999", "use_aciq_gauss", "use_aciq_laplace",
                "use_torch_observer_for_cali")


@dataclass
class CalibrateOptions:
    mlir_file: str = option(positional=True, help="the top-dialect module from `tpu-cal transform`")
    output: str = option(required=True, aliases=("-o",), help="output cali_table")
    dataset: str = option(None, help="folder of images, .npy or .npz samples")
    data_list: str = option(None, help="text file, one sample per line (comma-separated files for multi-input)")
    input_num: int = option(0, help="number of calibration samples (0: all of the dataset)")
    tune_list: str = option(None, help="sample list for auto-tune (default: the calibration samples)")
    tune_num: int = option(10, help="samples for auto-tune of kld/aciq thresholds; 0 skips it")
    histogram_bin_num: int = option(2048, help="histogram bins for KLD (a power of two)")
    cali_method: str = option("use_kl", choices=CALI_METHODS, help="threshold method (default KLD)")
    debug_cmd: str = option("", help="TPU-MLIR's debug_cmd; a method name in it (use_mse, use_max, "
                                     "percentile9999, use_torch_observer_for_cali) selects that method")
    kurtosis_analysis: bool = option(False, help="print the kurtosis of every activation")
    print_stats: bool = option(False, help="print a per-tensor statistics table")
    save_mlir: str = option(None, help="write the calibrated module (thresholds attached) and its weights here")
    batch_size: int = option(16, help="samples run through the interpreter at once")
    processor: str = option("bm1684x", aliases=("--chip",), help="target processor of the searches, the "
                                                                 "mixed-precision tables and the bias correction")
    fp_type: str = option("auto", choices=MIX_FLOAT_TYPES, help="float type of the qtables' ops and of "
                                                                 "search_qtable's float layers (auto: F16 where the "
                                                                 "processor has it)")
    part_quantize: str = option(None, choices=PART_MODES, help="quantize only some op types (N_mode, H_mode, "
                                                               "custom_mode); the others go into the qtable")
    custom_operator: list = option([], parse=name_list, help="op types custom_mode quantizes, e.g. Conv,MatMul")
    part_asymmetric: bool = option(False, help="SiLU/GELU outputs read only by conv/matmul become asymmetric "
                                               "(#asym_op)")
    # rewrites (tpu_cal.optimize), applied in the seeds' order sq, smc, we, bc
    sq: bool = option(False, help="SmoothQuant: move activation outliers of matmul/conv inputs into the weights")
    sq_alpha: float = option(0.5, help="SmoothQuant migration strength alpha in [0, 1]")
    smc: bool = option(False, help="softmax correction: attention probabilities / S quantized, output times S")
    we: bool = option(False, help="cross-layer weight equalization of conv->conv and conv->relu->conv")
    bc: bool = option(False, help="bias correction of conv/matmul outputs below --min_layer_cos")
    bc_inference_num: int = option(30, help="samples for bias correction")
    min_layer_cos: float = option(0.99, help="bias correction fixes layers whose int8 output cosine is below this")
    bc_part: str = option("output", choices=("output", "weights"),
                          help="bias correction: all the mean error a layer adds (output), or only its int8 "
                               "weights' share E[x (W_q - W)] (weights: best on EfficientNet-Lite0)")
    # searches (seeds 000/002: run_calibration's search flags); tpu_cal.search runs them
    search: str = option("false", choices=("false", "search_qtable", "search_threshold"),
                         help="search_qtable (mixed precision), search_threshold (best method), false")
    inference_num: int = option(30, help="samples the searches measure the quantized model on")
    expected_cos: float = option(0.99, help="search_qtable: wanted output cosine of the mix, in [0, 1]")
    max_float_layers: int = option(5, help="search_qtable: at most this many float layers")
    mix_mode: str = option("8_16", choices=("8_16", "4_8"), help="search_qtable: int8 + float, or int4 + int8")
    quantize_method_list: str = option("MSE", help="search_qtable: threshold methods per layer, from KL, MSE, "
                                                   "MAX, Percentile9999")
    benchmark_method: str = option("cos", choices=("cos", "snr"), help="search_threshold: similarity measure")
    global_compare_layers: str = option(None, help="compare these tensors instead of the outputs: a,b or "
                                                   "a:0.3,b:0.7")
    post_process: str = option(None, help="python file whose PostProcess(data) is applied before comparing")
    transformer: bool = option(False, parse=parse_bool, help="search_qtable: True searches only matmul/conv layers")
    cluster: bool = option(False, help="search_qtable: float candidates from the high-loss cluster (2-means)")
    quantize_table: str = option(None, help="search_qtable: the qtable to write")
    fixed_qtable: str = option(None, help="search_qtable: a qtable whose entries every candidate keeps")
    workers: int = option(0, help="worker processes for the searches (0: all cores)")


def _method(o: CalibrateOptions) -> str:
    method = o.cali_method
    for tok in (o.debug_cmd or "").replace(",", " ").replace(";", " ").split():
        if tok in CALI_METHODS or tok == "percentile9999":
            method = "use_percentile9999" if tok == "percentile9999" else tok
    return canonical_method(method)


def calibrate(o: CalibrateOptions) -> int:
    if o.input_num < 0 or o.tune_num < 0:
        raise UserError("--input_num and --tune_num must be >= 0")
    if o.batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    method = _method(o)
    t0 = time.time()
    ctx = ir.context()
    g = ir.load_graph(o.mlir_file, ctx)
    pre = Preprocess.from_attrs(g.attrs.get("preprocess"))
    nodes = g.node_map()
    inputs = [nodes[n] for n in g.inputs]
    ds = Dataset(inputs, pre, o.dataset, o.data_list)
    tune_ds = Dataset(inputs, pre, data_list=o.tune_list) if o.tune_list else None
    searcher = search.prepare(o, g, ds, tune_ds)      # search flags are checked before the long run
    # outputs are checked writable before the long run, so a bad path fails at once
    for path in filter(None, (o.output, o.save_mlir)):
        check_writable(path)
    tables = plan_tables(g, o)   # pattern-match / part_quantize qtable, shape ops, part_asymmetric: checked now
    cfg = CalibrationConfig(method=method, input_num=o.input_num, tune_num=o.tune_num,
                            histogram_bin_num=o.histogram_bin_num, batch_size=o.batch_size,
                            kurtosis=o.kurtosis_analysis, mean_std=o.print_stats,
                            # the tables printed on request show every tensor, pre-activations included
                            preactivation_stats=o.print_stats or o.kurtosis_analysis)
    # bias correction changes the float function; the searches must still match the original one
    original = copy.deepcopy(g) if searcher is not None and o.bc else None
    res = optimize.calibrate(g, ds, cfg, tune_ds, o)      # calibrate_graph with the rewrites o asks for
    rc = 0
    if searcher is not None:
        res, method, rc = searcher.run(res, method, reference_graph=original)
    header = make_header(mlir=os.path.basename(o.mlir_file), method=method, histogram_bins=o.histogram_bin_num,
                         samples=res.samples, tune_num=res.tune_samples)
    attach(g, res.table, method)
    if o.save_mlir:     # the module first: the table is the last thing written, so it only exists when all worked
        ir.save_graph(g, o.save_mlir, ctx)
    write_cali_table(o.output, CaliTable(thresholds=dict(res.table), header=header, asym=tables.asym))
    tables.write()
    print(f"calibrated {len(res.table)} tensors on {res.samples} samples with {method}"
          + (f", auto-tuned {len(res.tuned)} on {res.tune_samples}" if res.tuned else "")
          + f" in {time.time() - t0:.1f}s -> {o.output}" + (f", {o.save_mlir}" if o.save_mlir else ""))
    if res.infinite:
        names = sorted(res.infinite)
        print(f"{len(names)} tensor(s) hold infinities passed on from an operand (an attention mask's -inf): "
              f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; their thresholds come from the finite "
              f"values, and int8 saturates the infinities")
    if o.kurtosis_analysis:
        rows = sorted(((n, res.op_types[n], st.kurtosis) for n, st in res.stats.items()),
                      key=lambda r: -r[2] if r[2] == r[2] else 0)
        print(table(["tensor", "op", "kurtosis"], [list(r) for r in rows],
                    title="kurtosis of activations (3 = Gaussian; large = heavy tails, hard to quantize):"))
    if o.print_stats:
        rows = []
        shares = {mac: act for act, mac in activation_pairs(g).items()}
        for n, (th, lo, hi) in res.table.items():
            st = res.stats[n]
            tuned = res.tuned.get(n)
            op = res.op_types.get(n, "")
            rows.append([n, f"{op}, fused: {shares[n]}'s entry" if n in shares else op, st.min, st.max, st.mean,
                         st.std, th, th / st.absmax if st.absmax else 1.0, "" if tuned is None else f"{tuned[0]:.4g}"])
        print(table(["tensor", "op", "min", "max", "mean", "std", "threshold", "th/absmax", "before tune"], rows,
                    title="per-tensor statistics:"))
    return rc
