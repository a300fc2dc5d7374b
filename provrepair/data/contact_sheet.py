"""A PNG contact sheet of every corruption at every severity, for looking at the suite.

Rows are corruptions (labelled with their name and group), columns the clean image then severities
1..5. ``python -m provrepair.data.contact_sheet OUT.png`` draws one for the first MNIST test digit
(``--rgb`` for a 32x32 colour image: skimage's bundled "chelsea" cat, downscaled).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InputError, ProvRepairError
from ..fileio import atomic_path
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_group

__all__ = ["contact_sheet", "sample_rgb_image"]

_BG = (255, 255, 255)
_FG = (20, 20, 20)


def _as_chw(image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise InputError(
            f"contact_sheet needs one image of shape (C, H, W), (H, W) or (1, C, H, W); got {np.shape(image)}"
        )
    return x


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def contact_sheet(
    image,
    path: str | os.PathLike,
    *,
    names: Iterable[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    zoom: int | None = None,
    colours: int | None = 256,
) -> None:
    """Write a PNG grid of ``image`` under every corruption in ``names`` at every severity.

    ``image``: one float image in [0, 1], ``(C, H, W)``/``(H, W)``. Each cell is upscaled by the
    integer ``zoom`` (default: to about 96 px) with nearest-neighbour so pixels stay visible. A colour
    sheet is reduced to a palette of ``colours`` colours (median cut, no dithering; ``None`` keeps
    24-bit RGB), which halves the file. The file is written atomically.
    """
    from PIL import Image, ImageDraw

    x = _as_chw(image)
    names = tuple(names)
    severities = tuple(severities)
    c, h, w = x.shape
    zoom = zoom or max(1, round(96 / max(h, w)))
    cell_h, cell_w = h * zoom, w * zoom
    pad, label_w, head_h = 4, 150, 22
    font, small = _font(13), _font(11)
    rows = []
    for name in names:
        row = [x] + [corrupt(x[None], name, s, seed=seed)[0] for s in severities]
        rows.append((name, row))
    sheet_w = label_w + (1 + len(severities)) * (cell_w + pad) + pad
    sheet_h = head_h + len(rows) * (cell_h + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), _BG)
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        draw.text((label_w + pad + k * (cell_w + pad), 5), title, fill=_FG, font=font)
    for r, (name, row) in enumerate(rows):
        top = head_h + r * (cell_h + pad) + pad
        draw.text((6, top + cell_h // 2 - 14), name, fill=_FG, font=font)
        group = corruption_group(name).replace("_", " ")
        draw.text((6, top + cell_h // 2 + 2), group, fill=(110, 110, 110), font=small)
        for k, img in enumerate(row):
            u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
            tile = Image.fromarray(u8[0] if c == 1 else u8.transpose(1, 2, 0))
            tile = tile.convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            sheet.paste(tile, (label_w + pad + k * (cell_w + pad), top))
    if c == 3 and colours:
        sheet = sheet.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    elif c == 1:
        sheet = sheet.convert("L")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)


def sample_rgb_image(size: int = 32) -> np.ndarray:
    """A colourful (3, size, size) float image in [0, 1]: skimage's bundled cat photo, downscaled
    (a procedural scene if scikit-image's data files are missing)."""
    from PIL import Image

    try:
        from skimage import data

        photo = data.chelsea()  # (300, 451, 3) uint8, ships inside scikit-image
        top, left = 0, 70
        crop = photo[top : top + 300, left : left + 300]
        img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BOX), dtype=np.float32) / 255.0
        return img.transpose(2, 0, 1).copy()
    except (ImportError, OSError, ValueError):  # pragma: no cover - scikit-image without its data files
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        img = np.stack([0.3 + 0.5 * yy, 0.6 + 0.3 * yy, 0.95 - 0.2 * yy])  # sky
        ground = yy > 0.7
        img[:, ground] = np.array([0.2, 0.6, 0.2])[:, None]
        sun = (xx - 0.3) ** 2 + (yy - 0.35) ** 2 < 0.03
        img[:, sun] = np.array([0.95, 0.2, 0.15])[:, None]
        return img.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="PNG file to write")
    ap.add_argument("--rgb", action="store_true", help="use a 32x32 colour image instead of an MNIST digit")
    ap.add_argument("--index", type=int, default=0, help="MNIST test image index (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.rgb:
            image = sample_rgb_image(32)
        else:
            from .mnist import load_mnist

            image = load_mnist("test", flat=False)[0][args.index]
        contact_sheet(image, args.out, seed=args.seed)
    except ProvRepairError as exc:  # e.g. MNIST not installed: the message says how to fix it
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
