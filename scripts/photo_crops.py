"""Before/after crops of a JPEG-compressed photo, side by side in one PNG: what the numbers of
BENCHMARKS.md ("A model for real photos") look like.

The photo is shrunk as the benchmark shrinks it (MATLAB bicubic), saved as a JPEG of the given quality (4:2:0),
then enlarged by each method through srd's own engine (tiles and all, as the daemon runs it). Each tile is the
same region of each result, enlarged without smoothing (nearest neighbour) so single pixels stay visible, and
labelled with the method and its PSNR-Y over the whole image.

Example::

    python scripts/photo_crops.py --image ../shared/datasets/bench/Set14/lenna.png --scale 2 --jpeg 75 \\
        --crop 230,230,120,120 --out docs/photo-x2-q75.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from srd.engine.pipeline import Denoise, StageContext
from srd.engine.registry import resolve_model
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.quality.bicubic import bicubic_up, make_lr
from srd.quality.degrade import BenchDegradation
from srd.quality.metrics import crop_to_multiple, psnr_y

LABEL_HEIGHT = 44


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop needs x,y,w,h (four whole numbers), not {text!r}") from None
    if min(x, y) < 0 or min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"--crop {text}: x and y must be 0 or more, w and h 1 or more")
    return x, y, w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="the clean photo (the HR reference)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--jpeg", type=int, default=75, help="JPEG quality of the small input")
    parser.add_argument("--crop", type=_region, required=True, help="x,y,w,h of the region, in HR pixels")
    parser.add_argument("--zoom", type=int, default=3, help="nearest-neighbour enlargement of each tile")
    parser.add_argument("--models", default="edsr-lite,edsr-photo", help="comma-separated model names")
    parser.add_argument("--denoise", type=float, default=5.0, help="also the denoise stage at this strength "
                                                                   "before the first model (0: not)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    image = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {args.image}")
    hr = crop_to_multiple(image, args.scale)
    x, y, w, h = args.crop
    if x + w > hr.shape[1] or y + h > hr.shape[0]:
        raise SystemExit(f"--crop {x},{y},{w},{h} reaches outside the {hr.shape[1]}x{hr.shape[0]} image")
    lr = BenchDegradation(args.jpeg).apply(make_lr(hr, args.scale))
    engine = EngineSettings()
    names = args.models.split(",")
    upscalers = {name: Upscaler(resolve_model(name, args.scale), engine) for name in names}
    results = {"bicubic": bicubic_up(lr, args.scale)}
    if args.denoise:
        denoised = Denoise(strength=args.denoise, colour_strength=args.denoise).apply(lr, StageContext(engine))
        results[f"denoise {args.denoise:g} + {names[0]}"] = upscalers[names[0]].upscale(denoised)
    results.update({name: up.upscale(lr) for name, up in upscalers.items()})
    results["original"] = hr

    tiles = []
    for label, result in results.items():
        tile = cv2.resize(result[y : y + h, x : x + w], (w * args.zoom, h * args.zoom),
                          interpolation=cv2.INTER_NEAREST)
        caption = np.full((LABEL_HEIGHT, tile.shape[1], 3), 255, np.uint8)
        score = "" if label == "original" else f"  {psnr_y(result, hr, args.scale):.2f} dB"
        cv2.putText(caption, label + score, (8, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([caption, tile]))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    row = np.hstack([part for tile in tiles for part in (tile, gap)][:-1])
    title = np.full((LABEL_HEIGHT, row.shape[1], 3), 255, np.uint8)
    cv2.putText(title, f"{args.image.name}: MATLAB bicubic /{args.scale}, JPEG q{args.jpeg} 4:2:0, then x{args.scale} "
                       f"(PSNR-Y of the whole image)", (8, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    if not cv2.imwrite(str(args.out), np.vstack([title, row])):
        raise SystemExit(f"cannot write {args.out}")
    print(f"wrote {args.out}: {', '.join(results)}")


if __name__ == "__main__":
    main()
