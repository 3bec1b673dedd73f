"""Small file helpers: outputs appear whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smiling_pipeline.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: temp files get the permissions a plain open() would give


def _writable_parent(path: Path) -> Path:
    """Create ``path``'s parent, turning permission problems into a user error."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {parent}: {e.strerror}") from e
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable")
    return parent


def check_writable(folder: Path) -> None:
    """Fail before any work when ``folder`` could not be created or written; creates nothing."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {folder} is not writable ({existing} is read-only)")


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target``, on error it is removed."""
    parent = _writable_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``target`` in one rename."""
    parent = _writable_parent(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
