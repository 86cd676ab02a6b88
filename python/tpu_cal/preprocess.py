"""Image preprocessing as model_transform records it in the module, and loading of test inputs.

Order (TPU-MLIR's): decode -> pixel format -> resize to resize_dims (or the model's size), keeping the aspect
ratio with padding if asked -> centre crop to the model's size -> (x - mean) * scale -> channel format.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PIXEL_FORMATS = ("rgb", "bgr", "gray", "rgba")
CHANNEL_FORMATS = ("nchw", "nhwc", "none")


@dataclass
class Preprocess:
    mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    pixel_format: str = "bgr"
    channel_format: str = "nchw"
    keep_aspect_ratio: bool = False
    resize_dims: list = field(default_factory=list)    # [h, w]; empty = the model's input size
    pad_value: int = 0
    pad_type: str = "center"                           # center or normal (image at the top-left)

    def to_attrs(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_attrs(d: dict | None) -> "Preprocess":
        p = Preprocess()
        for k, v in (d or {}).items():
            if hasattr(p, k):
                setattr(p, k, v)
        return p

    def apply(self, img: np.ndarray, shape: tuple) -> np.ndarray:
        """img: HxWxC uint8 RGB (or HxW gray) -> one batch element of `shape` ([1,C,H,W] or [1,H,W,C])."""
        if self.channel_format == "nhwc":
            h, w, c = shape[1], shape[2], shape[3]
        else:
            c, h, w = shape[1], shape[2], shape[3]
        img = _to_pixel_format(img, self.pixel_format)
        rh, rw = (self.resize_dims or [h, w])[:2]
        if self.keep_aspect_ratio:
            ratio = min(rh / img.shape[0], rw / img.shape[1])
            nh, nw = max(1, round(img.shape[0] * ratio)), max(1, round(img.shape[1] * ratio))
            small = _resize(img, nh, nw)
            canvas = np.full((rh, rw, small.shape[2]), self.pad_value, np.float32)
            top, left = ((rh - nh) // 2, (rw - nw) // 2) if self.pad_type == "center" else (0, 0)
            canvas[top:top + nh, left:left + nw] = small
            img = canvas
        else:
            img = _resize(img, rh, rw)
        top, left = max(0, (img.shape[0] - h) // 2), max(0, (img.shape[1] - w) // 2)
        img = img[top:top + h, left:left + w]
        if img.shape[:2] != (h, w):
            raise UserError(f"resize_dims {self.resize_dims} are smaller than the model input {h}x{w}")
        if img.shape[2] != c:
            raise UserError(f"pixel_format '{self.pixel_format}' gives {img.shape[2]} channels, the model "
                            f"input has {c}")
        mean = np.asarray(self.mean, np.float32)[:c]
        scale = np.asarray(self.scale, np.float32)[:c]
        x = (img - mean) * scale
        x = x if self.channel_format == "nhwc" else x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None].astype(np.float32))


def _to_pixel_format(img: np.ndarray, fmt: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4 and fmt != "rgba":
        img = img[:, :, :3]
    if fmt == "gray":
        if img.shape[2] == 3:
            img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
        return img.astype(np.float32)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if fmt == "bgr":
        img = img[:, :, ::-1]
    return img.astype(np.float32)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, edges clamped, no antialiasing: OpenCV's INTER_LINEAR, which
    TPU-MLIR's preprocessing uses) of HxWxC float32. PIL's BILINEAR is not that: it widens its filter when
    shrinking, so a 2x smaller input would be smoothed differently from what the deployed model sees."""
    img = np.asarray(img, np.float32)
    if img.shape[:2] == (h, w):
        return img

    def taps(n_in: int, n_out: int):
        src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(np.intp)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    r0, r1, fr = taps(img.shape[0], h)
    fr = fr[:, None, None]
    rows = img[r0] * (1 - fr) + img[r1] * fr
    c0, c1, fc = taps(img.shape[1], w)
    fc = fc[None, :, None]
    return np.ascontiguousarray(rows[:, c0] * (1 - fc) + rows[:, c1] * fc, dtype=np.float32)


def load_image(path: str) -> np.ndarray:
    """HxWx3 (or HxW) uint8 RGB; a corrupt file is a UserError naming it."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
            return np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_inputs(path: str, inputs: list, preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Reads a test input (.npz keyed by input names, .npy for a single input, or an image) for the graph
    input nodes `inputs` (tpu_cal.graph.Node); checks names, shapes and dtypes."""
    from .fileio import read_npz

    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        data = read_npz(path, "test input npz")
        missing = [n.name for n in inputs if n.name not in data]
        if missing:
            if len(inputs) == 1 and len(data) == 1:
                data = {inputs[0].name: next(iter(data.values()))}
            else:
                names = ", ".join(repr(m) for m in missing)
                raise UserError(f"{path}: no array for input(s) {names} (keys: {', '.join(data)})")
    elif ext == ".npy":
        if len(inputs) != 1:
            raise UserError(f"{path}: a .npy feeds one input, the model has {len(inputs)}; use an .npz")
        try:
            data = {inputs[0].name: np.load(path, allow_pickle=False)}
        except Exception as e:
            raise UserError(f"{path}: not a readable .npy ({e})") from None
    elif ext in IMAGE_EXTS:
        if len(inputs) != 1:
            raise UserError(f"{path}: an image feeds one input, the model has {len(inputs)}; use an .npz")
        if any(d is None for d in inputs[0].shape):
            raise UserError(f"{path}: input '{inputs[0].name}' has dynamic shape {list(inputs[0].shape)}; give "
                            f"--input_shapes to preprocess an image")
        data = {inputs[0].name: preprocess.apply(load_image(path), inputs[0].shape)}
    else:
        raise UserError(f"{path}: unknown test input type '{ext}' (expected .npz, .npy or an image)")
    out = {}
    for n in inputs:
        x = np.asarray(data[n.name])
        if x.ndim == len(n.shape) - 1:
            x = x[None]
        if x.ndim != len(n.shape) or any(d is not None and d != s for d, s in zip(n.shape, x.shape)):
            want = "[" + ",".join("?" if d is None else str(d) for d in n.shape) + "]"
            raise UserError(f"{path}: input '{n.name}' has shape {list(x.shape)}, the model expects {want}")
        if np.issubdtype(x.dtype, np.floating) != np.issubdtype(np.dtype(n.dtype), np.floating):
            raise UserError(f"{path}: input '{n.name}' has dtype {x.dtype}, the model expects {n.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise UserError(f"{path}: input '{n.name}' contains NaN or Inf")
        out[n.name] = x.astype(n.dtype, copy=False)
    return out
