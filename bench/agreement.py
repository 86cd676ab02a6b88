"""Where our simulator and ONNX Runtime part ways, layer by layer, on full-int8 EfficientNet-Lite0.

    python bench/agreement.py [--cal 8] [--eval 4]

Calibrates (KLD, --tune_num 2) on `--cal` calibration photos, lowers for bm1684x, exports the QDQ model with every
paired tensor as an extra output and runs it in ONNX Runtime with graph optimizations off (DequantizeLinear ->
float op -> QuantizeLinear as written), on `--eval` held-out photos. For each int8 tensor: the share of values
whose integers differ from our simulator's, and the cosine between the two. Printed only (the numbers are quoted
in bench/RESULTS.md, "Lowering and quantized simulation", Notes).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from calibrate import text_table, tpu_cal_exe  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cal", type=int, default=8)
    ap.add_argument("--eval", type=int, default=4)
    a = ap.parse_args(argv)
    import onnxruntime as ort
    from tpu_cal import simulate
    from tpu_cal.export_qdq import build_model
    from tpu_cal.lower_cmd import LowerOptions, prepare
    from tpu_cal.metrics import cosine
    from tpu_cal.zoo.efficientnet import efficientnet_lite0
    with tempfile.TemporaryDirectory(prefix="bench-agree-") as work:
        mlir, table = os.path.join(work, "eff.mlir"), os.path.join(work, "eff.cali")
        for args in (["transform", "--model_name", "eff", "--model_def", efficientnet_lite0(), "--input_shapes",
                      "[[1,3,224,224]]", "--mlir", mlir],
                     ["calibrate", mlir, "--dataset", common.calibration_set(a.cal), "--tune_num", "2", "-o", table]):
            subprocess.run(tpu_cal_exe() + args, check=True, capture_output=True)
        res = prepare(LowerOptions(mlir_file=mlir, output=os.path.join(work, "x.mlir"), quantize="INT8",
                                   processor="bm1684x", calibration_table=table))
        x = common.load_folder(common.evaluation_set(a.eval))
        names = simulate.paired_names(res.float_graph, res.graph)
        model = build_model(res.graph, res.float_graph, extra_outputs=names).model
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = [o.name for o in s.get_outputs()]
        runs = [s.run(None, {res.float_graph.inputs[0]: x[i:i + 1]}) for i in range(len(x))]
        theirs = {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(outs)}
        _, ours = simulate.run_both(res.float_graph, res.graph, {res.float_graph.inputs[0]: x})
    lnodes = res.graph.node_map()
    rows = []
    for n in names:
        q = lnodes[n].qtype
        if n not in theirs or q is None:
            continue
        differ = float(np.mean(np.abs(ours[n] - theirs[n]) > float(q.scale) / 2))
        rows.append([n, lnodes[n].op, f"{differ:.2e}", f"{cosine(ours[n], theirs[n]):.6f}"])
    print(text_table(["tensor", "op", "int8 values differing", "cosine ORT vs ours"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
