"""What the device commands read and write: the image inputs they expand, and the guards that keep
an output file (predict --jsonl, build --junit) from landing on an input or on a file edgepipe did
not write, plus the JSON-lines sink predict writes through."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def expand_inputs(inputs: tuple[str, ...]) -> Iterator[Path]:
    """Files as given (a missing one is still yielded: it gets an error line); folders -> their images, sorted.

    A folder named like an image (x.png) was given as a file: it is yielded as it is, and gets an error line."""
    from edgepipe.core.preprocess import IMAGE_SUFFIXES

    for item in map(Path, inputs):
        if item.is_dir() and item.suffix.lower() not in IMAGE_SUFFIXES:
            yield from sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield item


# Leading bytes of the image formats PIL reads here: an existing file that starts with one is an
# image whatever its name, and --jsonl must not overwrite it.
IMAGE_SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"),
                    "TIFF": (b"II*\x00", b"MM\x00*"), "BMP": (b"BM",), "WebP": (b"RIFF",)}


def image_signature(head: bytes) -> str | None:
    """The image format whose signature `head` (a file's first bytes) starts with, else None."""
    for fmt, magics in IMAGE_SIGNATURES.items():
        if head.startswith(magics):
            if fmt == "WebP" and head[8:12] != b"WEBP":  # RIFF also holds WAV, AVI
                continue
            # BMP's "BM" is short: also require a known DIB header size at offset 14
            if fmt == "BMP" and int.from_bytes(head[14:18], "little") not in (12, 40, 52, 56, 64, 108, 124):
                continue
            return fmt
    return None


def refuse_output_over_input(jsonl: Path, given: tuple[str, ...], paths: list[Path]) -> None:
    """EdgepipeError when writing --jsonl (it is truncated) would destroy an input or an image:
    the output is one of the inputs (as given, found in an input folder, or the same file through
    a link), or an existing file with an image suffix or an image signature. Reads at most 32
    bytes of a regular file; never opens anything else (opening a FIFO blocks)."""
    import stat

    from edgepipe.core.errors import EdgepipeError
    from edgepipe.core.preprocess import IMAGE_SUFFIXES

    fix = "give --jsonl a new file name (e.g. predictions.jsonl): that file is overwritten"

    def resolved(p: Path) -> Path:
        try:
            return p.resolve()
        except (OSError, RuntimeError):  # a symlink loop: compare as given
            return p.absolute()

    try:
        st = os.stat(jsonl)
    except OSError:
        st = None
    target = resolved(jsonl)
    for p in [*map(Path, given), *paths]:
        same = resolved(p) == target
        if not same and st is not None:
            try:
                other = os.stat(p)
                same = (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
            except OSError:
                pass
        if same:
            raise EdgepipeError(f"--jsonl {jsonl} is one of the input images ({p}): writing the lines would "
                                "overwrite it", fix)
    if st is None or not stat.S_ISREG(st.st_mode):
        return  # a new file, or a device / FIFO (/dev/null, a pipe): nothing to lose
    suffix = next((s for s in (jsonl.suffix.lower(), target.suffix.lower()) if s in IMAGE_SUFFIXES), None)
    if suffix:
        raise EdgepipeError(f"--jsonl {jsonl} is an existing {suffix} image file: writing the lines would "
                            "overwrite it", fix)
    try:
        with open(jsonl, "rb") as f:
            fmt = image_signature(f.read(32))
    except OSError:
        fmt = None  # unreadable: opening it for writing says why
    if fmt:
        raise EdgepipeError(f"--jsonl {jsonl} is an existing file that holds a {fmt} image: writing the lines "
                            "would overwrite it", fix)
    refuse_foreign_output(jsonl, "--jsonl", "JSON lines", (b"{",), devices_ok=True)


def refuse_foreign_output(path: Path, option: str, what: str, starts: tuple[bytes, ...], devices_ok: bool) -> None:
    """EdgepipeError unless an existing `path` is empty or holds what `option` writes (its first bytes
    start with one of `starts`): an output option must never destroy a config, a key or a model
    that a typo pointed it at. devices_ok: /dev/null or a pipe is a fine target (a stream); else
    refused too, since the file is replaced by rename and the node would be lost."""
    import stat

    from edgepipe.core.errors import EdgepipeError

    try:
        st = os.stat(path)
    except OSError:
        return  # nothing there (or unreachable: writing says why)
    if not stat.S_ISREG(st.st_mode):
        if devices_ok and not stat.S_ISDIR(st.st_mode):
            return
        raise EdgepipeError(f"{option} {path} is not a regular file (a folder, device or pipe): it would be replaced",
                            f"give {option} the path of a file")
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return
    if head and not head.startswith(starts):
        raise EdgepipeError(f"{option} {path} is an existing file that does not hold {what} "
                            f"(it starts with {head[:12]!r}): writing would overwrite it",
                            f"give {option} a new file name, or delete that file first if it is yours to lose")


class LineSink:
    """One JSON object per line. To a file: each line is one write() then fsync, so after a power
    loss or kill the file holds only whole lines; to stdout: flushed per line.

    An output that cannot be opened or written (missing folder, a path under a file, read-only,
    disk full) is an EdgepipeError naming the path and the cause, not a traceback."""

    def __init__(self, path: Path | None):
        import stat

        from edgepipe.core.errors import EdgepipeError

        self.path, self.lines, self.fd = path, 0, None
        if path is None:
            return
        try:
            # not truncated yet: a bundle refused after this must not cost the previous lines (begin())
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            if isinstance(e, FileNotFoundError):
                fix = f"create the folder first (mkdir -p {path.parent}) or choose another --jsonl path"
            elif isinstance(e, NotADirectoryError):
                fix = f"a part of {path.parent} is a file, not a folder: choose another --jsonl path"
            else:
                fix = "choose a --jsonl path this user can write"
            raise EdgepipeError(f"cannot write --jsonl {path}: {why}", fix) from None
        self.sync = stat.S_ISREG(os.fstat(self.fd).st_mode)  # fsync fails (EINVAL) on /dev/null, pipes

    def begin(self) -> None:
        """Empty the file: called once the model is loaded and lines are about to come."""
        if self.fd is not None and self.sync:  # a regular file (devices and pipes cannot be truncated)
            os.ftruncate(self.fd, 0)

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            if self.fd is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                data = line.encode()
                while data:  # os.write may write less than asked (rare for regular files, but allowed)
                    data = data[os.write(self.fd, data):]
                if self.sync:
                    os.fsync(self.fd)
        except OSError as e:
            from edgepipe.core.errors import EdgepipeError

            where = f"--jsonl {self.path}" if self.fd is not None else "standard output"
            raise EdgepipeError(f"writing {where} failed: {(e.strerror or str(e)).lower()}, after {self.lines} "
                                "line(s)", "free space or choose another output; the lines written so far are "
                                "complete") from None
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
