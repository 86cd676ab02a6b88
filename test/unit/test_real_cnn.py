"""Real convolutional networks against ONNX Runtime, on real images.

EfficientNet-Lite0 (ImageNet weights, exported from torch), PP-OCRv4 det / rec and the PP-OCR direction
classifier (the rapidocr wheel's ONNX files), and YOLOv8- and YOLOv5-style detectors defined here as small torch
modules (Conv-BN-SiLU, C2f / C3, SPPF, upsample + concat neck, decoding heads) and exported in the test.
Each model is imported for batch 1 and a whole batch runs at once; outputs must match ONNX Runtime (cosine >=
0.99999, max abs error <= 1e-4 of the output range) and survive the MLIR round trip.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.real
pytest.importorskip("onnxruntime")


def _skimage():
    try:
        import skimage.data
        import skimage.transform
        return skimage
    except ImportError as e:
        pytest.skip(f"scikit-image unavailable: {e}")


def _resize(img, h, w):
    sk = _skimage()
    return sk.transform.resize(img, (h, w), order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)


def _rgb(img):
    img = np.asarray(img)
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]


def ops_of(g):
    return {n.op for n in g.compute_nodes()}


# ----------------------------------------------------------------------------------------------- EfficientNet-Lite0
def test_efficientnet_lite0(onnx_check, zoo_model):
    from tpu_cal.zoo import efficientnet as eff
    sk = _skimage()
    path = zoo_model(eff.efficientnet_lite0)
    imgs = [sk.data.astronaut(), sk.data.coffee(), sk.data.chelsea(), sk.data.rocket()]
    x = np.stack([eff.preprocess(i) for i in imgs])
    g, (logits,) = onnx_check(path, {eff.INPUT: x})
    # every BatchNormalization folded into its conv, every ZeroPad2d into the next conv
    assert "top.scale" not in ops_of(g) and "top.pad" not in ops_of(g)
    assert sum(n.op == "top.conv" for n in g.nodes) == 49
    top1 = logits.argmax(1)
    assert top1[2] in (281, 282, 283, 284, 285, 286, 287), f"chelsea should be a cat, got class {top1[2]}"


# ----------------------------------------------------------------------------------------------- PP-OCR
def _ppocr(zoo_model, kind):
    from tpu_cal.zoo.ppocr import ppocr
    return zoo_model(ppocr, kind)


def _text_lines(h, w, n):
    """Text-line crops of scikit-image's page.png (BGR float 0..255), resized to h x w."""
    sk = _skimage()
    page = sk.data.page().astype(np.float32)
    ink = (page < 100).mean(1)
    rows, start = [], None
    for y, v in enumerate(ink > 0.02):
        if v and start is None:
            start = y
        elif not v and start is not None:
            if y - start >= 8:
                rows.append((max(0, start - 3), min(page.shape[0], y + 3)))
            start = None
    crops = [_resize(_rgb(page[a:b]), h, w) for a, b in rows[:n]]
    assert len(crops) == n, f"found {len(crops)} text lines"
    return crops


def test_ppocr_det(onnx_check, zoo_model):
    path = _ppocr(zoo_model, "det")
    sk = _skimage()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    imgs = [_resize(_rgb(sk.data.page()), 320, 320), _resize(_rgb(sk.data.text()), 320, 320)]
    x = np.stack([((i[..., ::-1] / 255.0 - mean) / std).transpose(2, 0, 1) for i in imgs]).astype(np.float32)
    g, (prob,) = onnx_check(path, {"x": x})
    assert prob.shape == (2, 1, 320, 320)
    assert "top.deconv" in ops_of(g) and "top.resize" in ops_of(g)
    # PP-LCNetV3's affine blocks after a conv are in the conv, the exported hardswishes are one op each
    # (TPU-MLIR's graph: 197 ops), and the module still matches ONNX Runtime (onnx_check)
    ops = [n.op for n in g.compute_nodes()]
    assert ops.count("top.hardswish") == 24 and len(ops) == 197
    assert "top.clip" not in ops and "top.div" not in ops


