"""A contact sheet: one row per class with a few of its images, to see the data at a glance."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from petscan.data.folders import list_images
from petscan.data.images import ImageError, load_rgb
from petscan.params.loading import PARAMS_FILE, load_section
from petscan.utils.errors import MissingInputError, reports_user_errors
from petscan.utils.io import atomic_path

THUMB_HEIGHT = 300
LABEL_WIDTH = 190
CAPTION_HEIGHT = 22
PAD = 10


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumbnail(path: Path, height: int, max_width: int) -> Image.Image:
    image = Image.fromarray(load_rgb(path))
    scale = min(height / image.height, max_width / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def pick_files(raw_dir: str | Path, folder: str, per_class: int, seed: int) -> list[Path]:
    """A seeded sample of `per_class` files of one class folder, in name order."""
    files = list_images(Path(raw_dir) / folder)
    chosen = random.Random(f"{seed}:{folder}").sample(files, min(per_class, len(files)))
    return sorted(chosen)


def contact_sheet(
    raw_dir: str | Path,
    classes: dict[str, str],
    out: str | Path,
    per_class: int = 4,
    seed: int = 0,
    thumb_height: int = THUMB_HEIGHT,
) -> Path:
    """Write a PNG grid: one row per class folder (labelled with its class name and image
    count), `per_class` images each, captioned with their file names. Returns `out`."""
    raw_dir, out = Path(raw_dir), Path(out)
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"{raw_dir} not found: generate the data first (`petscan generate`)"
        )
    cell_width = int(thumb_height * 0.75)
    width = LABEL_WIDTH + per_class * (cell_width + PAD) + PAD
    row_height = thumb_height + CAPTION_HEIGHT + PAD
    sheet = Image.new("RGB", (width, PAD + row_height * len(classes)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    title, caption = _font(20), _font(13)
    for r, (folder, name) in enumerate(classes.items()):
        top = PAD + r * row_height
        files = pick_files(raw_dir, folder, per_class, seed)
        total = len(list_images(raw_dir / folder))
        draw.text((PAD, top + thumb_height // 2 - 20), name, fill=(0, 0, 0), font=title)
        draw.text(
            (PAD, top + thumb_height // 2 + 6), f"{total} images", fill=(90, 90, 90), font=caption
        )
        for c, path in enumerate(files):
            left = LABEL_WIDTH + c * (cell_width + PAD)
            try:
                thumb = _thumbnail(path, thumb_height, cell_width)
            except ImageError as err:
                draw.text((left, top), f"unreadable:\n{err.reason}", fill=(200, 0, 0), font=caption)
            else:
                offset = ((cell_width - thumb.width) // 2, (thumb_height - thumb.height) // 2)
                sheet.paste(thumb, (left + offset[0], top + offset[1]))
                draw.rectangle(
                    (left - 1, top - 1, left + cell_width, top + thumb_height),
                    outline=(200, 200, 200),
                )
            draw.text((left, top + thumb_height + 4), path.name, fill=(0, 0, 0), font=caption)
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return out


@reports_user_errors("petscan contact-sheet")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="petscan contact-sheet",
        description="Write a PNG with a few images of every class (params section `data`).",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--raw-dir", help="image folder (default: data.raw_dir)")
    parser.add_argument(
        "--out", default="reports/contact_sheet.png", help="PNG to write (default: %(default)s)"
    )
    parser.add_argument(
        "--per-class", type=int, default=4, help="images per class (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="which images are picked (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    data = load_section("data", args.params)
    raw_dir = Path(args.raw_dir or data.raw_dir)
    try:
        out = contact_sheet(
            raw_dir, data.classes, args.out, per_class=args.per_class, seed=args.seed
        )
    except FileNotFoundError as err:  # no data yet: a user error (exit 1), see utils.errors
        raise MissingInputError(str(err)) from None
    print(f"wrote {out} ({len(data.classes)} classes x {args.per_class} images from {raw_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
