"""Where EfficientNet-Lite0's int8 error is, and whether thresholds can remove it: the output cosine of our
quantized simulation (bm1684x, full int8) when one tensor's threshold is scaled, and when the first layers run in
F16, on the search's inference samples and on held-back photos.

    python bench/error_budget.py [--input_num 100] [--inference_num 30] [--eval 40] [--method use_kl]
                                 [--tensors a,b] [--scales 0.4,0.55,0.7,0.85,1.2] [--greedy 60] [--write]

Calibration: `tpu-cal calibrate` (--method, --tune_num 0) on the first --input_num samples of bench/common.py's
calibration set; the inference samples are its first --inference_num; held-back: --eval views of other photos.
--write replaces the "Error budget" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import calibrate as C  # noqa: E402
import common  # noqa: E402
import qdq_judge as J  # noqa: E402

STEM = ["/_swish/Clip_output_0_Clip", "/_blocks.0/_swish/Clip_output_0_Clip"]   # stem and block 0 dw, fused
TENSORS = ["input", *STEM, "/_blocks.0/_project_conv/Conv_output_0_Conv", "/_blocks.1/_swish/Clip_output_0_Clip"]


def greedy(g, table: dict, x_tune, x_held, scales: list[float]) -> tuple[dict, float, float]:
    """One sweep of coordinate descent: each searched layer's threshold (input first) scaled by the best of
    `scales` when that raises the output cosine on `x_tune` by more than 2e-5; returns the new thresholds, the
    cosine on x_tune and on x_held."""
    from tpu_cal.calibration import progress
    from tpu_cal.chips import chip
    from tpu_cal.search.engine import Candidate, Engine
    from tpu_cal.search.qtable import search_layers
    tune = Engine(g, table, "bm1684x", {g.inputs[0]: x_tune}, workers=0, batch_size=32, show_progress=False)
    layers, _, _ = search_layers(g, chip("bm1684x"), table, {}, False)
    cur: dict[str, float] = {}
    best = tune.reference(Candidate()).score.cos
    bar = progress(len(layers) + 1, "greedy thresholds", unit="tensor")
    for name in ["input"] + [n.name for n in layers]:
        sc = tune.evaluate([Candidate(thresholds=dict(cur, **{name: table[name][0] * s})) for s in scales])
        k = max(range(len(scales)), key=lambda i: sc[i].cos)
        if sc[k].cos > best + 2e-5:
            cur[name], best = table[name][0] * scales[k], sc[k].cos
        bar.update(1)
    bar.close()
    held = Engine(g, table, "bm1684x", {g.inputs[0]: x_held}, workers=0, batch_size=len(x_held), show_progress=False)
    return cur, best, held.score(Candidate(thresholds=cur)).cos


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_num", type=int, default=100)
    p.add_argument("--inference_num", type=int, default=30)
    p.add_argument("--eval", type=int, default=40)
    p.add_argument("--method", default="use_kl")
    p.add_argument("--tensors", default=",".join(TENSORS))
    p.add_argument("--scales", default="0.4,0.55,0.7,0.85,1.2")
    p.add_argument("--greedy", type=int, default=0, help="also tune every layer's threshold end to end: greedy "
                                                         "over --scales < 1 on this many calibration samples")
    p.add_argument("--write", action="store_true")
    a = p.parse_args(argv)
    from tpu_cal import ir
    from tpu_cal.formats.cali_table import read_cali_table
    from tpu_cal.search.engine import Candidate, Engine
    from tpu_cal.zoo import cache_dir
    work = cache_dir("bench", "error_budget")
    _, mlir = C.model_and_mlir(work)
    cal = common.calibration_set(a.input_num)
    table_path = os.path.join(work, f"cali_{a.method}_{a.input_num}")
    if not os.path.exists(table_path):
        m = J.run_measured(C.tpu_cal_exe() + ["calibrate", mlir, "--dataset", cal, "--input_num", str(a.input_num),
                                              "--tune_num", "0", "--cali_method", a.method, "-o", table_path])
        if m.rc != 0:
            raise SystemExit(f"calibrate failed: {m.stderr.strip().splitlines()[-1:]}")
    g = ir.load_graph(mlir)
    names = {n.name for n in g.nodes}
    table = {k: v for k, v in read_cali_table(table_path).thresholds.items() if k in names}
    sets = {"inference": common.load_folder(cal)[:a.inference_num], "held-back": common.load_folder(
        common.evaluation_set(a.eval))}
    scales = [float(s) for s in a.scales.split(",")]
    tensors = [t for t in a.tensors.split(",") if t]
    rows: dict[str, list[str]] = {}
    for label, x in sets.items():
        eng = Engine(g, table, "bm1684x", {g.inputs[0]: x}, workers=0, batch_size=len(x), show_progress=False)
        ref = eng.reference(Candidate())
        rows.setdefault("full int8", []).append(f"{ref.score.cos:.5f}")
        cands = {f"`{t}` threshold x {s}": Candidate(thresholds={t: table[t][0] * s}) for t in tensors for s in scales}
        cands[f"stem + block 0 depthwise (2 fused layers) in F16"] = Candidate(modes={n: "F16" for n in STEM})
        for (what, _), sc in zip(cands.items(), eng.evaluate(list(cands.values()), ref)):
            rows.setdefault(what, []).append(f"{sc.cos:.5f}")
        print(f"{label}: done", flush=True)
    head = ["configuration", f"cos, {a.inference_num} inference samples", f"cos, {a.eval} held-back"]
    body = [[k, *v] for k, v in rows.items()]
    if a.greedy:
        tuned, tune_cos, held = greedy(g, table, common.load_folder(cal)[:a.greedy], sets["held-back"],
                                       [s for s in scales if s < 1])
        body.append([f"every layer's threshold tuned end to end on {a.greedy} calibration samples ({len(tuned)} "
                     f"changed; {tune_cos:.5f} on those)", "", f"{held:.5f}"])
    print(C.text_table(head, body))
    if a.write:
        flags = f" --scales {a.scales}" + (f" --greedy {a.greedy}" if a.greedy else "")
        text = (f"Command: `python bench/error_budget.py --method {a.method}{flags} --write` (venv active). Date: "
                f"{datetime.datetime.now():%Y-%m-%d %H:%M}. {C.machine()}.\n\n"
                f"EfficientNet-Lite0, `tpu-cal calibrate --cali_method {a.method} --tune_num 0` on {a.input_num} "
                f"calibration samples; our quantized simulation (bm1684x, full int8, conv + ReLU6 fused) against "
                f"the float module, mean per-sample output cosine. Thresholds (from the table): "
                + ", ".join(f"`{t}` {table[t][0]:.4g}" for t in tensors) + ".\n\n" + C.md_table(head, body) + "\n")
        common.write_section(os.path.join(HERE, "RESULTS.md"), "Error budget", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
