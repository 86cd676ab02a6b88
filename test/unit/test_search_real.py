"""The search engine on a real network (the bundled PP-OCR direction classifier: convs, hard-swish, SE blocks with
pooling and multiplies, ...): scores measured downstream-only from a cached reference equal full runs of the
module lowered as `tpu-cal lower` lowers it (`simulate.run_both`, `metrics.cosine`)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from clitools import calibrated_cls

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    return calibrated_cls(tmp_path_factory.mktemp("cls_search"))


def test_downstream_scores_equal_full_runs_on_ppocr_cls(cls):
    from tpu_cal import ir
    from tpu_cal.calibration import attach
    from tpu_cal.dataset import Dataset
    from tpu_cal.formats.cali_table import read_cali_table
    from tpu_cal.formats.qtable import QTable
    from tpu_cal.lowering import assign_precision, lower
    from tpu_cal.metrics import cosine
    from tpu_cal.preprocess import Preprocess
    from tpu_cal.search.common import inference_feeds
    from tpu_cal.search.engine import Candidate, Engine
    from tpu_cal.simulate import run_both

    g = ir.load_graph(str(cls.mlir))
    table = read_cali_table(str(cls.table)).thresholds
    nodes = g.node_map()
    ds = Dataset([nodes[i] for i in g.inputs], Preprocess.from_attrs(g.attrs.get("preprocess")), str(cls.dir / "crops"))
    feeds, n = inference_feeds(ds, 4)
    eng = Engine(g, table, "bm1684x", feeds, workers=1, show_progress=False)
    ref = eng.reference(Candidate())

    def full(modes, default="INT8"):
        g2 = copy.deepcopy(g)
        attach(g2, table)
        assign_precision(g2, "bm1684x", default, QTable(modes=modes))
        fl, qt = run_both(g2, lower(g2, "bm1684x"), feeds, names=list(g.outputs))
        o = g.outputs[0]
        return float(np.mean([cosine(fl[o][i], qt[o][i]) for i in range(n)]))

    assert ref.score.cos == pytest.approx(full({}), abs=1e-12)
    comp = [x.name for x in g.compute_nodes() if x.name in table]
    for name in (comp[1], comp[len(comp) // 2], comp[-2]):
        alone = eng.score(Candidate(modes={name: "INT8"}, default="F32"))
        assert alone.cos == pytest.approx(full({name: "INT8"}, "F32"), abs=1e-12), name
        mixed = eng.score(Candidate(modes={name: "F16"}), ref)
        assert mixed.cos == pytest.approx(full({name: "F16"}), abs=1e-12), name
        assert mixed.computed < mixed.total
