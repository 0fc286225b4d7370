"""Files written safely: whole, with their mode from the start, never through a planted link."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str | bytes, owner: tuple[int, int] | None = None,
                  mode: int = 0o600) -> None:
    """Write a file only its owner can read: secrets go in files like this, never on a command line.

    Written whole to a new file beside it, then renamed into place: nothing at `path` is ever opened,
    so a link a store's account planted in its own folder (pgdata) cannot send a root worker's write
    elsewhere, an older file's looser mode never carries over, and a crash never leaves half a file.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as file:
            if owner is not None:
                os.fchown(fd, *owner)
            if mode != 0o600:
                os.fchmod(fd, mode)  # a public file (a certificate) written the same safe way
            file.write(text.encode() if isinstance(text, str) else text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
