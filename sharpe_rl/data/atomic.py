"""Atomic file writes and content hashes for everything sharpe-rl puts on disk.

A reader must never see a half-written panel, card, download, buffer file or report: every file
(or directory) is written to a temporary one beside the destination (same filesystem, so the
rename is atomic) and renamed over the destination only once it is complete. If anything fails,
the temporary one is removed and the destination is left as it was. A full disk is a `DiskFull`
error that names the destination, not a bare "[Errno 28]".
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DiskFull(OSError):
    """No space left on the disk that holds a path sharpe-rl writes; the message names it."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no space left on the disk holding {path}: free some space there (or move the runs directory), "
            "then run the same command again: a run resumes where it stopped"
        )
        self.errno = errno.ENOSPC
        self.filename = str(path)

    def __str__(self) -> str:  # the message, not OSError's "[Errno 28] None: path"
        return str(self.args[0])


#: Less free space than this where a write just failed means the disk is why.
_NEARLY_FULL_BYTES = 1 << 20


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether `exc`, raised while writing `path`, comes from a full disk.

    Libraries report it differently: OSError ENOSPC, polars and safetensors "No space left on
    device" in their message, torch only "file write failed" (then the disk's free space tells).
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "StorageFull" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < _NEARLY_FULL_BYTES


@contextmanager
def disk_full_names(path: Path) -> Iterator[None]:
    """Turn an error inside the block that comes from a full disk into `DiskFull(path)`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc, path):
            raise DiskFull(path) from exc
        raise


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `destination`, on error it is removed."""
    with disk_full_names(destination):
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


@contextmanager
def staged_files(destination: Path) -> Iterator[Path]:
    """Yield an empty directory beside `destination` to write files into; on success each is renamed into place.

    Every file lands whole (a rename), and none lands if writing any of them failed (a full disk
    leaves the previous files as they were). Other files in `destination` are left alone.
    """
    staging = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
    with disk_full_names(destination):
        try:
            staging.mkdir(parents=True)
            yield staging
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = destination / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


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