@pytest.mark.parametrize("kind,h,w", [("cls", 48, 192), ("rec", 48, 320)])
def test_ppocr_cls_rec(onnx_check, zoo_model, kind, h, w):
    path = _ppocr(zoo_model, kind)
    lines = _text_lines(h, w, 3)
    lines.append(lines[0][::-1, ::-1])          # a line turned by 180 degrees
    x = np.stack([((i[..., ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for i in lines]).astype(np.float32)
    onnx_check(path, {"x": x})


# ----------------------------------------------------------------------------------------------- YOLO-style detectors
def _torch():
    try:
        import torch
        return torch
    except ImportError as e:
        pytest.skip(f"torch unavailable: {e}")


def _yolo_modules(torch):
    nn = torch.nn

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1, p=None):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c1, c2, shortcut=True, e=1.0):
            super().__init__()
            c_ = int(c2 * e)
            self.cv1, self.cv2 = Conv(c1, c_, 3), Conv(c_, c2, 3)
            self.add = shortcut and c1 == c2

        def forward(self, x):
            return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c, 1)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class C3(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=True):
            super().__init__()
            c_ = c2 // 2
            self.cv1, self.cv2, self.cv3 = Conv(c1, c_, 1), Conv(c1, c_, 1), Conv(2 * c_, c2, 1)
            self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut) for _ in range(n)))

        def forward(self, x):
            return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    return Conv, C2f, C3, SPPF


def _make_yolov8(torch, nc=6, reg_max=16):
    nn = torch.nn
    Conv, C2f, C3, SPPF = _yolo_modules(torch)

    class DFL(nn.Module):
        def __init__(self, c1=16):
            super().__init__()
            self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
            self.c1 = c1

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    class Detect(nn.Module):
        def __init__(self, ch, strides):
            super().__init__()
            self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
            c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
            self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                     for x in ch)
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
            self.dfl = DFL(reg_max)
            self.strides = strides

        def forward(self, xs):
            shape = xs[0].shape
            xs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
            anchors, strides = [], []
            for x, s in zip(xs, self.strides):
                _, _, h, w = x.shape
                sx = torch.arange(w, dtype=torch.float32) + 0.5
                sy = torch.arange(h, dtype=torch.float32) + 0.5
                yy, xx = torch.meshgrid(sy, sx, indexing="ij")
                anchors.append(torch.stack((xx, yy), -1).view(-1, 2))
                strides.append(torch.full((h * w, 1), float(s)))
            anchors = torch.cat(anchors).transpose(0, 1)
            strides = torch.cat(strides).transpose(0, 1)
            x_cat = torch.cat([x.view(shape[0], self.no, -1) for x in xs], 2)
            box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
            lt, rb = self.dfl(box).chunk(2, 1)
            x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
            dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
            return torch.cat((dbox, cls.sigmoid()), 1)

    class YOLOv8(nn.Module):
        def __init__(self):
            super().__init__()
            self.b0, self.b1, self.b2 = Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True)
            self.b3, self.b4 = Conv(32, 64, 3, 2), C2f(64, 64, 2, True)
            self.b5, self.b6 = Conv(64, 96, 3, 2), C2f(96, 96, 1, True)
            self.b7, self.b8, self.b9 = Conv(96, 128, 3, 2), C2f(128, 128, 1, True), SPPF(128, 128)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.h1, self.h2 = C2f(128 + 96, 96), C2f(96 + 64, 64)
            self.d1, self.h3 = Conv(64, 64, 3, 2), C2f(64 + 96, 96)
            self.d2, self.h4 = Conv(96, 96, 3, 2), C2f(96 + 128, 128)
            self.detect = Detect((64, 96, 128), (8, 16, 32))

        def forward(self, x):
            p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p4 = self.b6(self.b5(p3))
            p5 = self.b9(self.b8(self.b7(p4)))
            n4 = self.h1(torch.cat((self.up(p5), p4), 1))
            n3 = self.h2(torch.cat((self.up(n4), p3), 1))
            o4 = self.h3(torch.cat((self.d1(n3), n4), 1))
            o5 = self.h4(torch.cat((self.d2(o4), p5), 1))
            return self.detect([n3, o4, o5])

    return YOLOv8()


