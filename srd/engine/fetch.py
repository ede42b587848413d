"""Download and verify OpenCV-zoo models.

A model file is the one input srd trusts blindly once loaded, so a download only counts once it has the
catalogue's exact size and sha256. The bytes stream into `srd.fs.atomic.open_atomic`, so a truncated or wrong
file never appears under the model's name, not even briefly, and nothing is left behind on failure.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import structlog

from srd import __version__
from srd.engine.zoo import ZooModel
from srd.errors import ModelError, OutputError
from srd.fs.atomic import AtomicFile, open_atomic

log = structlog.get_logger(__name__)

BASE_URL_ENV = "SRD_ZOO_BASE_URL"
_CHUNK = 64 * 1024


def fetch_model(
    model: ZooModel,
    dest_dir: Path,
    *,
    url: str | None = None,
    base_url: str | None = None,
    timeout_s: float = 60,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Make a verified copy of `model` available in `dest_dir`, downloading it only if needed.

    Args:
        model: Catalogue entry; its size and sha256 decide whether a file is accepted.
        dest_dir: Folder to save into (created if missing); the file keeps the zoo's name.
        url: Exact URL to download from instead of the catalogue's.
        base_url: A mirror holding the zoo files side by side (``<base_url>/<file>``); defaults to the
            ``SRD_ZOO_BASE_URL`` environment variable. Ignored when `url` is given.
        timeout_s: Limit for connecting and for each read; a stalled server fails instead of hanging.
        progress: Called as ``progress(bytes_so_far, total_bytes)`` after each chunk.

    Returns:
        Path of the verified file. An existing file with the right sha256 is returned without downloading.

    Raises:
        ModelError: The server fails, the connection is cut or times out, or the bytes have the wrong size or
            sha256. No file is left behind, and an existing file of the same name is untouched.
        OutputError: The file can't be written (folder not creatable, disk full, ...).
    """
    dest = Path(dest_dir) / model.file
    if _is_verified(dest, model):
        log.info("model_present", file=model.file, path=str(dest))
        return dest
    source = url or _mirror_url(model, base_url) or model.url
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create model folder {dest.parent}: {exc.strerror or exc}") from exc
    log.info("model_download_start", file=model.file, url=source, bytes=model.size_bytes)
    started = time.monotonic()
    with open_atomic(dest) as out:
        _download(model, source, out, timeout_s, progress)
    log.info("model_downloaded", file=model.file, path=str(dest), ms=round((time.monotonic() - started) * 1000))
    return dest


def _mirror_url(model: ZooModel, base_url: str | None) -> str | None:
    base = base_url or os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{model.file}" if base else None


def _is_verified(path: Path, model: ZooModel) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != model.size_bytes:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise OutputError(f"cannot read existing model {path}: {exc.strerror or exc}") from exc
    if digest.hexdigest() == model.sha256:
        return True
    log.warning("model_checksum_mismatch", path=str(path), expected=model.sha256, got=digest.hexdigest())
    return False


def _download(
    model: ZooModel,
    source: str,
    out: AtomicFile,
    timeout_s: float,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Stream `source` into `out`, raising ModelError unless the bytes are exactly the catalogue's file."""
    what = f"download of {model.file} from {source}"
    try:
        request = urllib.request.Request(source, headers={"User-Agent": f"srd/{__version__}"})
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        raise ModelError(f"{what} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ModelError(f"{what} failed: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ModelError(f"{what} failed: {_reason(exc)}") from exc

    expected = model.size_bytes
    digest = hashlib.sha256()
    received = 0
    with response:
        declared = _content_length(response.headers)
        if declared is not None and declared != expected:
            raise ModelError(f"{what} failed: server sends {declared} bytes, expected {expected}")
        while True:
            try:
                # read1 returns what has arrived instead of waiting for a full chunk, so progress and the
                # byte count in a timeout message are accurate.
                chunk = response.read1(min(_CHUNK, expected + 1 - received))
            except (OSError, http.client.HTTPException) as exc:
                raise ModelError(f"{what} was cut off after {received} of {expected} bytes: {_reason(exc)}") from exc
            if not chunk:
                break
            received += len(chunk)
            if received > expected:
                raise ModelError(f"{what} failed: more than the expected {expected} bytes")
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress(received, expected)
    if received != expected:
        raise ModelError(f"{what} was cut off after {received} of {expected} bytes")
    got = digest.hexdigest()
    if got != model.sha256:
        raise ModelError(f"{what} is corrupt: sha256 {got}, expected {model.sha256}")


def _content_length(headers: Message) -> int | None:
    value = headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
