"""Regenerate examples/tiny_dataset/: a tiny LoRA concept for demos and smoke tests.

The concept is "a red circle with a yellow ring on a blue background" at varying positions and sizes:
six 96x96 images (PNG and JPEG) with captions, plus one in the kohya repeat folder 2_extra/ (2 repeats).
Deterministic (fixed seed); the generated files are committed, so running this is only needed to change them.
    python3 examples/make_tiny_dataset.py
"""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
SUPERSAMPLE = 4  # draw large, then shrink: anti-aliased edges without extra dependencies
BLUE, RED, YELLOW = (40, 70, 170), (210, 40, 40), (245, 205, 60)
OUT = Path(__file__).resolve().parent / "tiny_dataset"


def draw_concept(rng: random.Random) -> tuple[Image.Image, str]:
    """One image of the concept and a caption describing where and how big the circle is."""
    big = SIZE * SUPERSAMPLE
    radius = rng.uniform(0.14, 0.32) * big
    cx = rng.uniform(radius + 4, big - radius - 4)
    cy = rng.uniform(radius + 4, big - radius - 4)
    shade = rng.randint(-20, 20)
    image = Image.new("RGB", (big, big), tuple(max(0, min(255, c + shade)) for c in BLUE))
    draw = ImageDraw.Draw(image)
    ring = radius * 1.25
    draw.ellipse([cx - ring, cy - ring, cx + ring, cy + ring], fill=YELLOW)
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=RED)
    size_word = "small" if radius < 0.2 * big else "large" if radius > 0.26 * big else "medium"
    row = "top" if cy < 0.42 * big else "bottom" if cy > 0.58 * big else "middle"
    column = "left" if cx < 0.42 * big else "right" if cx > 0.58 * big else "center"
    where = "center" if (row, column) == ("middle", "center") else f"{row} {column}"
    caption = f"a {size_word} red circle with a yellow ring, blue background, {where}"
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS), caption


def main() -> None:
    rng = random.Random(20240611)
    files = [f"circle_{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(1, 7)] + ["2_extra/circle_07.png"]
    for name in files:
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image, caption = draw_concept(rng)
        if path.suffix == ".jpg":
            image.save(path, quality=90)
        else:
            image.save(path, optimize=True)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        print(f"{name}: {caption}")


if __name__ == "__main__":
    main()