def _make_yolov5(torch, nc=5):
    nn = torch.nn
    Conv, C2f, C3, SPPF = _yolo_modules(torch)
    anchors = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                           dtype=torch.float32).view(3, 3, 2)

    class Detect(nn.Module):
        def __init__(self, ch, strides, size):
            super().__init__()
            self.no, self.na = nc + 5, 3
            self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
            self.strides = strides
            self.grids, self.anchor_grids = [], []
            for i, s in enumerate(strides):   # grids for the export size, as YOLOv5 caches them
                ny = nx = size // s
                yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
                self.grids.append((torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2) - 0.5).float())
                self.anchor_grids.append(anchors[i].view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2).clone())

        def forward(self, xs):
            z = []
            for i, x in enumerate(xs):
                x = self.m[i](x)
                bs, _, ny, nx = x.shape
                x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
                xy, wh, conf = x.sigmoid().split((2, 2, nc + 1), 4)
                xy = (xy * 2 + self.grids[i]) * self.strides[i]
                wh = (wh * 2) ** 2 * self.anchor_grids[i]
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
            return torch.cat(z, 1)

    class YOLOv5(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.b0, self.b1, self.b2 = Conv(3, 16, 6, 2, 2), Conv(16, 32, 3, 2), C3(32, 32, 1)
            self.b3, self.b4 = Conv(32, 64, 3, 2), C3(64, 64, 2)
            self.b5, self.b6 = Conv(64, 96, 3, 2), C3(96, 96, 1)
            self.b7, self.b8, self.b9 = Conv(96, 128, 3, 2), C3(128, 128, 1), SPPF(128, 128)
            self.l10, self.up = Conv(128, 96, 1), nn.Upsample(None, 2, "nearest")
            self.h13, self.l14 = C3(192, 96, 1, False), Conv(96, 64, 1)
            self.h17 = C3(128, 64, 1, False)
            self.d18, self.h20 = Conv(64, 64, 3, 2), C3(128, 96, 1, False)
            self.d21, self.h23 = Conv(96, 96, 3, 2), C3(192, 128, 1, False)
            self.detect = Detect((64, 96, 128), (8, 16, 32), size)

        def forward(self, x):
            p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p4 = self.b6(self.b5(p3))
            p5 = self.l10(self.b9(self.b8(self.b7(p4))))
            n4 = self.l14(self.h13(torch.cat((self.up(p5), p4), 1)))
            o3 = self.h17(torch.cat((self.up(n4), p3), 1))
            o4 = self.h20(torch.cat((self.d18(o3), n4), 1))
            o5 = self.h23(torch.cat((self.d21(o4), p5), 1))
            return self.detect([o3, o4, o5])

    return YOLOv5(160)


def _randomize_bn(torch, model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean.data = 0.2 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)


def _export(torch, model, path, size, exporter):
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":   # torch's default exporter: opset 18, BN pre-folded, Split with num_outputs
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(model, (torch.zeros(1, 3, size, size),), path, input_names=["images"],
                                  output_names=["output0"], opset_version=18, dynamo=True,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        else:
            torch.onnx.export(model, (torch.zeros(1, 3, size, size),), path, input_names=["images"],
                              output_names=["output0"], opset_version=17, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})


def _images(size):
    sk = _skimage()
    imgs = [sk.data.astronaut(), sk.data.coffee()]
    return np.stack([(_resize(i, size, size) / 255.0).transpose(2, 0, 1) for i in imgs]).astype(np.float32)


@pytest.mark.parametrize("version,exporter", [("v8", "torchscript"), ("v5", "torchscript"), ("v8", "dynamo")])
def test_yolo_style_detector(onnx_check, tmp_path, version, exporter):
    torch = _torch()
    torch.manual_seed(0)
    model = _make_yolov8(torch) if version == "v8" else _make_yolov5(torch)
    _randomize_bn(torch, model, 1)
    path = str(tmp_path / f"yolo{version}.onnx")
    try:
        _export(torch, model, path, 160, exporter)
    except ImportError as e:   # the dynamo exporter needs onnxscript
        pytest.skip(f"{exporter} export unavailable: {e}")
    g, (out,) = onnx_check(path, {"images": _images(160)})
    ops = ops_of(g)
    assert {"top.maxpool", "top.resize", "top.concat", "top.slice", "top.conv"} <= ops
    assert "top.scale" not in ops
    if version == "v8":
        assert out.shape == (2, 4 + 6, 20 * 20 + 10 * 10 + 5 * 5) and "top.softmax" in ops
    else:
        assert out.shape == (2, 3 * (20 * 20 + 10 * 10 + 5 * 5), 10) and "top.pow" in ops
