"""Calibration datasets (tpu_cal.dataset) and image preprocessing (tpu_cal.preprocess), against hand computations.

Selection must be deterministic and seeded, independent of the order files were created in; data lists resolve
relative paths against the list's folder and feed several inputs from comma lines; an npz with one array feeds a
single input whatever its key; images go through pixel format -> resize (OpenCV's bilinear) -> aspect-ratio
padding -> centre crop -> (x - mean) * scale -> channel format exactly as computed by hand below.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tpu_cal.dataset import Dataset
from tpu_cal.errors import UserError
from tpu_cal.preprocess import Preprocess, load_inputs


def _input(name="x", shape=(1, 3, 4, 4), dtype="float32"):
    return SimpleNamespace(name=name, shape=shape, dtype=dtype)


def _folder(path, names, order=None):
    path.mkdir()
    for i in order if order is not None else range(len(names)):
        np.save(path / names[i], np.full((1, 3, 4, 4), i, np.float32))
    return path


NAMES = [f"img_{k:02d}.npy" for k in range(20)]


# ----------------------------------------------------------------------------- selection
def test_folder_selection_is_deterministic_seeded_and_ignores_creation_order(tmp_path):
    a = _folder(tmp_path / "a", NAMES)
    b = _folder(tmp_path / "b", NAMES, order=list(reversed(range(20))))       # created in the reverse order
    (a / "readme.txt").write_text("not a sample")
    x = [_input()]
    order = [os.path.basename(s.files[0]) for s in Dataset(x, Preprocess(), str(a)).samples]
    assert sorted(order) == NAMES                                               # every sample once, no .txt
    assert order == [os.path.basename(s.files[0]) for s in Dataset(x, Preprocess(), str(a)).samples]
    assert order == [os.path.basename(s.files[0]) for s in Dataset(x, Preprocess(), str(b)).samples]
    other = [os.path.basename(s.files[0]) for s in Dataset(x, Preprocess(), str(a), seed=1).samples]
    assert sorted(other) == NAMES and other != order
    assert order != NAMES          # shuffled: a --input_num prefix is not just the alphabetically first files


def test_take_is_a_prefix_and_too_many_is_a_note(tmp_path, capsys):
    ds = Dataset([_input()], Preprocess(), str(_folder(tmp_path / "a", NAMES)))
    five, ten = ds.take(5), ds.take(10)
    assert five == ten[:5] and len(ten) == 10
    assert ds.take(0) == ds.samples and len(ds.take(0)) == 20
    assert capsys.readouterr().err == ""
    assert ds.take(25) == ds.samples
    err = capsys.readouterr().err
    assert "25" in err and "20 samples" in err and "note:" in err


def test_batches_stack_samples_in_order(tmp_path):
    ds = Dataset([_input()], Preprocess(), str(_folder(tmp_path / "a", NAMES)))
    picked = ds.take(7)
    got = list(ds.batches(picked, 3))
    assert [first for first, _ in got] == [0, 3, 6]
    assert [f["x"].shape[0] for _, f in got] == [3, 3, 1]
    values = np.concatenate([f["x"][:, 0, 0, 0] for _, f in got])
    want = [NAMES.index(os.path.basename(s.files[0])) for s in picked]        # each file holds its index
    np.testing.assert_array_equal(values, want)


# ----------------------------------------------------------------------------- data lists
def test_data_list_relative_paths_and_multi_input_lines(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    lists = tmp_path / "lists"
    lists.mkdir()
    a0, b0 = np.arange(6, dtype=np.float32).reshape(1, 6), np.arange(4, dtype=np.int64).reshape(1, 4)
    a1, b1 = a0 + 100, b0 + 100
    np.save(data / "a0.npy", a0)
    np.save(data / "b0.npy", b0)
    np.save(data / "a1.npy", a1[0])                 # without the batch axis: it is added
    np.save(data / "b1.npy", b1)
    (lists / "cal.txt").write_text("# two inputs per line\n../data/a0.npy, ../data/b0.npy\n\n"
                                   f"{data / 'a1.npy'},../data/b1.npy\n")
    monkeypatch.chdir(tmp_path / "data")           # relative to the list's folder, not the working directory
    inputs = [_input("a", (1, 6)), _input("b", (1, 4), "int64")]
    ds = Dataset(inputs, Preprocess(), data_list=str(lists / "cal.txt"))
    assert sorted(s.where for s in ds.samples) == [f"{lists / 'cal.txt'}:2", f"{lists / 'cal.txt'}:4"]
    by_line = {s.where.rsplit(":", 1)[1]: ds.load(s) for s in ds.samples}
    np.testing.assert_array_equal(by_line["2"]["a"], a0)
    np.testing.assert_array_equal(by_line["2"]["b"], b0)
    np.testing.assert_array_equal(by_line["4"]["a"], a1)
    np.testing.assert_array_equal(by_line["4"]["b"], b1)
    assert by_line["4"]["b"].dtype == np.int64


def test_data_list_errors_name_file_and_line(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 4, 4), np.float32))
    (tmp_path / "l.txt").write_text("a.npy\n  \na.npy, a.npy, a.npy\n")
    with pytest.raises(UserError, match=r"l\.txt:3: 3 files, the model has 1 inputs"):
        Dataset([_input()], Preprocess(), data_list=str(tmp_path / "l.txt"))
    (tmp_path / "l.txt").write_text("a.npy\nb.npy\n")
    with pytest.raises(UserError, match=r"l\.txt:2: file '.*b\.npy' not found"):
        Dataset([_input()], Preprocess(), data_list=str(tmp_path / "l.txt"))
    (tmp_path / "l.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="names no samples"):
        Dataset([_input()], Preprocess(), data_list=str(tmp_path / "l.txt"))
    with pytest.raises(UserError, match="exactly one of --dataset and --data_list"):
        Dataset([_input()], Preprocess())


# ----------------------------------------------------------------------------- npz inputs
def test_npz_key_matching_and_single_key_fallback(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "one.npz", data=x)                       # one array, another name: it feeds the input
    np.testing.assert_array_equal(load_inputs(str(tmp_path / "one.npz"), [_input()], Preprocess())["x"], x)
    np.savez(tmp_path / "named.npz", other=x + 1, x=x)           # the input's name wins over the other keys
    np.testing.assert_array_equal(load_inputs(str(tmp_path / "named.npz"), [_input()], Preprocess())["x"], x)
    np.savez(tmp_path / "two.npz", p=x, q=x)
    with pytest.raises(UserError, match=r"two\.npz: no array for input\(s\) 'x' \(keys: p, q\)"):
        load_inputs(str(tmp_path / "two.npz"), [_input()], Preprocess())
    # two inputs never fall back: each needs its own key
    np.savez(tmp_path / "ab.npz", a=x)
    with pytest.raises(UserError, match="'b'"):
        load_inputs(str(tmp_path / "ab.npz"), [_input("a"), _input("b")], Preprocess())


def test_folder_of_npy_for_a_two_input_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="2 inputs"):
        Dataset([_input("a"), _input("b")], Preprocess(), str(_folder(tmp_path / "a", NAMES[:2])))


def test_non_finite_sample_is_refused(tmp_path):
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 1, 2, 3] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(UserError, match=r"n\.npy: input 'x' contains NaN"):
        load_inputs(str(tmp_path / "n.npy"), [_input()], Preprocess())


# ----------------------------------------------------------------------------- image preprocessing
def _png(path, img):
    Image.fromarray(img).save(path)
    return str(path)


IMG = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]],
                [[5, 15, 25], [35, 45, 55], [65, 75, 85], [95, 105, 115]],
                [[0, 0, 0], [255, 255, 255], [1, 2, 3], [4, 5, 6]]], np.uint8)          # 3 x 4 RGB


def test_image_mean_scale_bgr_nchw_by_hand(tmp_path):
    p = _png(tmp_path / "i.png", IMG)
    mean, scale = [1.0, 2.0, 3.0], [0.5, 0.25, 2.0]
    pre = Preprocess(mean=mean, scale=scale, pixel_format="bgr", channel_format="nchw")
    x = load_inputs(p, [_input(shape=(1, 3, 3, 4))], pre)["x"]
    assert x.shape == (1, 3, 3, 4) and x.dtype == np.float32
    for c in range(3):                      # channel c of BGR is RGB channel 2 - c
        for i in range(3):
            for j in range(4):
                assert x[0, c, i, j] == (float(IMG[i, j, 2 - c]) - mean[c]) * scale[c]
    rgb_nhwc = load_inputs(p, [_input(shape=(1, 3, 4, 3))],
                           Preprocess(mean=mean, scale=scale, pixel_format="rgb", channel_format="nhwc"))["x"]
    np.testing.assert_array_equal(rgb_nhwc[0], (IMG.astype(np.float32) - mean) * np.float32(scale))
    gray = load_inputs(p, [_input(shape=(1, 1, 3, 4))], Preprocess(pixel_format="gray"))["x"]
    np.testing.assert_allclose(gray[0, 0], IMG @ np.array([0.299, 0.587, 0.114]), rtol=1e-6, atol=1e-4)


def test_keep_aspect_ratio_pads_center_or_top_left(tmp_path):
    # a 2 x 4 image into a 4 x 4 input: ratio min(4/2, 4/4) = 1, so no resampling, only padding
    img = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 5
    p = _png(tmp_path / "i.png", img)
    for pad_type, top in (("center", 1), ("normal", 0)):
        pre = Preprocess(pixel_format="rgb", keep_aspect_ratio=True, pad_value=7, pad_type=pad_type,
                         mean=[1.0, 1.0, 1.0])
        x = load_inputs(p, [_input(shape=(1, 3, 4, 4))], pre)["x"][0]
        want = np.full((4, 4, 3), 7.0, np.float32)
        want[top:top + 2] = img
        np.testing.assert_array_equal(x, (want - 1.0).transpose(2, 0, 1), err_msg=pad_type)


def test_keep_aspect_ratio_resizes_the_long_side(tmp_path):
    # 2 x 1 (h x w) into 4 x 4: ratio min(4/2, 4/1) = 2 -> 4 x 2, padded left and right by one column
    img = np.array([[[0, 0, 0]], [[100, 100, 100]]], np.uint8)
    p = _png(tmp_path / "i.png", img)
    x = load_inputs(p, [_input(shape=(1, 3, 4, 4))],
                    Preprocess(pixel_format="rgb", keep_aspect_ratio=True, pad_value=0))["x"][0, 0]
    # bilinear 2 -> 4 with half-pixel centres: source rows -0.25, 0.25, 0.75, 1.25 (clamped) -> 0, 25, 75, 100
    col = np.array([0, 25, 75, 100], np.float32)
    want = np.zeros((4, 4), np.float32)
    want[:, 1] = want[:, 2] = col
    np.testing.assert_allclose(x, want, atol=1e-4)


def test_resize_dims_then_center_crop(tmp_path):
    # 2 x 2 image resized to resize_dims 4 x 4, then the centre 2 x 2 (rows and columns 1..2) is the input
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[0, 40], [80, 200]]
    img[..., 1] = [[10, 10], [10, 10]]
    img[..., 2] = [[255, 0], [0, 255]]
    p = _png(tmp_path / "i.png", img)
    x = load_inputs(p, [_input(shape=(1, 3, 2, 2))],
                    Preprocess(pixel_format="rgb", resize_dims=[4, 4], mean=[0, 0, 0], scale=[1, 1, 1]))["x"][0]
    # rows 1 and 2 of a 2 -> 4 half-pixel bilinear resize sit at source 0.25 and 0.75
    a = np.array([[0.75, 0.25], [0.25, 0.75]])
    for c in range(3):
        np.testing.assert_allclose(x[c], a @ img[..., c].astype(np.float64) @ a.T, atol=1e-3, err_msg=str(c))


def test_downscale_is_opencv_bilinear_not_antialiased(tmp_path):
    # shrinking 8 -> 4 columns: OpenCV's INTER_LINEAR (what TPU-MLIR preprocesses with) samples at source
    # 0.5, 2.5, 4.5, 6.5, i.e. the mean of each pixel pair; an antialiasing filter would blend neighbours too
    row = np.array([0, 100, 0, 100, 200, 0, 50, 50], np.uint8)
    img = np.repeat(np.repeat(row[None, :, None], 2, axis=0), 3, axis=2)
    p = _png(tmp_path / "i.png", img)
    x = load_inputs(p, [_input(shape=(1, 3, 2, 4))], Preprocess(pixel_format="rgb"))["x"][0, 0]
    np.testing.assert_allclose(x, [[50, 50, 100, 50]] * 2, atol=1e-4)


def test_resize_agrees_with_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference for the bilinear resize")
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    p = _png(tmp_path / "i.png", img)
    for h, w in ((16, 24), (37, 53), (80, 30), (9, 100)):
        x = load_inputs(p, [_input(shape=(1, 3, h, w))], Preprocess(pixel_format="rgb"))["x"][0]
        ref = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(x.transpose(1, 2, 0), ref, atol=1e-3, err_msg=f"{h}x{w}")


def test_resize_dims_smaller_than_input_is_an_error(tmp_path):
    p = _png(tmp_path / "i.png", IMG)
    with pytest.raises(UserError, match="resize_dims"):
        load_inputs(p, [_input(shape=(1, 3, 4, 4))], Preprocess(resize_dims=[2, 2]))
