"""Atomic file writes and content hashes for everything the data layer puts on disk.

A reader must never see a half-written panel, card or download: every file is written to a
temporary file in the destination's directory (same filesystem, so the rename is atomic) and
renamed over the destination only once it is complete. If anything fails, the temporary file is
removed and the destination is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `destination`, on error it is removed."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates the file private (0600); data files are meant to be read by others (e.g. a container).
    temporary.chmod(0o644)
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(destination: Path, content: bytes) -> None:
    """Write `content` to `destination` atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_bytes(content)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks (archives can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
