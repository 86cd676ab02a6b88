"""Per-layer reports (tpu_cal.layer_report), plots (tpu_cal.plots) and `tpu-cal compare`.

Metric values are checked against tpu_cal.metrics on the same arrays and against hand formulas; outlier levels
against a hand computation on a tensor with planted channels; `tpu-cal compare` by its exit codes and its one-line
errors (2 for bad input, naming the file or tensors; 1 below tolerance; 0 otherwise).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tpu_cal import layer_report, metrics, plots
from tpu_cal.cli import main as cli_main
from tpu_cal.graph import Graph, Node

RNG = np.random.default_rng(0)


def tensors():
    """Float tensors and 'quantized' versions with known, different amounts of noise."""
    ref = {"a": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32),
           "b": RNG.standard_normal((1, 8, 3, 3)).astype(np.float32),
           "c": RNG.standard_normal((2, 10)).astype(np.float32)}
    got = {"a": ref["a"] + 0.01 * RNG.standard_normal(ref["a"].shape).astype(np.float32),
           "b": ref["b"] + 0.5 * RNG.standard_normal(ref["b"].shape).astype(np.float32),
           "c": ref["c"] + 0.1 * RNG.standard_normal(ref["c"].shape).astype(np.float32)}
    return ref, got


def lowered_graph():
    q = "!quant.uniform<i8:f32, 2.000000e-02>"
    nodes = [Node("top.input", "x", [], {}, (1, 4, 6, 6)),
             Node("tpu.conv", "a", ["x"], {}, (1, 4, 6, 6), "int8", {"precision": "INT8"},
                  f"tensor<1x4x6x6x{q}>"),
             Node("tpu.relu", "b", ["a"], {}, (1, 8, 3, 3), "float32", {"precision": "F16"},
                  "tensor<1x8x3x3xf16>"),
             Node("tpu.matmul", "c", ["b"], {}, (2, 10), "float32", {"precision": "F32"})]
    return Graph("g", ["x"], ["c"], nodes, {}, {"quantize": "INT8"})


def parse_table(text: str, title_start: str) -> list[list[str]]:
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith(title_start))
    rows = []
    for ln in lines[k + 3:]:
        if " | " not in ln:
            break
        rows.append([c.strip() for c in ln.split("|")])
    return rows


# ----------------------------------------------------------------------------- the precision table
def test_rows_equal_the_metrics_and_hand_formulas():
    ref, got = tensors()
    rows = layer_report.layer_rows(ref, got, lowered_graph())
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        a = ref[r["name"]].astype(np.float64).ravel()
        b = got[r["name"]].astype(np.float64).ravel()
        assert r["cosine"] == metrics.cosine(ref[r["name"]], got[r["name"]])
        assert r["euclid"] == metrics.euclid_similarity(ref[r["name"]], got[r["name"]])
        assert r["snr_db"] == metrics.snr_db(ref[r["name"]], got[r["name"]])
        # and the definitions, written out
        assert r["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12)
        assert r["euclid"] == pytest.approx(1 - np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b)),
                                            rel=1e-12)
        assert r["snr_db"] == pytest.approx(10 * math.log10((a @ a) / ((a - b) @ (a - b))), rel=1e-12)
        assert r["shape"] == list(ref[r["name"]].shape)
    by = {r["name"]: r for r in rows}
    assert (by["a"]["op"], by["a"]["precision"]) == ("conv", "INT8")
    assert (by["b"]["op"], by["b"]["precision"]) == ("relu", "F16")
    assert (by["c"]["op"], by["c"]["precision"]) == ("matmul", "F32")


def test_table_is_worst_first_with_a_summary_and_printed_values():
    ref, got = tensors()
    rows = layer_report.layer_rows(ref, got, lowered_graph())
    text, bad = layer_report.precision_table(rows, [0.999])
    table = parse_table(text, "Quant precision table")
    names = [r[1].rstrip(" *") for r in table]
    cos = {r["name"]: r["cosine"] for r in rows}
    assert names == sorted(cos, key=cos.get)            # worst cosine first
    assert names[0] == "b" and names[-1] == "a"
    for r in table:
        name = r[1].rstrip(" *")
        assert float(r[5]) == pytest.approx(cos[name], abs=5e-7)       # printed with 6 decimals
        assert r[1].endswith("*") == (cos[name] < 0.999)
    assert {r["name"] for r in bad} == {n for n, c in cos.items() if c < 0.999}
    assert f"{len(bad)} of 3 below cosine 0.999" in text.splitlines()[-1]
    # a euclidean tolerance counts too
    _, bad2 = layer_report.precision_table(rows, [0.0, 0.99])
    assert {r["name"] for r in bad2} == {r["name"] for r in rows if r["euclid"] < 0.99}


def test_nan_sorts_first_and_is_below_any_tolerance():
    ref = {"ok": np.ones(4, np.float32), "nan": np.array([1, np.nan, 2, 3], np.float32)}
    got = {"ok": np.ones(4, np.float32), "nan": np.array([1, 2, 2, 3], np.float32)}
    rows = layer_report.layer_rows(ref, got)
    assert [r["name"] for r in layer_report.sort_worst(rows)] == ["nan", "ok"]
    assert [r["name"] for r in layer_report.below(rows, [0.5])] == ["nan"]


def test_shape_mismatch_is_named():
    from tpu_cal.errors import UserError
    with pytest.raises(UserError, match=r"tensor 'a': shape \[2\] .* \[3\]"):
        layer_report.layer_rows({"a": np.zeros(2)}, {"a": np.zeros(3)})


# ----------------------------------------------------------------------------- outlier levels
def planted():
    """x[n, c, h, w]: channel 0 holds the tensor max 64, channel 1 max 8 (level 3), channel 2 max 4 (level 4),
    channel 3 max 1 (level 6), channel 4 max 0.5 (level 7), channel 5 all zero (sparse), channels 6-7 max 32
    (level 1); the maxima sit at different samples and positions, with negative values too."""
    x = RNG.uniform(-0.9, 0.9, (3, 8, 4, 4)).astype(np.float32)
    peaks = {0: -64.0, 1: 8.0, 2: -4.0, 3: 1.0, 4: 0.5, 6: 32.0, 7: -32.0}
    for c in range(8):
        x[:, c] *= 0.0 if c == 5 else (abs(peaks[c]) / 2 / 0.9)      # everything else well below the peak
    for k, (c, v) in enumerate(peaks.items()):
        x[k % 3, c, k % 4, (k + 1) % 4] = v
    return x


def test_outlier_levels_match_a_hand_computation():
    x = planted()
    st = layer_report.outlier_levels(x, axis=1)
    # by hand: level = log2(64 / max|channel|)
    expect_levels = [0.0, 3.0, 4.0, 6.0, 7.0, math.nan, 1.0, 1.0]
    assert st["channels"] == 8 and st["max_tensor"] == 64.0
    np.testing.assert_allclose(st["levels"], expect_levels, equal_nan=True)
    assert st["sparse_ratio"] == 1 / 8
    assert st["level>=3"] == 4 / 8          # channels 1, 2, 3, 4
    assert st["level>=4"] == 3 / 8          # 2, 3, 4
    assert st["level>=5"] == 2 / 8          # 3, 4
    assert st["level>=6"] == 2 / 8


def test_outlier_stats_takes_quantized_tensors_and_mac_weights_per_output_channel():
    x = planted()
    w = RNG.standard_normal((6, 8, 1, 1)).astype(np.float32)
    w[2] *= 1 / 128                        # output channel 2 tiny: level log2(max / max_2) >= 7 - small
    mm_w = RNG.standard_normal((8, 5)).astype(np.float32)
    q = "!quant.uniform<i8:f32, 5.039370e-01>"
    nodes = [Node("top.input", "x", [], {}, x.shape),
             Node("tpu.relu", "r", ["x"], {}, x.shape, "int8", {"precision": "INT8"}, f"tensor<3x8x4x4x{q}>"),
             Node("top.weight", "w", [], {"name": "w"}, w.shape),
             Node("tpu.conv", "cv", ["r", "w"], {}, (3, 6, 4, 4), "float32", {"precision": "F32"}),
             Node("top.weight", "mw", [], {"name": "mw"}, mm_w.shape),
             Node("tpu.matmul", "mm", ["cv", "mw"], {}, (3, 6, 4, 5), "float32", {"precision": "F32"})]
    g = Graph("g", ["x"], ["mm"], nodes, {"w": w, "mw": mm_w}, {})
    stats = layer_report.outlier_stats({"x": x, "r": x, "cv": np.zeros((3, 6, 4, 4), np.float32)}, g)
    by = {s["name"]: s for s in stats}
    assert set(by) == {"r", "w", "mw"}                  # quantized results only (+ weights), not x or cv
    assert by["r"]["level>=3"] == 4 / 8
    assert by["w"]["channels"] == 6 and by["w"]["kind"] == "weight of cv"
    amax = np.abs(w).reshape(6, -1).max(1).astype(np.float64)    # float32's log2 differs by CPU (SIMD paths)
    np.testing.assert_allclose(by["w"]["levels"], np.log2(amax.max() / amax))
    assert by["mw"]["channels"] == 5 and by["mw"]["axis"] == 1        # matmul: the last axis
    text = layer_report.outlier_table(stats)
    assert "log2(max|tensor| / max|channel|)" in text.splitlines()[0]
    row = next(r for r in parse_table(text, "Ratio of outlier") if r[0] == "r")
    assert [float(v) for v in row[3:8]] == [0.125, 0.5, 0.375, 0.25, 0.25]


def test_channel_axis_rules():
    assert layer_report.channel_axis(np.zeros((1, 3, 4, 4))) == 1
    assert layer_report.channel_axis(np.zeros((1, 16, 384))) == 2           # [batch, tokens, hidden]
    assert layer_report.channel_axis(np.zeros((1, 16, 50)), "conv") == 1    # 1-D conv: [N, C, L]
    assert layer_report.channel_axis(np.zeros((2, 10))) == 1
    assert layer_report.channel_axis(np.zeros(5)) is None


# ----------------------------------------------------------------------------- report() and plots
def test_report_text_ok_and_plots(tmp_path):
    ref, got = tensors()
    g = lowered_graph()
    text, ok = layer_report.report(ref, got, g, [0.999], str(tmp_path / "plots"), plot_num=2)
    assert not ok
    assert "Quant precision table" in text and "Ratio of outlier channels" in text
    files = sorted(os.listdir(tmp_path / "plots"))
    assert files == ["b.png", "c.png"]                      # the two worst, named after the op
    for f in files:
        assert open(tmp_path / "plots" / f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    _, ok = layer_report.report(ref, got, g, [0.1], None)
    assert ok


def test_plot_names_are_sanitized_unique_and_written_atomically(tmp_path):
    taken = set()
    assert plots.file_stem("/blocks.0/conv:0", taken) == "blocks.0_conv_0"
    assert plots.file_stem("/blocks.0/conv_0", taken) == "blocks.0_conv_0_2"
    x = RNG.standard_normal(100).astype(np.float32)
    rows = layer_report.layer_rows({"a/b": x}, {"a/b": x + 0.1})
    paths = plots.plot_layers({"a/b": x}, {"a/b": x + 0.1}, rows, str(tmp_path / "p"))
    assert [os.path.basename(p) for p in paths] == ["a_b.png"]
    assert os.listdir(tmp_path / "p") == ["a_b.png"]        # no temporary file left behind


def test_quant_range_from_the_lowered_type_or_the_threshold():
    g = lowered_graph()
    lo, hi = plots.quant_range("a", g)
    assert (lo, hi) == (pytest.approx(-127 * 0.02), pytest.approx(127 * 0.02))
    fg = Graph("f", ["x"], ["a"], [Node("top.conv", "a", [], {}, (1,), extra={"cali.threshold": 3.5})])
    assert plots.quant_range("a", None, fg) == (-3.5, 3.5)
    assert plots.quant_range("b", g) is None


# ----------------------------------------------------------------------------- tpu-cal compare
def run(capsys, *args):
    rc = cli_main(["compare", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_compare_exit_codes_and_listing(tmp_path, capsys):
    ref, got = tensors()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **ref, only_a=np.zeros(2))
    np.savez(b, **got, only_b=np.zeros(2))
    rc, out, err = run(capsys, a, b, "--tolerance", "0.5")
    assert rc == 0, err
    rows = parse_table(out, "b.npz vs a.npz")
    assert [r[1] for r in rows] == ["b", "c", "a"]
    cos = {k: metrics.cosine(ref[k], got[k]) for k in ref}
    for r in rows:
        assert float(r[5]) == pytest.approx(cos[r[1]], abs=5e-7)
    assert "only in" in out and "only_a" in out and "only_b" in out
    rc, out, err = run(capsys, a, b, "--tolerance", "0.999,0.9")
    assert rc == 1
    assert "below --tolerance" in err and "'b'" in err
    # --excepts drops the bad tensor
    rc, out, err = run(capsys, a, b, "--tolerance", "0.99", "--excepts", "b,c")
    assert rc == 0, err
    assert "b.npz vs a.npz" in out and "| b " not in out


def test_compare_plots(tmp_path, capsys):
    ref, got = tensors()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **ref)
    np.savez(b, **got)
    rc, out, err = run(capsys, a, b, "--tolerance", "0.1", "--plot", tmp_path / "pl", "--plot_num", "1")
    assert rc == 0, err
    assert os.listdir(tmp_path / "pl") == ["b.png"]


@pytest.mark.parametrize("case", ["malformed", "missing", "no_common", "shape", "strings"])
def test_compare_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    ref, got = tensors()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **ref)
    np.savez(b, **got)
    if case == "malformed":
        b.write_text("not a zip")
        needles = ["b.npz", "not a readable"]
    elif case == "missing":
        b.unlink()
        needles = ["b.npz", "not found"]
    elif case == "no_common":
        np.savez(b, x=np.zeros(3), y=np.zeros(3))
        needles = ["no tensor name in common", "a, b, c", "x, y"]
    elif case == "shape":
        np.savez(b, a=got["a"], b=got["b"][:, :4], c=got["c"].T)
        needles = ["2 tensor(s) differ in shape", "'b' [1, 8, 3, 3] vs [1, 4, 3, 3]", "'c' [2, 10] vs [10, 2]"]
    else:
        np.savez(b, a=np.array(["x", "y"]))
        needles = ["b.npz", "non-numeric array(s) a"]
    rc, out, err = run(capsys, a, b)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpu-cal compare: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err


def test_compare_console_entry_point(tmp_path):
    ref, got = tensors()
    np.savez(tmp_path / "a.npz", **ref)
    np.savez(tmp_path / "b.npz", **got)
    r = subprocess.run([sys.executable, "-m", "tpu_cal.tools.tpu_cal_main", "compare", str(tmp_path / "a.npz"),
                        str(tmp_path / "b.npz"), "--tolerance", "0.999"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
