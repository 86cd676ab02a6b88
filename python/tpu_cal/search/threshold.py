"""search_threshold: the whole calibration table of each method (KLD + auto-tune, Octav, max, percentile9999),
the module lowered to int8 with it and simulated on the inference samples; the best output similarity
(--benchmark_method cos, or snr in dB) wins. Every method's result goes to the `Search_Threshold` log."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..report import table as text_table
from .common import Log
from .engine import Candidate, Engine

# the candidates, in the order they are measured and printed (a tie keeps the earlier one); KLD is auto-tuned
# unless --tune_num is 0
METHODS = ("kl+tune", "mse", "max", "percentile9999")


@dataclass
class ThresholdResult:
    best: str
    scores: dict[str, float]                  # method -> similarity
    seconds: float = 0.0
    log: Log = field(default_factory=Log)


def run(engine: Engine, tables: dict[str, dict], model: str, benchmark: str = "cos",
        base_mode: str = "INT8") -> ThresholdResult:
    """`tables`: method label -> full (threshold, min, max) table, measured in the order given."""
    t0 = time.time()
    log = Log()
    log.info(f"search_threshold: methods {list(tables)}, benchmark_method = {benchmark}, inference_num = "
             f"{engine.n_samples}")
    log.info(f"run float mode: {model}")
    labels = list(tables)
    cands = [Candidate(thresholds={k: float(v[0]) for k, v in tables[m].items()}, default=base_mode)
             for m in labels]
    scores = engine.evaluate(cands, desc="threshold methods")
    out = {}
    for m, s in zip(labels, scores):
        log.info(f"run int8 mode: {model}, method {m}")
        log.info(f"method {m}: outputs_{benchmark} = {s.cos}")
        out[m] = s.cos
    best = max(labels, key=lambda m: (out[m], -labels.index(m)))
    log.info(f"best method: {best}, outputs_{benchmark} = {out[best]}")
    return ThresholdResult(best, out, time.time() - t0, log)


def report(res: ThresholdResult, benchmark: str) -> str:
    unit = "outputs cos" if benchmark == "cos" else "outputs SNR dB"
    rows = [[m, v, "*" if m == res.best else ""] for m, v in res.scores.items()]
    return text_table(["method", unit, "best"], rows, title=f"search_threshold ({res.seconds:.1f}s):")
