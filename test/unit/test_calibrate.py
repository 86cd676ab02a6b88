"""`tpu-cal calibrate` end to end, judged by independent references.

Every number checked here comes from outside tpu_cal: activations from ONNX Runtime (the intermediate tensors added
as graph outputs), statistics from numpy/scipy, auto-tune choices from a brute-force numpy evaluation of the
documented procedure (fake-quantized input, per-channel fake-quantized weights, squared distance to the float
output, 20 candidates from the initial threshold to the abs-max, the larger choice for a tensor read twice).
Bad input must end as one line on stderr, exit code 2, no traceback and no output file left behind.
"""
from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tpu_cal import ir
from clitools import assert_clean_error, run_cli, run_opt

N_SAMPLES = 8
HW = 32


# ----------------------------------------------------------------------------- helpers


def read_table(path) -> tuple[dict, dict]:
    """(header lines 'key: value', {name: (threshold, min, max)}), parsed by hand from the text."""
    header, rows = {}, {}
    for line in open(path).read().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            k, sep, v = line.lstrip("#").partition(":")
            if sep:
                header[k.strip()] = v.strip()
            continue
        name, th, lo, hi = line.split()
        assert name not in rows
        rows[name] = (float(th), float(lo), float(hi))
    return header, rows


def table_text_without_time(path) -> str:
    return "".join(ln for ln in open(path) if not ln.startswith("# genetated time"))


def parse_report(text: str, title_start: str) -> list[list[str]]:
    """Rows of a terminal table (`a | b | c`) printed after a title line starting with `title_start`."""
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith(title_start))
    rows = []
    for ln in lines[k + 3:]:          # title, header, rule
        if "|" not in ln:
            break
        rows.append([c.strip() for c in ln.split("|")])
    return rows


def make_model(path: str, seed: int = 0) -> str:
    """x -> Conv(3x3) -> Relu r1;  r1 -> Conv(3x3) -> Sigmoid;  r1 -> Conv(1x1);  Add of the two branches.
    r1 has two consumers; the sigmoid output is bounded."""
    rng = np.random.default_rng(seed)
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 3, HW, HW])
    y = h.make_tensor_value_info("out", T.FLOAT, [1, 4, HW, HW])
    inits = [nh.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32), "w1"),
             nh.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b1"),
             nh.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.15).astype(np.float32), "w2"),
             nh.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b2"),
             nh.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w3")]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             h.make_node("Sigmoid", ["c2"], ["s2"]),
             h.make_node("Conv", ["r1", "w3"], ["c3"]),
             h.make_node("Add", ["s2", "c3"], ["out"])]
    m = h.make_model(h.make_graph(nodes, "toy", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])
    onnx.save(m, path)
    return path


