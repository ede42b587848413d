"""Clean names for uploaded files: what a browser sends as a file name is untrusted text.

An uploaded file lands in the inbox root under its own base name, so the name must not climb out (``..``,
slashes of either kind), hide itself (a dot-file is never processed, `srd.daemon.scan.DEFAULT_IGNORE`), or be a
name Windows reserves (inboxes are often SMB shares). A name that can't be made clean is refused rather
than guessed at.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from srd.daemon.scan import IgnoreRules
from srd.fs.safefs import fit_name

_WINDOWS_RESERVED = re.compile(r"(?i)^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$")
# Control characters, and the characters Windows (SMB shares) can't hold in a name.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')


class NameRefused(ValueError):
    """An upload's file name can't be used; the message says why (it is shown to the user)."""


def clean_name(raw: str, rules: IgnoreRules) -> str:
    """The name an uploaded file gets in the inbox: its base name, normalised, or `NameRefused`.

    Browsers send only the base name, but old ones (and scripts) send whole paths, with either slash: the
    last component is kept.
    """
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = _UNSAFE.sub("_", name).rstrip(". ")  # Windows drops trailing dots and spaces: a.jpg. is a.jpg
    if name in ("", ".", ".."):
        raise NameRefused(f"no usable file name in {raw!r}")
    if name.startswith("."):
        raise NameRefused(f"{name!r} is a hidden name (the daemon never processes dot-files)")
    if _WINDOWS_RESERVED.match(name):
        raise NameRefused(f"{name!r} is a reserved device name")
    if rules.ignores(PurePosixPath(name)):
        raise NameRefused(f"{name!r} matches the inbox's ignore rules, so it would never be processed")
    path = PurePosixPath(name)
    return fit_name(path.stem, path.suffix)
