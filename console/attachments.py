"""``Content-Disposition`` for the console's downloads, whatever the app id in the file's name.

App ids are free-form (1-128 code points): a name built from one may hold quotes, semicolons,
slashes or any script. Headers are Latin-1 on the wire, and a quote inside ``filename="..."``
would end it early, so the header carries two names (RFC 6266): ``filename=`` in plain ASCII
(accents dropped, anything else becomes ``_``) for old clients, and ``filename*=UTF-8''...`` (RFC 5987,
percent-encoded) with the real name, which browsers prefer.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final
from urllib.parse import quote

__all__ = ["attachment"]

_UNSAFE_ASCII: Final = re.compile(r"[^A-Za-z0-9._-]+")
#: Never part of a saved name: path separators, controls.
_UNSAFE_ANY: Final = re.compile(r"[/\\\x00-\x1f\x7f]+")


def attachment(filename: str) -> str:
    """The header's value: ``attachment; filename="<ascii>"; filename*=UTF-8''<percent-encoded>``."""
    name = _UNSAFE_ANY.sub("_", filename) or "download"
    folded = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))  # é -> e
    fallback = _UNSAFE_ASCII.sub("_", folded).strip("._") or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