def ort_tensors(onnx_path: str, feeds: list[dict]) -> dict[str, np.ndarray]:
    """Every tensor of the model over all samples (stacked on axis 0), keyed by TPU-MLIR's op name
    (`<ONNX output>_<OpType>`; graph inputs keep their names)."""
    import onnxruntime as ort
    m = onnx.load(onnx_path)
    types = {n.output[0]: n.op_type for n in m.graph.node}
    del m.graph.output[:]
    for n in m.graph.node:
        m.graph.output.append(h.make_tensor_value_info(n.output[0], T.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out: dict[str, list] = {}
    for f in feeds:
        for k, v in f.items():
            out.setdefault(k, []).append(v)
        for n, v in zip(names, sess.run(None, f)):
            out.setdefault(f"{n}_{types[n]}", []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- the toy model and its data
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    onnx_path = make_model(str(d / "toy.onnx"), seed=1)
    rc, out, err = run_cli("transform", "--model_name", "toy", "--model_def", onnx_path, "--mlir", d / "toy.mlir")
    assert rc == 0, err
    ds = d / "ds"
    ds.mkdir()
    rng = np.random.default_rng(1)
    feeds = []
    for i in range(N_SAMPLES):
        # heavy tails (Student t, 3 dof) so that KLD clips and auto-tune has something to do
        x = rng.standard_t(3, (1, 3, HW, HW)).astype(np.float32)
        np.savez(ds / f"s{i}.npz", x=x)
        feeds.append({"x": x})
    ref = ort_tensors(onnx_path, feeds)
    per_sample = [ort_tensors(onnx_path, [f]) for f in feeds]
    # c1 is read only by the ReLU, so lowering fuses the pair: the table gives c1 r1's entry (TPU-MLIR's table
    # has only the fused op, named r1); `table_ref` is what each table line describes
    shares = {"c1_Conv": "r1_Relu"}
    return SimpleNamespace(dir=d, onnx=onnx_path, mlir=d / "toy.mlir", ds=ds, feeds=feeds, ref=ref,
                           per_sample=per_sample, shares=shares,
                           table_ref={n: ref[shares.get(n, n)] for n in ref},
                           table_per_sample=[{n: p[shares.get(n, n)] for n in p} for p in per_sample])


def calibrate(toy, out, *flags):
    rc, stdout, err = run_cli("calibrate", toy.mlir, "--dataset", toy.ds, "-o", out, *flags)
    assert rc == 0, err
    assert "Traceback" not in err
    return stdout, err


# ----------------------------------------------------------------------------- thresholds vs ONNX Runtime
def test_op_names_map_to_onnx_tensors(toy, tmp_path):
    calibrate(toy, tmp_path / "t.cali", "--cali_method", "use_max", "--tune_num", "0")
    _, rows = read_table(tmp_path / "t.cali")
    # every ONNX tensor (input and node outputs) has a line, named as TPU-MLIR names it, nothing else
    assert set(rows) == set(toy.ref) == {"x", "c1_Conv", "r1_Relu", "c2_Conv", "s2_Sigmoid", "c3_Conv", "out_Add"}


def test_use_max_is_the_abs_max_over_all_samples(toy, tmp_path):
    out, _ = calibrate(toy, tmp_path / "t.cali", "--cali_method", "use_max", "--tune_num", "0")
    header, rows = read_table(tmp_path / "t.cali")
    assert header["quantization threshold calculation method"] == "max"
    assert header["sample number"] == str(N_SAMPLES)
    for name, (th, lo, hi) in rows.items():
        v = toy.table_ref[name]
        amax = float(np.abs(v).max())
        np.testing.assert_allclose(th, amax, rtol=2e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(lo, float(v.min()), rtol=2e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(hi, float(v.max()), rtol=2e-6, atol=1e-7, err_msg=name)
    assert "auto-tuned" not in out


def test_percentile9999_range_rules(toy, tmp_path):
    calibrate(toy, tmp_path / "t.cali", "--cali_method", "use_percentile9999", "--tune_num", "0")
    header, rows = read_table(tmp_path / "t.cali")
    assert header["quantization threshold calculation method"] == "percentile9999"
    for name, (th, lo, hi) in rows.items():
        v = toy.table_ref[name].astype(np.float64).ravel()
        amax = float(np.abs(v).max())
        assert 0 < th <= amax * (1 + 1e-6), name
        assert v.min() - 1e-6 <= lo <= hi <= v.max() + 1e-6, name
        if name in ("x", "out_Add"):
            np.testing.assert_allclose(th, amax, rtol=2e-6)      # graph inputs and outputs keep their full range
        if name == "s2_Sigmoid":                                 # bounded output: keeps its whole range
            np.testing.assert_allclose(th, amax, rtol=2e-6)
    # the percentile genuinely clips here (otherwise this test would only repeat use_max)
    assert any(rows[n][0] < np.abs(toy.table_ref[n]).max() * 0.99 for n in rows)


def test_percentile9999_matches_numpy_within_a_bin(toy, tmp_path):
    calibrate(toy, tmp_path / "t.cali", "--cali_method", "use_percentile9999", "--tune_num", "0")
    _, rows = read_table(tmp_path / "t.cali")
    bad = []
    for name, (th, lo, hi) in rows.items():
        v = toy.table_ref[name].astype(np.float64).ravel()
        amax = float(np.abs(v).max())
        width = amax / 2048        # --histogram_bin_num 2048 bins over [0, abs-max] at the coarsest
        plo, phi = np.percentile(v, 0.01), np.percentile(v, 99.99)
        want = max(abs(plo), abs(phi))
        if name in ("x", "out_Add"):                              # graph inputs/outputs: the abs-max (rule above)
            ok = abs(th - amax) <= 1e-6 * th
        elif name == "s2_Sigmoid":
            ok = abs(th - float(np.abs(v).max())) <= 1e-6 * th     # bounded: the whole observed range
        else:
            ok = abs(th - want) <= width and abs(lo - plo) <= width and abs(hi - phi) <= width
        if not ok:
            bad.append(f"{name}: th {th} min {lo} max {hi}; numpy {want} ({plo}, {phi}), bin {width:.3g}")
    assert not bad, "\n".join(bad)


def _clip_energy(v: np.ndarray, th: float) -> float:
    a = np.abs(v.astype(np.float64)).ravel()
    over = a[a > th]
    return float(((over - th) ** 2).sum() / (a ** 2).sum())


def test_kld_default_is_within_range_and_keeps_bounded_output(toy, tmp_path):
    out, err = calibrate(toy, tmp_path / "t.cali")          # defaults: use_kl, tune_num 10
    header, rows = read_table(tmp_path / "t.cali")
    assert header["quantization threshold calculation method"] == "kl"
    assert "larger than the dataset" in err                  # tune_num 10 > 8 samples: a note, all used
    assert header["tune number"] == str(N_SAMPLES)
    for name, (th, lo, hi) in rows.items():
        amax = float(np.abs(toy.table_ref[name]).max())
        assert 0 < th <= amax * (1 + 1e-6), (name, th, amax)
    np.testing.assert_allclose(rows["s2_Sigmoid"][0], np.abs(toy.ref["s2_Sigmoid"]).max(), rtol=2e-6)


# ----------------------------------------------------------------------------- auto-tune by brute force
def _conv(x, w, b=None, pads=(0, 0, 0, 0)):
    """NCHW convolution, stride 1, group 1, in numpy (im2col by sliding windows)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64), optimize=True)
    return y if b is None else y + b[None, :, None, None]


def _fq(x, th):
    s = np.float32(th / 127)
    return np.clip(np.rint(x / s), -128, 127) * s


def _fq_per_channel(w):
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1).reshape(-1, *([1] * (w.ndim - 1)))
    s = amax / 127
    return np.clip(np.rint(w / s), -128, 127) * s


def _brute_force_choices(g, ref, initial):
    """{(consumer, input index): (tensor, acceptable thresholds)} by evaluating every candidate in numpy."""
    nodes = g.node_map()
    amax = {k: float(np.abs(v).max()) for k, v in ref.items()}
    out = {}
    for n in g.nodes:
        if n.op not in ("top.conv", "top.relu", "top.sigmoid", "top.add"):
            continue
        for i, src in enumerate(n.inputs):
            if src is None or nodes[src].op in ("top.weight", "top.none"):
                continue
            th0 = initial[src][0]
            if not amax[src] > th0 * (1 + 1e-6):
                continue                       # nothing to search: the initial threshold is the abs-max
            cands = np.linspace(th0, amax[src], 20)
            float_out = ref[n.name].astype(np.float64)
            dist = []
            for c in cands:
                args = [ref.get(s) for s in n.inputs]
                args[i] = _fq(ref[src], c)
                if n.op == "top.conv":
                    assert list(n.attrs["strides"]) == [1, 1] and n.attrs["group"] == 1
                    w = _fq_per_channel(g.weights[nodes[n.inputs[1]].attrs["name"]])
                    b = None if n.inputs[2] is None or nodes[n.inputs[2]].op == "top.none" else \
                        g.weights[nodes[n.inputs[2]].attrs["name"]]
                    y = _conv(args[0], w, b, list(n.attrs["pads"]))
                elif n.op == "top.relu":
                    y = np.maximum(args[0], 0)
                elif n.op == "top.sigmoid":
                    y = 1 / (1 + np.exp(-args[0].astype(np.float64)))
                else:
                    y = args[0].astype(np.float64) + args[1]
                dist.append(float(((y - float_out) ** 2).sum()))
            dist = np.array(dist)
            # float results differ from the interpreter's in the last bits: near-ties are all acceptable
            ok = cands[dist <= dist.min() * (1 + 1e-4) + 1e-9]
            out[(n.name, i)] = (src, ok, float(cands[int(np.argmin(dist))]))
    return out


def test_auto_tune_picks_the_brute_force_argmin(toy, tmp_path):
    # ACIQ (tuned like KLD) starts below the abs-max on every tensor of this data, so each has a search
    m = ("--cali_method", "use_aciq_gauss")
    calibrate(toy, tmp_path / "kl0.cali", *m, "--tune_num", "0", "--save_mlir", tmp_path / "kl0.mlir")
    out, _ = calibrate(toy, tmp_path / "kl.cali", *m, "--tune_num", str(N_SAMPLES), "--print_stats")
    _, initial = read_table(tmp_path / "kl0.cali")
    _, tuned = read_table(tmp_path / "kl.cali")
    g = ir.load_graph(str(tmp_path / "kl0.mlir"))
    # the fused conv is not tuned: it keeps its activation's (tuned) entry, as TPU-MLIR's fused op has one
    choices = {k: v for k, v in _brute_force_choices(g, toy.ref, initial).items() if v[0] not in toy.shares}
    assert choices, "the data gives auto-tune nothing to search"
    for mac, act in toy.shares.items():
        assert tuned[mac] == tuned[act] and initial[mac] == initial[act], mac
    by_tensor: dict[str, list] = {}
    for (consumer, i), (src, ok, best) in choices.items():
        by_tensor.setdefault(src, []).append((consumer, ok, best))
    # r1_Relu is read by two convolutions (test_tensor_with_two_consumers_takes_the_larger covers the rule)
    r1 = by_tensor.get("r1_Relu", [])
    assert len(r1) == 2, r1
    for name, (th, lo, hi) in tuned.items():
        assert (lo, hi) == initial[name][1:], name
        if name in toy.shares:
            continue
        if name not in by_tensor:
            assert th == initial[name][0], (name, th, initial[name][0])   # not searched: unchanged
            continue
        # each consumer's choice is one of its acceptable argmins; the tensor takes the largest
        acceptable_max = [max(ok) for _, ok, _ in by_tensor[name]]
        lowest_max = [min(ok) for _, ok, _ in by_tensor[name]]
        assert max(lowest_max) * (1 - 2e-6) <= th <= max(acceptable_max) * (1 + 2e-6), (name, th, by_tensor[name])
        assert any(np.isclose(th, c, rtol=2e-6) for _, ok, _ in by_tensor[name] for c in ok), (name, th)
    assert tuned["r1_Relu"][0] == pytest.approx(max(b for _, _, b in r1), rel=2e-6)
    # --print_stats shows the threshold before tuning, which is the --tune_num 0 table's
    rows = {r[0]: r for r in parse_report(out, "per-tensor statistics")}
    for name in by_tensor:
        if rows[name][8]:
            assert float(rows[name][8]) == pytest.approx(initial[name][0], rel=1e-3)


def test_tensor_with_two_consumers_takes_the_larger():
    from tpu_cal.calibration import AutoTuner
    from tpu_cal.graph import Graph, Node
    nodes = [Node("top.input", "x", [], {}, (1, 4)), Node("top.relu", "a", ["x"], {}, (1, 4)),
             Node("top.sigmoid", "b", ["x"], {}, (1, 4))]
    g = Graph("g", ["x"], ["a", "b"], nodes)
    tuner = AutoTuner(g, {"x": (1.0, -2.0, 2.0)}, {"x": 2.0}, n_candidates=5)
    # distances as if relu preferred candidate 1 (1.25) and sigmoid candidate 3 (1.75)
    tuner.dist[("a", 0)] = np.array([5.0, 1.0, 2.0, 3.0, 4.0])
    tuner.dist[("b", 0)] = np.array([5.0, 4.0, 3.0, 1.0, 2.0])
    assert tuner.tuned() == {"x": 1.75}


def test_tune_num_0_and_untuned_methods_leave_thresholds_alone(toy, tmp_path):
    for method in ("use_max", "use_mse"):
        calibrate(toy, tmp_path / "a.cali", "--cali_method", method, "--tune_num", "0")
        out, _ = calibrate(toy, tmp_path / "b.cali", "--cali_method", method, "--tune_num", "5")
        assert "auto-tuned" not in out
        assert read_table(tmp_path / "a.cali")[1] == read_table(tmp_path / "b.cali")[1], method
    # kl and aciq are tuned: a thresholds moves (only upwards, towards the abs-max)
    for method in ("use_kl", "use_aciq_laplace"):
        calibrate(toy, tmp_path / "a.cali", "--cali_method", method, "--tune_num", "0")
        out, _ = calibrate(toy, tmp_path / "b.cali", "--cali_method", method, "--tune_num", "4")
        assert "auto-tuned" in out, method
        a, b = read_table(tmp_path / "a.cali")[1], read_table(tmp_path / "b.cali")[1]
        assert a != b, method
        for n in a:
            assert a[n][0] * (1 - 1e-7) <= b[n][0] <= np.abs(toy.table_ref[n]).max() * (1 + 1e-6), (method, n)


# ----------------------------------------------------------------------------- determinism and sample selection
def test_same_flags_same_table(toy, tmp_path):
    for k in "ab":
        calibrate(toy, tmp_path / f"{k}.cali", "--tune_num", "3", "--input_num", "5")
    assert table_text_without_time(tmp_path / "a.cali") == table_text_without_time(tmp_path / "b.cali")


def test_batch_size_does_not_change_the_table(toy, tmp_path):
    # samples of very different ranges: the batch that fixes the histogram's bin width depends on the batching
    ds = tmp_path / "ds"
    ds.mkdir()
    for i, f in enumerate(toy.feeds):
        np.savez(ds / f"s{i}.npz", x=f["x"] * np.float32(2.0 ** (i - 4)))
    for name, bs in (("a", "16"), ("b", "1")):
        rc, _, err = run_cli("calibrate", toy.mlir, "--dataset", ds, "-o", tmp_path / f"{name}.cali", "--tune_num",
                             "0", "--batch_size", bs)
        assert rc == 0, err
    a, b = read_table(tmp_path / "a.cali")[1], read_table(tmp_path / "b.cali")[1]
    diff = {n: (a[n][0], b[n][0]) for n in a if not np.isclose(a[n][0], b[n][0], rtol=1e-3)}
    assert not diff, diff


def test_input_num_takes_the_same_subset(toy, tmp_path):
    n = 3
    outs = [calibrate(toy, tmp_path / f"{k}.cali", "--cali_method", "use_max", "--tune_num", "0",
                      "--input_num", str(n), "--print_stats")[0] for k in "ab"]
    assert read_table(tmp_path / "a.cali")[1] == read_table(tmp_path / "b.cali")[1]
    header, rows = read_table(tmp_path / "a.cali")
    assert header["sample number"] == str(n)
    # exactly one subset of n samples explains the table (min/max of every tensor and the mean of the input)
    mean_x = float(parse_report(outs[0], "per-tensor statistics")[0][4])
    matches = []
    for subset in itertools.combinations(range(N_SAMPLES), n):
        ok = abs(np.mean([toy.per_sample[i]["x"].mean(dtype=np.float64) for i in subset]) - mean_x) < 2e-6
        for name, (th, lo, hi) in rows.items():
            v = np.concatenate([toy.table_per_sample[i][name] for i in subset])
            ok = ok and np.isclose(lo, v.min(), rtol=2e-6, atol=1e-7) and np.isclose(hi, v.max(), rtol=2e-6,
                                                                                      atol=1e-7)
        if ok:
            matches.append(subset)
    assert len(matches) == 1, matches


def test_input_num_larger_than_dataset_uses_all(toy, tmp_path):
    _, err = calibrate(toy, tmp_path / "a.cali", "--cali_method", "use_max", "--tune_num", "0",
                       "--input_num", "100")
    assert "note:" in err and "larger than the dataset" in err
    calibrate(toy, tmp_path / "b.cali", "--cali_method", "use_max", "--tune_num", "0")
    ha, a = read_table(tmp_path / "a.cali")
    assert ha["sample number"] == str(N_SAMPLES)
    assert a == read_table(tmp_path / "b.cali")[1]


# ----------------------------------------------------------------------------- --save_mlir and the import pass
def test_save_mlir_and_import_pass_carry_the_table(toy, tmp_path):
    calibrate(toy, tmp_path / "t.cali", "--tune_num", "2", "--save_mlir", tmp_path / "cal.mlir")
    _, rows = read_table(tmp_path / "t.cali")
    g = ir.load_graph(str(tmp_path / "cal.mlir"))
    assert g.attrs["state"] == "calibrated" and g.attrs["cali_method"] == "kl"
    seen = set()
    for n in g.nodes:
        if n.op in ("top.weight", "top.none"):
            assert not any(k.startswith("cali.") for k in n.extra), n.name
            continue
        th, lo, hi = rows[n.name]
        np.testing.assert_allclose([n.extra["cali.threshold"], n.extra["cali.min"], n.extra["cali.max"]],
                                   [th, lo, hi], rtol=1e-7, atol=1e-7, err_msg=n.name)
        seen.add(n.name)
    assert seen == set(rows)
    # the uncalibrated module + top-import-calibration gives the same attributes (written next to the weights)
    imported = toy.dir / f"imported_{os.getpid()}.mlir"
    try:
        rc, _, err = run_opt(toy.mlir, "-p", f"top-import-calibration{{file={tmp_path / 't.cali'}}}", "-o", imported)
        assert rc == 0, err
        g2 = ir.load_graph(str(imported))
    finally:
        if imported.exists():
            imported.unlink()
    assert g2.attrs["state"] == "calibrated"
    for n in g2.nodes:
        if n.name in rows:
            assert (n.extra["cali.threshold"], n.extra["cali.min"], n.extra["cali.max"]) == rows[n.name], n.name


# ----------------------------------------------------------------------------- fused conv + ReLU pairs
def test_fused_view_runs_the_pair_as_one_op_with_the_same_values(toy):
    from tpu_cal.calibration import fused_view
    from tpu_cal.interp.core import Interpreter
    g = ir.load_graph(str(toy.mlir))
    view, pairs = fused_view(g)
    assert pairs == {"r1_Relu": "c1_Conv"}        # c2 feeds a sigmoid, c3 an add: not fusable
    names = [n.name for n in view.nodes]
    assert "c1_Conv" not in names
    fused = view.node_map()["r1_Relu"]
    assert fused.op == "top.conv" and fused.extra["do_relu"] and fused.extra["relu_limit"] == -1.0
    assert [n.name for n in g.nodes if n.name != "c1_Conv"] == names           # same order otherwise
    x = np.concatenate([f["x"] for f in toy.feeds])
    a = Interpreter(g).run({"x": x}, keep="all")
    b = Interpreter(view).run({"x": x}, keep="all")
    for n in names:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    np.testing.assert_allclose(b["r1_Relu"], toy.ref["r1_Relu"], rtol=1e-5, atol=1e-5)


def test_fused_conv_takes_its_activations_entry_whatever_is_collected(toy, tmp_path):
    calibrate(toy, tmp_path / "a.cali", "--tune_num", "0")
    out, _ = calibrate(toy, tmp_path / "b.cali", "--tune_num", "0", "--print_stats")
    _, a = read_table(tmp_path / "a.cali")
    assert a["c1_Conv"] == a["r1_Relu"]
    assert a["r1_Relu"][1] == 0.0                  # a ReLU's range, not the conv's own (which goes negative)
    assert float(toy.ref["c1_Conv"].min()) < -1
    # --print_stats collects the conv's own statistics to show them, and the table stays the same
    assert table_text_without_time(tmp_path / "a.cali") == table_text_without_time(tmp_path / "b.cali")
    rows = {r[0]: r for r in parse_report(out, "per-tensor statistics")}
    assert "fused" in rows["c1_Conv"][1] and "r1_Relu" in rows["c1_Conv"][1]
    assert float(rows["c1_Conv"][2]) == pytest.approx(float(toy.ref["c1_Conv"].min()), rel=1e-6)


def test_fused_relu6_measures_its_range_in_the_kernel(tmp_path):
    """A conv + ReLU6 of the fused view reports its output's range piece by piece (OutputRange): the statistics
    of the bounded tensor are those of a scan of the two-op graph, and a NaN still stops the run naming the op."""
    from clitools import require_native
    from tpu_cal import thresholds as thr
    from tpu_cal.calibration import fused_view
    from tpu_cal.errors import UserError
    from tpu_cal.interp.core import RANGE_KEY, Interpreter
    from tpu_cal.stats import StatsCollector
    require_native()
    rng = np.random.default_rng(5)
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 3, 20, 20])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 4, 20, 20])
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(6, np.float32), "hi")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Clip", ["c1", "lo", "hi"], ["r1"]), h.make_node("Conv", ["r1", "w2"], ["y"])]
    onnx.save(h.make_model(h.make_graph(nodes, "r6", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)]),
              str(tmp_path / "r6.onnx"))
    rc, _, err = run_cli("transform", "--model_name", "r6", "--model_def", tmp_path / "r6.onnx",
                         "--mlir", tmp_path / "r6.mlir")
    assert rc == 0, err
    g = ir.load_graph(str(tmp_path / "r6.mlir"))
    bounded = thr.bounded_tensors(g)
    view, pairs = fused_view(g, measured=bounded)
    (act, mac), = pairs.items()
    sink = view.node_map()[act].extra[RANGE_KEY]
    cols = [StatsCollector(moments=False, mean_std=False, no_histogram=bounded) for _ in range(2)]
    runs = [Interpreter(view, [cols[0]]), Interpreter(g, [cols[1]])]
    batches = [(rng.standard_normal((n, 3, 20, 20)) * s).astype(np.float32) for n, s in ((3, 1.0), (5, 0.2), (2, 4.0))]
    for b in batches:
        for it in runs:
            it.run({"x": b})
        assert sum(p[0] for p in sink.parts) == b.shape[0] * 8 * 20 * 20      # this run's pieces cover it all
    got, want = cols[0].stats[act], cols[1].stats[act]
    assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
    assert not got.has_histogram and 0 <= got.min < got.max <= 6
    bad = batches[0].copy()
    bad[1, 0, 3, 3] = np.nan            # only the fused op is watched: the NaN is found through its OutputRange
    only = StatsCollector(moments=False, mean_std=False, no_histogram=bounded, names=[act])
    with np.errstate(invalid="ignore"), pytest.raises(UserError, match=f"{act}.*NaN"):
        Interpreter(view, [only]).run({"x": bad})
    assert only.stats[act].range_only and any(p[3] for p in sink.parts)


# ----------------------------------------------------------------------------- --kurtosis_analysis and --print_stats
def test_kurtosis_and_stats_tables_match_numpy(toy, tmp_path):
    from scipy.stats import kurtosis
    out, _ = calibrate(toy, tmp_path / "t.cali", "--tune_num", "0", "--kurtosis_analysis", "--print_stats")
    krows = parse_report(out, "kurtosis of activations")
    assert {r[0] for r in krows} == set(toy.ref)
    for name, op, k in krows:
        want = float(kurtosis(toy.ref[name].astype(np.float64).ravel(), fisher=False))
        assert float(k) == pytest.approx(want, rel=1e-4, abs=2e-6), name
    srows = parse_report(out, "per-tensor statistics")
    assert {r[0] for r in srows} == set(toy.ref)
    _, table = read_table(tmp_path / "t.cali")
    for r in srows:
        v = toy.ref[r[0]].astype(np.float64)
        lo, hi, mean, std, th = map(float, r[2:7])
        assert lo == pytest.approx(v.min(), abs=2e-6, rel=1e-6) and hi == pytest.approx(v.max(), abs=2e-6, rel=1e-6)
        assert mean == pytest.approx(v.mean(), abs=2e-6, rel=1e-5) and std == pytest.approx(v.std(), abs=2e-6,
                                                                                             rel=1e-5)
        assert th == pytest.approx(table[r[0]][0], abs=1e-6)
    # a Gaussian-ish sanity anchor for the convention: numpy samples of N(0,1) have Pearson kurtosis ~3
    g = np.random.default_rng(0).standard_normal(200_000)
    assert kurtosis(g, fisher=False) == pytest.approx(3.0, abs=0.05)


# ----------------------------------------------------------------------------- bad input
def _log_model(d) -> str:
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 3, 4, 4])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 3, 4, 4])
    nodes = [h.make_node("Log", ["x"], ["l"]),
             h.make_node("Exp", ["x"], ["e"]), h.make_node("Add", ["l", "e"], ["y"])]
    path = str(d / "log.onnx")
    onnx.save(h.make_model(h.make_graph(nodes, "log", [x], [y]), opset_imports=[h.make_opsetid("", 17)]), path)
    return path


BAD_CASES = ["empty_dataset", "missing_folder", "file_as_folder", "unreadable_folder", "corrupt_image",
             "npz_missing_key", "int_dtype", "wrong_shape", "nan_activation", "output_folder_missing",
             "output_is_folder", "bins_not_power_of_two", "both_sources", "no_source", "data_list_missing_file",
             "data_list_bad_count", "unknown_method"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_no_output(toy, tmp_path, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    table, saved = out_dir / "t.cali", out_dir / "cal.mlir"
    mlir = toy.mlir
    src = ["--dataset", tmp_path / "ds"]
    (tmp_path / "ds").mkdir()
    good = np.random.default_rng(0).standard_normal((1, 3, HW, HW)).astype(np.float32)
    np.save(tmp_path / "ds" / "a.npy", good)
    extra, needles = [], []
    if case == "empty_dataset":
        (tmp_path / "ds" / "a.npy").unlink()
        (tmp_path / "ds" / "notes.txt").write_text("not a sample\n")
        needles = ["ds", "no images, .npy or .npz"]
    elif case == "missing_folder":
        src = ["--dataset", tmp_path / "nope"]
        needles = ["nope", "not found"]
    elif case == "file_as_folder":
        src = ["--dataset", tmp_path / "ds" / "a.npy"]
        needles = ["a.npy", "not a folder"]
    elif case == "unreadable_folder":
        if os.geteuid() == 0:
            pytest.skip("running as root: a folder without read permission is still readable")
        os.chmod(tmp_path / "ds", 0)
        needles = ["ds", "cannot read"]
    elif case == "corrupt_image":
        from PIL import Image
        Image.fromarray(np.zeros((HW, HW, 3), np.uint8)).save(tmp_path / "ds" / "good.png")
        (tmp_path / "ds" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        needles = ["broken.png", "not a readable image"]
    elif case == "npz_missing_key":
        np.savez(tmp_path / "ds" / "b.npz", images=good, other=good)
        needles = ["b.npz", "'x'"]
    elif case == "int_dtype":
        np.save(tmp_path / "ds" / "b.npy", np.zeros((1, 3, HW, HW), np.int64))
        needles = ["b.npy", "dtype int64", "float32"]
    elif case == "wrong_shape":
        np.save(tmp_path / "ds" / "b.npy", np.zeros((1, 3, HW, HW + 1), np.float32))
        needles = ["b.npy", "shape", str(HW + 1)]
    elif case == "nan_activation":
        rc, _, err = run_cli("transform", "--model_name", "log", "--model_def", _log_model(tmp_path), "--mlir",
                             tmp_path / "log.mlir")
        assert rc == 0, err
        mlir = tmp_path / "log.mlir"
        (tmp_path / "ds" / "a.npy").unlink()
        rng = np.random.default_rng(3)
        for i in range(5):
            np.save(tmp_path / "ds" / f"s{i}.npy", np.abs(rng.standard_normal((1, 3, 4, 4))).astype(np.float32) + .1)
        # the log of a negative value: NaN in sample 3 only
        np.save(tmp_path / "ds" / "s3.npy", -np.ones((1, 3, 4, 4), np.float32))
        needles = ["l_Log", "NaN", "s3.npy"]
    elif case == "output_folder_missing":
        table = tmp_path / "no_such_dir" / "t.cali"
        needles = ["no_such_dir"]
    elif case == "output_is_folder":
        table = out_dir
        needles = [str(out_dir)]
    elif case == "bins_not_power_of_two":
        extra = ["--histogram_bin_num", "1000"]
        needles = ["--histogram_bin_num", "1000", "power of two"]
    elif case == "both_sources":
        (tmp_path / "list.txt").write_text("ds/a.npy\n")
        src += ["--data_list", tmp_path / "list.txt"]
        needles = ["--dataset", "--data_list"]
    elif case == "no_source":
        src = []
        needles = ["--dataset", "--data_list"]
    elif case == "data_list_missing_file":
        (tmp_path / "list.txt").write_text("# calibration samples\nds/a.npy\n\nds/gone.npy\n")
        src = ["--data_list", tmp_path / "list.txt"]
        needles = ["list.txt:4", "gone.npy", "not found"]
    elif case == "data_list_bad_count":
        (tmp_path / "list.txt").write_text("ds/a.npy,ds/a.npy\n")
        src = ["--data_list", tmp_path / "list.txt"]
        needles = ["list.txt:1", "2 files", "1 input"]
    elif case == "unknown_method":
        extra = ["--cali_method", "use_magic"]
        needles = ["--cali_method", "use_magic"]
    try:
        rc, out, err = run_cli("calibrate", mlir, *src, "-o", table, "--save_mlir", saved, "--tune_num", "0", *extra)
    finally:
        os.chmod(tmp_path / "ds", 0o755)
    assert_clean_error(rc, err, *needles)
    assert sorted(os.listdir(out_dir)) == []
    assert not table.is_file()


# ----------------------------------------------------------------------------- a real model: PP-OCRv4 det
def _crops(folder, n=8):
    """Grey text and coin crops from scikit-image's sample images, written as PNG files."""
    sk_data = pytest.importorskip("skimage.data", reason="scikit-image is needed for the real images")
    from PIL import Image
    crops = []
    for img in (sk_data.page(), sk_data.text(), sk_data.coins()):
        hh, ww = img.shape[:2]
        crops += [img[:, : ww // 2], img[:, ww // 2:], img[: hh // 2 + hh // 4, :]]
    paths = []
    for k, c in enumerate(crops[:n]):
        p = os.path.join(folder, f"crop{k}.png")
        Image.fromarray(np.ascontiguousarray(c)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def ppocr_det(tmp_path_factory):
    """PP-OCRv4 det at 320x320 calibrated with the default KLD on 8 crops; ONNX Runtime's text maps of the same
    crops, preprocessed independently (PIL decode, OpenCV bilinear resize, RGB, (x - mean) * scale)."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference for the detector's output")
    cv2 = pytest.importorskip("cv2", reason="OpenCV resizes the reference inputs")
    from tpu_cal.zoo import ModelUnavailable
    from tpu_cal.zoo.ppocr import ppocr
    try:
        model = ppocr("det")
    except ModelUnavailable as e:
        pytest.skip(f"model unavailable: {e}")
    d = tmp_path_factory.mktemp("ppocr")
    ds = d / "crops"
    ds.mkdir()
    paths = _crops(str(ds))
    mean, scale = [123.675, 116.28, 103.53], [0.01712, 0.0175, 0.01743]
    rc, _, err = run_cli("transform", "--model_name", "det", "--model_def", model, "--mlir", d / "det.mlir",
                         "--input_shapes", "[[1,3,320,320]]", "--mean", ",".join(map(str, mean)),
                         "--scale", ",".join(map(str, scale)), "--pixel_format", "rgb")
    assert rc == 0, err
    # default method (KLD); a short auto-tune keeps the test quick (tuning only ever raises thresholds)
    rc, _, err = run_cli("calibrate", d / "det.mlir", "--dataset", ds, "-o", d / "det.cali", "--tune_num", "2")
    assert rc == 0, err
    header, rows = read_table(d / "det.cali")
    assert header["quantization threshold calculation method"] == "kl"
    m = onnx.load(model)
    last = next(n for n in m.graph.node if n.output[0] == m.graph.output[0].name)
    assert last.op_type == "Sigmoid"
    import onnxruntime as ort
    from PIL import Image
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    maps = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"), np.float32)
        img = cv2.resize(img, (320, 320), interpolation=cv2.INTER_LINEAR)
        x = ((img - np.array(mean, np.float32)) * np.array(scale, np.float32)).transpose(2, 0, 1)[None]
        maps.append(sess.run(None, {m.graph.input[0].name: x.astype(np.float32)})[0])
    return SimpleNamespace(entry=rows[f"{last.output[0]}_Sigmoid"], prob=np.concatenate(maps))


@pytest.mark.real
def test_ppocr_det_kld_keeps_the_text_map(ppocr_det):
    th, lo, hi = ppocr_det.entry
    # TPU-MLIR's KLD gives 0.0625 here, which blanks the probability map (text pixels are > 0.3)
    assert th >= 0.5, th
    assert (ppocr_det.prob > 0.3).mean() > 0.01          # there is text in the crops: the map is not empty
    assert hi == pytest.approx(float(ppocr_det.prob.max()), abs=2e-3)
    assert lo == pytest.approx(float(ppocr_det.prob.min()), abs=2e-3)


@pytest.mark.real
def test_ppocr_det_sigmoid_threshold_clips_almost_nothing(ppocr_det):
    th = ppocr_det.entry[0]
    assert np.mean(ppocr_det.prob > th) < 1e-3, (th, np.mean(ppocr_det.prob > th))


# ----------------------------------------------------------------------------- attention masks holding -inf
def _masked_softmax_model(tmp_path, fresh_inf: bool = False):
    """scores [1,4,8] + where(mask, 0, -inf) over the last axis -> softmax; with fresh_inf the scores are
    divided by a zero constant first, an op that creates Inf from finite values."""
    nodes = [h.make_node("Cast", ["mask"], ["mb"], to=T.BOOL),
             h.make_node("Where", ["mb", "zero", "ninf"], ["madd"]),
             h.make_node("Unsqueeze", ["madd", "ax1"], ["m3"])]
    scores = "x"
    if fresh_inf:
        nodes.append(h.make_node("Div", ["x", "zero"], ["xd"]))
        scores = "xd"
    nodes += [h.make_node("Add", [scores, "m3"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=-1)]
    inits = [nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array(-np.inf, np.float32), "ninf"),
             nh.from_array(np.array([1], np.int64), "ax1")]
    g = h.make_graph(nodes, "masked", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8]),
                                       h.make_tensor_value_info("mask", T.INT64, [1, 8])],
                     [h.make_tensor_value_info("p", T.FLOAT, [1, 4, 8])], inits)
    path = tmp_path / ("fresh.onnx" if fresh_inf else "masked.onnx")
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def _mask_dataset(folder, n=6):
    folder.mkdir()
    rng = np.random.default_rng(11)
    xs, masks = [], []
    for i in range(n):
        x = (rng.standard_normal((1, 4, 8)) * 3).astype(np.float32)
        mask = np.zeros((1, 8), np.int64)
        mask[0, : 3 + i % 5] = 1                    # 3..7 real tokens, the rest padding
        np.savez(folder / f"s{i}.npz", x=x, mask=mask)
        xs.append(x)
        masks.append(mask)
    return np.concatenate(xs), np.concatenate(masks)


def test_attention_mask_infinities_pass_through_calibration(tmp_path):
    """-inf from where(mask, 0, -inf), added to the scores, is data: the statistics of those tensors use their
    finite values (checked against numpy), softmax gets its range, nothing stops."""
    rc, _, err = run_cli("transform", "--model_name", "masked", "--model_def", _masked_softmax_model(tmp_path),
                         "--mlir", tmp_path / "m.mlir")
    assert rc == 0, err
    x, mask = _mask_dataset(tmp_path / "ds")
    for method in ("use_max", "use_kl"):
        rc, out, err = run_cli("calibrate", tmp_path / "m.mlir", "--dataset", tmp_path / "ds", "--cali_method",
                               method, "-o", tmp_path / f"{method}.cali", "--tune_num", "2")
        assert rc == 0, err
        note = next(ln for ln in out.splitlines() if "infinities passed on" in ln)
        assert note.startswith("3 tensor(s)") and all(t in note for t in ("madd_Where", "m3_Unsqueeze", "s_Add")), note
        _, rows = read_table(tmp_path / f"{method}.cali")
        assert all(np.isfinite(v).all() and v[0] > 0 for v in rows.values()), rows
        s = x + np.where(mask[:, None, :] == 1, 0, -np.inf).astype(np.float32)
        fin = s[np.isfinite(s)]
        assert rows["s_Add"][1:] == pytest.approx((fin.min(), fin.max()), rel=1e-6)
        if method == "use_max":
            assert rows["s_Add"][0] == pytest.approx(np.abs(fin).max(), rel=1e-6)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        assert rows["p_Softmax"][2] == pytest.approx(p.max(), rel=1e-5)


def test_inf_created_from_finite_values_is_still_an_error(tmp_path):
    rc, _, err = run_cli("transform", "--model_name", "fresh", "--model_def",
                         _masked_softmax_model(tmp_path, fresh_inf=True), "--mlir", tmp_path / "f.mlir")
    assert rc == 0, err
    _mask_dataset(tmp_path / "ds")
    rc, _, err = run_cli("calibrate", tmp_path / "f.mlir", "--dataset", tmp_path / "ds", "-o", tmp_path / "f.cali")
    assert_clean_error(rc, err, "xd_Div", "Inf", "on sample", ".npz")
    assert not (tmp_path / "f.cali").exists()


def test_bounded_outputs_stay_bounded_through_guards_and_moves(tmp_path):
    """softmax -> where(isnan(p), 0, p) (exported attention's NaN guard) -> reshape -> matmul: KLD keeps the whole
    observed range of the softmax and of the guarded / reshaped probabilities (it used to clip the guard's output
    to a fraction of it); the matmul after them is an ordinary tensor."""
    rng = np.random.default_rng(4)
    v = rng.standard_normal((64, 5)).astype(np.float32)
    nodes = [h.make_node("Softmax", ["x"], ["p"], axis=-1), h.make_node("IsNaN", ["p"], ["bad"]),
             h.make_node("Where", ["bad", "zero", "p"], ["g"]), h.make_node("Reshape", ["g", "shape"], ["r"]),
             h.make_node("MatMul", ["r", "v"], ["y"])]
    inits = [nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array([32, 64], np.int64), "shape"),
             nh.from_array(v, "v")]
    g = h.make_graph(nodes, "guard", [h.make_tensor_value_info("x", T.FLOAT, [1, 32, 64])],
                     [h.make_tensor_value_info("y", T.FLOAT, [32, 5])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "guard.onnx")
    rc, _, err = run_cli("transform", "--model_name", "guard", "--model_def", tmp_path / "guard.onnx", "--mlir",
                         tmp_path / "g.mlir")
    assert rc == 0, err
    (tmp_path / "ds").mkdir()
    xs = []
    for i in range(16):    # most probabilities tiny, a long tail to ~1: KLD alone would cut it at ~0.03
        x = (rng.standard_normal((1, 32, 64)) * 3).astype(np.float32)
        np.save(tmp_path / "ds" / f"s{i}.npy", x)
        xs.append(x)
    rc, _, err = run_cli("calibrate", tmp_path / "g.mlir", "--dataset", tmp_path / "ds", "--tune_num", "0", "-o",
                         tmp_path / "g.cali")
    assert rc == 0, err
    _, rows = read_table(tmp_path / "g.cali")
    x = np.concatenate(xs)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    for name in ("p_Softmax", "g_Where", "r_Reshape"):
        assert rows[name][0] == pytest.approx(p.max(), rel=1e-5), (name, rows[name])
    y = p.reshape(-1, 64) @ v
    assert rows["y_MatMul"][2] == pytest.approx(y.max(), rel=1e-4)
