"""Find models by name and scale, or by file path, and describe them as `ModelSpec`s.

Search order for a name: the bundled `models/` folder (its `manifest.json`), then each extra
model folder (a `manifest.json` there, or OpenCV-zoo files such as `FSRCNN_x3.pb` fetched into it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from srd.engine.conventions import CONVENTIONS
from srd.engine.zoo import ZOO, find_zoo, infer_convention
from srd.errors import ModelChoiceError, ModelError

MANIFEST_NAME = "manifest.json"
_FORMAT_BY_SUFFIX = {".onnx": "onnx", ".pb": "tensorflow"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load and run one model, and to fingerprint a pipeline that uses it."""

    name: str
    scale: int
    path: Path
    format: str
    convention: str
    expected_sha256: str | None = None
    origin: str = "file"
    info: dict = field(default_factory=dict, compare=False, hash=False)


def bundled_models_dir() -> Path:
    """The folder of models shipped with srd.

    `SRD_MODELS_DIR` wins; then the source checkout's `models/` (editable installs); then the
    copy a wheel installs under `<prefix>/share/srd/models`.
    """
    override = os.environ.get("SRD_MODELS_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[2] / "models"
    if (checkout / MANIFEST_NAME).is_file():
        return checkout
    return Path(sys.prefix) / "share" / "srd" / "models"


def user_models_dir() -> Path:
    """Where `srd models fetch` puts downloads when no model folder is configured."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "srd" / "models"


def search_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    """Model folders in search order: bundled, configured extras, then the user folder."""
    dirs = [bundled_models_dir(), *extra, user_models_dir()]
    unique: list[Path] = []
    for folder in dirs:
        if folder not in unique:
            unique.append(folder)
    return unique


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> list[ModelSpec]:
    """Models described by `folder/manifest.json` (an empty list if there is none)."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return []
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["models"]
        return [
            ModelSpec(
                name=entry["name"],
                scale=int(entry["scale"]),
                path=folder / entry["file"],
                format=entry.get("format", "onnx"),
                convention=entry.get("convention", "edsr"),
                expected_sha256=entry.get("sha256"),
                origin="bundled" if folder == bundled_models_dir() else "manifest",
                info=entry,
            )
            for entry in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{manifest}: unreadable model manifest ({exc})") from exc


def zoo_files(folder: Path) -> list[ModelSpec]:
    """OpenCV-zoo models present in `folder` under their canonical file names."""
    found = []
    for model in ZOO:
        path = folder / model.file
        if path.is_file():
            found.append(
                ModelSpec(
                    name=model.name,
                    scale=model.scale,
                    path=path,
                    format="tensorflow",
                    convention=model.convention,
                    expected_sha256=model.sha256,
                    origin="zoo",
                )
            )
    return found


def available_models(extra_dirs: Iterable[Path] = ()) -> Iterator[ModelSpec]:
    """Every model srd can find, in search order (earlier folders shadow later ones)."""
    for folder in search_dirs(extra_dirs):
        yield from read_manifest(folder)
        yield from zoo_files(folder)


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or Path(ref).suffix.lower() in _FORMAT_BY_SUFFIX


def resolve_model(
    ref: str,
    scale: int | None,
    *,
    extra_dirs: Iterable[Path] = (),
    convention: str | None = None,
) -> ModelSpec:
    """The model that `ref` (a name like `edsr-lite` or a file path) and `scale` designate.

    Without a scale, a zoo file's name gives it (``FSRCNN_x3.pb``), and a name that comes in one scale only
    has that one.

    Raises:
        ModelError: no such model or scale. ModelChoiceError (the request's fault): no scale for a name that
            has several or a file whose name doesn't tell it, another scale than the file's, an unknown convention.
    """
    if convention is not None and convention not in CONVENTIONS:
        raise ModelChoiceError(f"unknown model convention {convention!r} (choose from {', '.join(CONVENTIONS)})")
    if looks_like_path(ref):
        return _spec_from_path(Path(ref).expanduser(), scale, convention)
    name = ref.lower()
    named = [spec for spec in available_models(extra_dirs) if spec.name.lower() == name]
    if not named:
        raise ModelError(_not_found_message(name, scale, extra_dirs))
    scales = sorted({spec.scale for spec in named})
    if scale is None:
        if len(scales) > 1:
            raise ModelChoiceError(f"model {ref!r} comes in scales {', '.join(map(str, scales))}: pass one "
                                   f"(e.g. --scale {scales[0]})")
        scale = scales[0]
    for spec in named:
        if spec.scale == scale:
            return spec if convention is None else _with_convention(spec, convention)
    raise ModelError(_not_found_message(name, scale, extra_dirs))


def require_model_file(path: Path) -> None:
    """Raise ModelError unless `path` is a regular file (symlinks followed), saying which it is not."""
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file" if path.exists() else f"model file not found: {path}")


def _spec_from_path(path: Path, scale: int | None, convention: str | None) -> ModelSpec:
    require_model_file(path)
    fmt = _FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ModelError(f"{path}: unsupported model format (use a TensorFlow .pb or an ONNX .onnx file)")
    # A file `srd train export` wrote is described by the manifest beside it, whatever its name.
    described = next((spec for spec in read_manifest(path.parent) if spec.path == path), None)
    if described is not None:
        if scale is not None and scale != described.scale:
            raise ModelChoiceError(f"{path.name} is a x{described.scale} model, but scale {scale} was asked for")
        return described if convention is None else _with_convention(described, convention)
    inferred = infer_convention(path)
    if inferred is not None:
        inferred_convention, inferred_scale = inferred
        if scale is not None and scale != inferred_scale:
            raise ModelChoiceError(f"{path.name} is a x{inferred_scale} model, but scale {scale} was asked for")
        scale = inferred_scale
        convention = convention or inferred_convention
    if scale is None:
        raise ModelChoiceError(f"{path.name}: cannot infer the scale from the file name; pass it (e.g. --scale 2)")
    if convention is None:
        raise ModelChoiceError(
            f"{path.name}: cannot infer the model convention from the file name; pass it "
            f"(one of {', '.join(CONVENTIONS)})"
        )
    zoo = [model for model in ZOO if model.file.lower() == path.name.lower()]
    return ModelSpec(
        name=path.stem,
        scale=scale,
        path=path,
        format=fmt,
        convention=convention,
        expected_sha256=zoo[0].sha256 if zoo else None,
        origin="file",
    )


def _with_convention(spec: ModelSpec, convention: str) -> ModelSpec:
    return ModelSpec(
        spec.name, spec.scale, spec.path, spec.format, convention, spec.expected_sha256, spec.origin, spec.info
    )


def _not_found_message(name: str, scale: int | None, extra_dirs: Iterable[Path]) -> str:
    have = sorted({f"{spec.name} x{spec.scale}" for spec in available_models(extra_dirs)})
    if any(spec.name.lower() == name for spec in available_models(extra_dirs)):
        message = f"no model {name!r} at scale {scale}"
    else:
        folders = ", ".join(str(folder) for folder in search_dirs(extra_dirs))
        message = f"model not found: {name} (looked in {folders})"
    if find_zoo(name, scale):
        fetch = f"srd models fetch {name}" + (f" --scale {scale}" if scale else "")
        message += f"; it is an OpenCV-zoo model: download it with '{fetch}'"
    if have:
        message += f"; available: {', '.join(have)}"
    return message
