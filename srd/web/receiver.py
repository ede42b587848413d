"""Parse a multipart upload as it streams in, writing each file part straight into the inbox.

Nothing is buffered beyond one chunk: a request of any size costs a chunk of memory, and the disk only
what the limits allow (`UploadLimits`, plus the request's own cap checked by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from srd.daemon.scan import IgnoreRules
from srd.web.intake import IncomingFile, Stored, UploadLimits, UploadRefused
from srd.web.names import NameRefused, clean_name

FILE_FIELD = "files"
_MAX_HEADER_BYTES = 8192


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    field_name: bytes = b""
    header_value: bytes = b""


class UploadReceiver:
    """Feed it the body's chunks (`feed`), then `close`; `stored` lists the files now in the inbox.

    A refusal (a name, a size, the bomb guard) raises `UploadRefused` from `feed`; the caller then calls
    `abort`, which removes the file in progress. Files already stored stay: each is complete on its own.
    """

    def __init__(self, boundary: bytes, inbox: Path, rules: IgnoreRules, limits: UploadLimits, max_files: int,
                 on_stored: Callable[[Stored], None]) -> None:
        self._inbox = inbox
        self._rules = rules
        self._limits = limits
        self._max_files = max_files
        self._on_stored = on_stored
        self._part = _Part()
        self._file: IncomingFile | None = None
        self._header_bytes = 0
        self.stored: list[Stored] = []
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin_part,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def close(self) -> None:
        self._parser.finalize()
        if self._file is not None:
            raise UploadRefused("the upload ended in the middle of a file", 400)

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()
            self._file = None

    def _begin_part(self) -> None:
        self._part = _Part()
        self._header_bytes = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._part.field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._part.header_value += data[start:end]

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise UploadRefused("a part's headers are too long", 400)

    def _header_end(self) -> None:
        # Kept as bytes: browsers send the file name as raw UTF-8, and parse_options_header keeps bytes intact
        # (a str would be re-encoded as latin-1 there, which fails or garbles anything beyond ASCII).
        self._part.headers[self._part.field_name.decode("latin-1").lower()] = self._part.header_value
        self._part.field_name = self._part.header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get("content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") != FILE_FIELD or b"filename" not in options:
            return  # other fields carry nothing srd needs; their data is skipped
        if len(self.stored) >= self._max_files:
            raise UploadRefused(f"at most {self._max_files} files per upload", 413)
        raw_name = options[b"filename"].decode("utf-8", "replace")
        try:
            name = clean_name(raw_name, self._rules)
        except NameRefused as exc:
            raise UploadRefused(str(exc)) from exc
        self._file = IncomingFile(self._inbox, name, self._limits)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])

    def _part_end(self) -> None:
        if self._file is None:
            return
        incoming, self._file = self._file, None
        try:
            stored = incoming.finish()
        except BaseException:
            incoming.abort()
            raise
        self.stored.append(stored)
        self._on_stored(stored)
