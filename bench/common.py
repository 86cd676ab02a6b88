"""Deterministic real-image sample sets for the calibration benchmarks (EfficientNet-Lite0 preprocessing).

Two disjoint sets of real photos, none of them synthetic, tiny or binary:

- calibration: scikit-image's astronaut, coffee, chelsea, rocket, hubble_deep_field, immunohistochemistry,
  retina, camera, coins; matplotlib's grace_hopper.jpg; scikit-learn's china.jpg
- evaluation (held out entirely): scikit-learn's flower.jpg, both views of scikit-image's stereo_motorcycle,
  scikit-image's clock

(`skimage.data.cat()` is the same photo as `chelsea()`, so it is not used at all.) Sample k of a set takes the
photos round robin; the first view of every photo is the whole photo, later views are random-resized crops (25-100 %
of the area, aspect 3/4-4/3) flipped left-right with probability 1/2, each drawn from its own seeded generator, so
sample k is the same whatever the set size (the 500-sample set starts with the 170-sample set). Every view goes
through the model's preprocessing (`tpu_cal.zoo.efficientnet.preprocess`: short side to 256, centre crop 224,
(x - 127) / 128) and is stored as a 1x3x224x224 float32 .npy file.

    from common import calibration_set, evaluation_set, load_folder   # with bench/ on sys.path
    folder = calibration_set(170)       # a folder for `tpu-cal calibrate --dataset`
    x = load_folder(evaluation_set(40))  # (40, 3, 224, 224) float32

Folders live under tpu_cal.zoo.cache_dir("bench", ...), are written atomically (a manifest.json lists the source
and crop of every file) and are reused afterwards.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import numpy as np

VERSION = 1          # bump when the recipe changes: the folder name includes it
SEED = 20240611

CAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
              "camera", "coins", "grace_hopper", "china")
EVAL_PHOTOS = ("flower", "motorcycle_left", "motorcycle_right", "clock")


def photo(name: str) -> np.ndarray:
    """One photo as HxWx3 uint8 RGB (grey photos repeated over the three channels)."""
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            img = np.asarray(Image.open(f).convert("RGB"))
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        img = load_sample_image(f"{name}.jpg")
    elif name.startswith("motorcycle_"):
        import skimage.data
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        import skimage.data
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"photo {name}: unexpected array {img.shape} {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def view(name: str, img: np.ndarray, k: int, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """View k of a photo: k = 0 the whole photo, else a seeded random-resized crop, maybe flipped."""
    h, w = img.shape[:2]
    if k == 0:
        return img, {"photo": name, "view": 0, "box": [0, 0, h, w], "flip": False}
    rng = np.random.default_rng([seed, sum(map(ord, name)), len(name), k])
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 32 <= cw <= w and 32 <= ch <= h:
            break
    else:
        ch, cw = h, w
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    flip = bool(rng.random() < 0.5)
    out = img[top:top + ch, left:left + cw]
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out), {"photo": name, "view": k, "box": [top, left, ch, cw], "flip": flip}


def samples(photos: tuple[str, ...], n: int, seed: int = SEED):
    """Yields (file stem, preprocessed 1x3x224x224 float32, description) for samples 0..n-1."""
    from tpu_cal.zoo import efficientnet as eff
    cache: dict[str, np.ndarray] = {}
    for i in range(n):
        name, k = photos[i % len(photos)], i // len(photos)
        if name not in cache:
            cache[name] = photo(name)
        img, desc = view(name, cache[name], k, seed)
        yield f"{i:04d}_{name}_{k:02d}", eff.preprocess(img)[None].astype(np.float32), desc


def _folder(kind: str, photos: tuple[str, ...], n: int) -> str:
    from tpu_cal.zoo import cache_dir
    root = cache_dir("bench")
    target = os.path.join(root, f"{kind}_v{VERSION}_{n}")
    manifest = os.path.join(target, "manifest.json")
    if os.path.exists(manifest):
        return target
    tmp = tempfile.mkdtemp(prefix=f".tmp-{kind}-", dir=root)
    try:
        entries = []
        for stem, x, desc in samples(photos, n):
            np.save(os.path.join(tmp, stem + ".npy"), x)
            entries.append({"file": stem + ".npy", **desc})
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump({"kind": kind, "version": VERSION, "seed": SEED, "photos": list(photos), "samples": entries},
                      f, indent=1)
        if os.path.exists(target):      # a half-written folder from an interrupted run (no manifest)
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return target


def calibration_set(n: int = 170) -> str:
    """Folder of n calibration samples (.npy, 1x3x224x224 float32) from the calibration photos."""
    return _folder("cal", CAL_PHOTOS, n)


def evaluation_set(n: int = 40) -> str:
    """Folder of n evaluation samples from the held-out photos (none of them is used for calibration)."""
    return _folder("eval", EVAL_PHOTOS, n)


def sample_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npy"))


def load_folder(folder: str) -> np.ndarray:
    """All .npy samples of a folder, sorted by name, stacked on the batch axis."""
    return np.concatenate([np.load(f) for f in sample_files(folder)])


def write_section(path: str, title: str, body: str) -> None:
    """Replaces (or appends) the `## <title>` section of RESULTS.md with `body`, leaving the other sections alone;
    a hand-written `### Notes` subsection at the end of the old section is kept. Written atomically."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    section = f"## {title}\n\n" + body.strip() + "\n"
    m = re.search(rf"^## {re.escape(title)}[ \t]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        notes = re.search(r"^### Notes.*", text[m.end():end], flags=re.M | re.S)
        if notes:
            section += "\n" + notes.group(0).strip() + "\n"
        text = text[:m.start()] + section + ("\n" if nxt else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    for fn, n in ((calibration_set, 170), (evaluation_set, 40)):
        d = fn(n)
        x = load_folder(d)
        print(f"{d}: {x.shape} {x.dtype} range [{x.min():.3f}, {x.max():.3f}]")
