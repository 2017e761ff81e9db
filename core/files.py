"""Files edgepipe writes and reads back: sha256 hashing and atomic writes. stdlib only.

Every file goes through `atomic_output` (temp path + rename), so a killed process never leaves a
partial file under its final name; the temp name carries the pid, so a later build can tell a dead
writer's leftovers from a live one's (edgepipe.pipeline.manifest.sweep_stale_temps).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from edgepipe.core.errors import MissingArtifactError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TMP_MARK = ".tmp-"  # temp names: .<name>.tmp-<pid>


def _fsync(path: Path) -> None:
    """Flush a finished temp file (or folder) to disk before it is renamed into place."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    The temp name carries the pid, so `sweep_stale_temps` can tell a dead build's leftovers
    from a live one's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: Path, data) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: Path, what: str, fix: str = "rerun the stage that wrote it (`edgepipe build --force STAGE`)"):
    """Parse a JSON file edgepipe wrote; a damaged one is a one-line error with the fix."""
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit int, [[[[...
        why = str(e).splitlines()[0][:120] if isinstance(e, ValueError) else "nested too deeply"
        raise MissingArtifactError(f"{path} ({what}) is damaged: not valid JSON ({why})", fix) from None
