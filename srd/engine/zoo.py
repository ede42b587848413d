"""Catalogue of the OpenCV-zoo super-resolution models (TensorFlow frozen graphs) that users can download.

These are the `.pb` files that OpenCV's ``dnn_superres`` documentation points to, published in the original
GSoC 2019 repositories. Each entry pins size and sha256 so that a download is verified before it is used:
raw GitHub URLs follow a moving branch, and a changed or truncated file must never be loaded silently.

Sizes and hashes come from shared/models/opencv-zoo/SOURCES.md. The non-EDSR ones were computed from the
repositories' own blobs; the EDSR ones come from Git LFS pointers of the same files in another repository
(ehtec/pie-chart-ocr), because the ~38 MB EDSR blobs were not available to check directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_RAW = "https://raw.githubusercontent.com"

# Matches the zoo's file naming, e.g. "FSRCNN-small_x3.pb"; group 1 is the family, group 2 the scale.
_ZOO_FILE_RE = re.compile(r"(edsr|espcn|fsrcnn|fsrcnn-small|lapsrn)_x([1-9][0-9]*)\.pb", re.IGNORECASE)


@dataclass(frozen=True)
class ZooModel:
    """One downloadable zoo model.

    Attributes:
        name: Family as the zoo spells it ("EDSR", "ESPCN", "FSRCNN", "FSRCNN-small", "LapSRN").
        scale: Upscaling factor.
        file: File name, also the name it is saved under.
        url: Canonical download URL (raw file in the original repository).
        sha256: Expected hex digest of the file.
        size_bytes: Expected size, checked before the digest so a wrong file is rejected early.
        convention: Pre/post-processing convention of `srd.engine` ("edsr", "espcn", "fsrcnn", "lapsrn").
    """

    name: str
    scale: int
    file: str
    url: str
    sha256: str
    size_bytes: int
    convention: str


def _model(name: str, scale: int, repo: str, folder: str, size_bytes: int, sha256: str) -> ZooModel:
    file = f"{name}_x{scale}.pb"
    convention = "fsrcnn" if name == "FSRCNN-small" else name.lower()
    return ZooModel(
        name=name,
        scale=scale,
        file=file,
        url=f"{_RAW}/{repo}/master/{folder}/{file}",
        sha256=sha256,
        size_bytes=size_bytes,
        convention=convention,
    )


_EDSR = ("Saafke/EDSR_Tensorflow", "models")
_FSRCNN = ("Saafke/FSRCNN_Tensorflow", "models")
_ESPCN = ("fannymonori/TF-ESPCN", "export")
_LAPSRN = ("fannymonori/TF-LapSRN", "export")

ZOO: tuple[ZooModel, ...] = (
    _model("EDSR", 2, *_EDSR, 38490162, "585623221baa070279a0d1e7e113a4c3faba0f318ca7fdd9a65d9afc0763d9b4"),
    _model("EDSR", 3, *_EDSR, 38524784, "3baa3740fdb8ee9c52f1a41d69fa74cb9feef0fa9bfeec24f0ee58b928068e9a"),
    _model("EDSR", 4, *_EDSR, 38573255, "dd35ce3cae53ecee2d16045e08a932c3e7242d641bb65cb971d123e06904347f"),
    _model("ESPCN", 2, *_ESPCN, 86446, "59f77351e1d7c0057bf6fe088b4a8a07e42c468c8c8aebb674a6b4ea1823221d"),
    _model("ESPCN", 3, *_ESPCN, 92226, "0e667db7a431d14c32568ed79bf21701a64df8b1d162e48ca1f8800affe2c2b3"),
    _model("ESPCN", 4, *_ESPCN, 100323, "e403f06309229cf36009cd8fb0da032ba7643fae9f15cf94fe562e8edf8fef47"),
    _model("FSRCNN", 2, *_FSRCNN, 38973, "366b33f0084c7b3f2bf6724f0a2c77bca94fcec9d7b6d72389d330073b380d5c"),
    _model("FSRCNN", 3, *_FSRCNN, 40093, "efd38655a815908c6c8954db6052f128e76a735f1de657894c477d0dc0b64481"),
    _model("FSRCNN", 4, *_FSRCNN, 41661, "5c68d18db561aed8ead4ffedf1b897ea615baaf60ebf6c35f8e641f8fa4a21bf"),
    _model("FSRCNN-small", 2, *_FSRCNN, 9595, "429e4793d049c1ae16ddbbc322fd11c3c08831c0c20137390b4d098976a2b0d9"),
    _model("FSRCNN-small", 3, *_FSRCNN, 10235, "58e72d0c4231b8e754180e787d7348f45ae6230ee3c5af7dc12b558467f593f7"),
    _model("FSRCNN-small", 4, *_FSRCNN, 11131, "92a9f57c28494813b4dc073b51a300cb909401454d77541bcdc96b4d55901d02"),
    _model("LapSRN", 2, *_LAPSRN, 1356253, "f59c86e6835bbca646dbd81588f07820dfe3bd09e3702976ae2d90b5fc0f0b21"),
    _model("LapSRN", 4, *_LAPSRN, 2712798, "d3e95c93cafae5ce5a8ed57ce9abf07f2de58da8c5d6d656b766774969835ee2"),
    _model("LapSRN", 8, *_LAPSRN, 4069183, "a00211938b2b4c7d23691525a9267d9d0bbb345cdb9f38a7fc917414a5a1884f"),
)


def find_zoo(name: str, scale: int | None = None) -> list[ZooModel]:
    """Look up catalogue entries by family or by file name.

    Args:
        name: Family, case-insensitive ("edsr", "fsrcnn-small", "LapSRN"), or a zoo file name
            ("EDSR_x3.pb"). "fsrcnn" does not include FSRCNN-small: they are different models.
        scale: Keep only this scale; None keeps all.

    Returns:
        Matching entries in ascending scale; empty when nothing matches (the caller words the error, since
        it knows whether the name came from a config file or the command line).
    """
    key = name.strip().lower()
    return [
        model
        for model in ZOO
        if key in (model.name.lower(), model.file.lower()) and (scale is None or model.scale == scale)
    ]


def infer_convention(path: Path) -> tuple[str, int] | None:
    """Infer a zoo model's processing convention and scale from its file name.

    The zoo `.pb` files carry no metadata, and OpenCV's own ``dnn_superres`` also needs the algorithm and
    scale spelled out; the file names are the only consistent source.

    Args:
        path: Path or bare name such as ``FSRCNN-small_x3.pb`` or ``espcn_x2.pb`` (case-insensitive).

    Returns:
        ``(convention, scale)``, e.g. ``("fsrcnn", 3)``; None if the name doesn't follow the zoo pattern or
        the scale is below 2.
    """
    match = _ZOO_FILE_RE.fullmatch(Path(path).name)
    if match is None:
        return None
    family, scale = match.group(1).lower(), int(match.group(2))
    if scale < 2:
        return None
    return ("fsrcnn" if family == "fsrcnn-small" else family), scale
