"""Pictures inlined as data URIs, so the report opens with no other file and no network."""
from __future__ import annotations

import base64
from pathlib import Path

MAX_IMAGE_BYTES = 5_000_000  # a larger picture is left out of the report (named, not inlined)
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def bytes_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri(path: Path) -> str | None:
    """The file as a data URI; None when unreadable, too large or not a picture."""
    mime = MIME.get(path.suffix.lower())
    try:
        if mime is None or path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        return bytes_uri(path.read_bytes(), mime)
    except OSError:
        return None
