"""Who may write where: one build at a time per output dir, one output dir per bundle folder.

Two builds of one output dir would overwrite each other's files for minutes and then fail on a
hash they did not write; two configs with the same `name` and `dist_dir` would delete each
other's bundles as stale. Both are refused up front, with the other build named.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from edgepipe.core.errors import ConfigError, EdgepipeError

LOCK_NAME = ".edgepipe.lock"
OWNER_NAME = ".edgepipe-owner.json"


class BuildLocked(EdgepipeError):
    """Another edgepipe process is building into the same output dir."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def build_lock(output_dir: Path):
    """Hold an exclusive flock on <output_dir>/.edgepipe.lock while the block runs.

    The kernel drops a flock when its process dies, so the lock of a killed build is never
    stale: the next build takes it at once (and resumes the interrupted stage). The file's
    pid / host / start time only serve the message another build prints."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} exists and is not a folder",
                          "point output_dir at a folder (or a path that does not exist yet)")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise BuildLocked(f"output dir {output_dir} is in use by another edgepipe build ({_holder(path)})",
                              "wait for that build to finish, or give this config another output_dir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv[:3])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays, so a waiting build never races its removal


def claim_dist(dist: Path, output_dir: Path, name: str) -> None:
    """Refuse to bundle into <dist_dir>/<name> when another output dir's build owns it, or when it
    holds anything edgepipe did not write there; else own it.

    The owner is stored relative to the folder, so a project moved as a whole keeps its claim."""
    if dist.exists() and not dist.is_dir():
        raise ConfigError(f"bundle folder {dist} (bundle.dist_dir / name) is a file", "choose another bundle.dist_dir")
    marker = dist / OWNER_NAME
    try:
        owner = (dist / json.loads(marker.read_text())["output_dir"]).resolve()
    except (FileNotFoundError, NotADirectoryError):
        owner = None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{marker} is damaged", f"delete it if {dist} holds only this build's bundles") from None
    if owner is not None and owner != output_dir.resolve():
        raise ConfigError(f"bundle folder {dist} belongs to the build in {owner}: this build (output_dir "
                          f"{output_dir}) would delete its bundles as stale",
                          "give this config another `name` or bundle.dist_dir (or delete that folder if the "
                          "other build is gone)")
    if owner is None:
        foreign = sorted(p.name for p in dist.iterdir() if not written_by_edgepipe(p, name)) if dist.is_dir() else []
        if foreign:
            raise ConfigError(f"bundle folder {dist} (bundle.dist_dir / name) holds {', '.join(foreign[:3])}"
                              f"{' ...' if len(foreign) > 3 else ''}, which edgepipe did not write: bundling would "
                              "replace or delete it", "choose another bundle.dist_dir or name, or empty that folder")
        from edgepipe.core.files import write_json

        write_json(marker, {"output_dir": os.path.relpath(output_dir.resolve(), dist.resolve())})


def written_by_edgepipe(p: Path, name: str) -> bool:
    """In <dist_dir>/<name>: a bundle folder, a release archive of this build name, or a temp file
    of either (the bundle stage may replace or delete these, and nothing else)."""
    from edgepipe.core.files import TMP_MARK
    from edgepipe.runtime.bundle import MANIFEST

    if TMP_MARK in p.name:
        return True
    if p.is_dir() and not p.is_symlink():
        return (p / MANIFEST).is_file()
    return p.name.startswith(f"{name}-") and p.name.endswith((".tar.gz", ".tar.gz.sha256"))
