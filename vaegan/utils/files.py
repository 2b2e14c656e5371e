"""Writing files so that readers never see half of one: a temporary file beside it, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def nearest_existing(path: Path) -> Path:
    """``path``, or the closest of its ancestors that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (made when missing), or None when they can."""
    existing = nearest_existing(Path(folder))
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=".vaegan-probe-").close()
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    return None


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp_path)`` on a temporary file next to ``path``, then renames it into place;
    on any error the temporary file is removed and an existing ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_npz(path: Path, arrays: dict) -> Path:
    """``np.savez`` of ``arrays`` to ``path`` through ``write_atomic``."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, **arrays)

    return write_atomic(path, save)
