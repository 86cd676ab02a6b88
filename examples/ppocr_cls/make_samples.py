"""Makes the bundled calibration samples: text-line crops of scikit-image's page.png and their 180-degree turns.

PP-OCR's direction classifier tells upright text (label 0) from text turned by 180 degrees (label 1), so the
crops and their turns are real data for it. Run once; the PNGs are committed (about 100 KB).
"""
import os

import numpy as np
from PIL import Image
from skimage import data

# row ranges of the text lines of page.png (read off its darkness profile) and crop width = 4 x height,
# the classifier's 48x192 aspect
LINES = [(12, 31), (48, 64), (66, 81), (84, 99), (102, 117), (118, 136), (148, 166), (172, 190)]
COLUMNS = [0, 96, 192, 288]


def main(out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")):
    os.makedirs(out, exist_ok=True)
    page = data.page()
    for li, (r0, r1) in enumerate(LINES):
        w = 4 * (r1 - r0)
        for c0 in COLUMNS:
            crop = page[r0:r1, c0:min(c0 + w, page.shape[1])]
            Image.fromarray(crop).save(os.path.join(out, f"line{li}_{c0:03d}_0.png"), optimize=True)
            Image.fromarray(np.ascontiguousarray(crop[::-1, ::-1])).save(
                os.path.join(out, f"line{li}_{c0:03d}_180.png"), optimize=True)


if __name__ == "__main__":
    main()
