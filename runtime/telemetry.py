"""Telemetry on the device: one JSON line per prediction, what a drift monitor needs and nothing that
identifies the image. Written by `Predictor(..., telemetry=PATH)` and `edgepipe predict --telemetry
FILE`; read by `read_telemetry` (and so by `edgepipe monitor`).

The record, version 1 (the contract with the monitor; TelemetryRecord below is its model):

    {"v": 1, "t": 1764590000.123, "bundle": "elpv-lite0", "target": "openvino", "precision": "int8",
     "label": "defective", "index": 1, "confidence": 0.973112, "margin": 0.946224,
     "stats": {"mean": 112.41, "std": 31.2, "p05": 70.1, "p50": 110.92, "p95": 160.3, "sharpness": 85.2}}

- v: the record version, always the first key (a telemetry file starts with `{"v": 1`).
- t: when the prediction was made, unix time in seconds (float, rounded to 1 ms).
- bundle, target, precision: the bundle's build name, backend and precision (bundle.json).
- label, index: the predicted class and its index in the bundle's labels.
- confidence, margin: the top-1 probability and its lead over the runner-up (6 decimals).
- stats: edgepipe.core.image_stats of the image as the model saw it (after the bundle's resize):
  luminance mean, standard deviation, 5th / 50th / 95th percentiles (0-255, 2 decimals) and
  sharpness (1 decimal). The build computes the same statistics for the bundle's drift reference.
No path, file name, pixels or probability vector: a record cannot be traced back to an image.

Crash safety: the file is opened O_APPEND and each record goes out in one os.write of the complete
line, newline included. SIGKILL cannot stop a write() to a regular file halfway, so a killed process
leaves whole lines only, and a torn line (a power cut, a full disk) can only be the last one:
`read_telemetry` skips it and counts it, and the next TelemetryLog to open the file ends it with a
newline first, so it never glues onto a new record.

Rotation: when a record would take the file past max_bytes, path is renamed to path.1 (path.1 to
path.2, ..., the oldest beyond `keep` dropped) and a new path is started: at most about
(keep + 1) * max_bytes on disk. read_telemetry reads path.N ... path.1, path: oldest first.

Several processes may append to one file: with O_APPEND the move to the end and the write are one
step, and on a local filesystem (ext4, f2fs, xfs) one write() is not interleaved with another's; a
record is ~300 bytes, below PIPE_BUF (4096), the size up to which even a pipe guarantees that. Not
on NFS. Rotation takes an flock on the file being rotated and rechecks, so two writers never rotate
twice; a writer whose file was rotated away (by another process, by logrotate, or deleted) notices
within a second (it stats the path once a second, not per record) and reopens path.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgepipe.core.image_stats import DECIMALS, STATS, confidence_and_margin, image_stats

VERSION = 1
FIELDS = ("v", "t", "bundle", "target", "precision", "label", "index", "confidence", "margin", "stats")
MAX_BYTES = 16 * 2**20
KEEP = 3
HEAD = b'{"v": 1'  # how every version-1 line starts: the guard's proof that a file is a telemetry log
# decimals a record keeps (core/image_stats.py DECIMALS, which the drift reference rounds to as well):
# probabilities to 1e-6, intensities (0-255) to 0.01, sharpness to 0.1
_SCALE = 10.0 ** np.array([DECIMALS[s] for s in ("confidence", "margin", *STATS)])


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One prediction's record (version 1). to_json() writes it; from_dict() refuses anything else."""

    t: float
    bundle: str
    target: str
    precision: str
    label: str
    index: int
    confidence: float
    margin: float
    stats: dict[str, float]  # exactly STATS, in that order
    v: int = VERSION

    def to_dict(self) -> dict:
        return {"v": self.v, "t": self.t, "bundle": self.bundle, "target": self.target, "precision": self.precision,
                "label": self.label, "index": self.index, "confidence": self.confidence, "margin": self.margin,
                "stats": self.stats}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: object) -> TelemetryRecord:
        """The record in d; ValueError naming the first thing that is not version 1 of the contract."""
        if not isinstance(d, dict):
            raise ValueError(f"a record is a JSON object, not {type(d).__name__}")
        if d.get("v") != VERSION:
            raise ValueError(f"record version {d.get('v')!r}, this reader knows {VERSION}")
        if set(d) != set(FIELDS):
            raise ValueError(f"fields {sorted(set(d) ^ set(FIELDS))} differ from the contract's")
        for k in ("bundle", "target", "precision", "label"):
            if not isinstance(d[k], str):
                raise ValueError(f"{k} is not a string")
        if not isinstance(d["index"], int) or isinstance(d["index"], bool) or d["index"] < 0:
            raise ValueError("index is not a class index")
        for k in ("t", "confidence", "margin"):
            if not _number(d[k]):
                raise ValueError(f"{k} is not a finite number")
        stats = d["stats"]
        if not isinstance(stats, dict) or list(stats) != list(STATS) or not all(map(_number, stats.values())):
            raise ValueError(f"stats is not {{{', '.join(STATS)}}} of finite numbers")
        return cls(**d)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _batch(probabilities: np.ndarray, rgb8: np.ndarray) -> list[tuple[int, float, float, list[float]]]:
    """(index, confidence, margin, stats) per image of a batch, rounded to DECIMALS (np.round's
    grid, as the drift reference), as Python numbers."""
    values = np.empty((len(rgb8), 2 + len(STATS)))
    values[:, 0], values[:, 1] = confidence_and_margin(probabilities)
    values[:, 2:] = image_stats(rgb8)
    values = (np.round(values * _SCALE) / _SCALE).tolist()  # = np.round(column, decimals), all in one
    return [(k, v[0], v[1], v[2:]) for k, v in zip(probabilities.argmax(axis=1).tolist(), values)]


def records_for(bundle_meta: dict, labels: list[str], probabilities: np.ndarray, rgb8: np.ndarray,
                t: float | None = None) -> list[TelemetryRecord]:
    """The records of one batch: N x C probabilities and the N x H x W x 3 uint8 images the model saw."""
    t = round(time.time() if t is None else t, 3)
    name, target, precision = bundle_meta["name"], bundle_meta["target"], bundle_meta["precision"]
    return [TelemetryRecord(t, name, target, precision, labels[k], k, c, m, dict(zip(STATS, s)))
            for k, c, m, s in _batch(probabilities, rgb8)]


class LineEncoder:
    """The JSON lines of records_for, written straight from the numbers: the bundle's part and every
    label are encoded once, each float by repr (what json.dumps writes). A batch-1 prediction pays
    a fifth of what building the TelemetryRecord and json.dumps cost; the result is the same bytes
    as TelemetryRecord.to_json() (tests/runtime/test_telemetry.py holds it to that)."""

    def __init__(self, bundle_meta: dict, labels: list[str]):
        enc = partial(json.dumps, ensure_ascii=False)
        self.key = (bundle_meta["name"], bundle_meta["target"], bundle_meta["precision"], tuple(labels))
        self._fixed = (f'"bundle": {enc(bundle_meta["name"])}, "target": {enc(bundle_meta["target"])}, '
                       f'"precision": {enc(bundle_meta["precision"])}')
        self._labels = [enc(label) for label in labels]

    def lines(self, probabilities: np.ndarray, rgb8: np.ndarray, t: float | None = None) -> list[bytes]:
        """One line (bytes, newline included) per image; ValueError for a non-finite probability."""
        t = round(time.time() if t is None else t, 3)
        out = []
        for k, c, m, s in _batch(probabilities, rgb8):
            if not (math.isfinite(c) and math.isfinite(m)):
                raise ValueError("a probability is not finite: no record")
            out.append(f'{{"v": {VERSION}, "t": {t!r}, {self._fixed}, "label": {self._labels[k]}, "index": {k}, '
                       f'"confidence": {c!r}, "margin": {m!r}, "stats": {{"mean": {s[0]!r}, "std": {s[1]!r}, '
                       f'"p05": {s[2]!r}, "p50": {s[3]!r}, "p95": {s[4]!r}, "sharpness": {s[5]!r}}}}}\n'.encode())
        return out


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def refuse_foreign_telemetry(path: Path, keep: int = KEEP, option: str = "telemetry") -> None:
    """EdgepipeError unless path and the files rotation would move (path.1 ... path.keep) are absent,
    empty or telemetry logs: a typo must not append to a config or rotate a key away."""
    from edgepipe.runtime.cli_io import refuse_foreign_output

    for p in (path, *(rotated(path, n) for n in range(1, keep + 1))):
        if _damaged_log(p):
            continue  # a power cut's leftovers: the writer ends the bad line and carries on
        refuse_foreign_output(p, option, "edgepipe telemetry (JSON lines starting {\"v\": 1)", (HEAD,),
                              devices_ok=False)  # rotation renames the file: a device or FIFO would be lost


def _damaged_log(p: Path) -> bool:
    """A telemetry log as a power cut can leave it: zero bytes where the last blocks were (ext4 and
    f2fs may), or a first line torn inside its opening. Refusing it would stop a unit's predictions."""
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return bool(head) and (not head.strip(b"\0") or (len(head) < len(HEAD) and HEAD.startswith(head)))


class TelemetryLog:
    """Appends TelemetryRecords to `path` as JSON lines (see the module docstring): crash-safe, rotated
    past max_bytes keeping `keep` old files, safe to share between processes.

    fsync: False by default. SIGKILL of the process loses nothing either way (a finished write() is
    in the OS's page cache, which the kernel writes out); only a power cut or a kernel crash can lose
    the last seconds of records, and then at most a torn last line, which the reader skips. An fsync
    per record costs milliseconds on an SD card, as much as the inference; pass fsync=True where the
    last records before a power cut matter more than that.

    A write that fails (a full disk) does not stop predictions: the record is dropped, counted in
    `dropped`, and the first failure is warned about (RuntimeWarning) and kept in `error`.
    Opening the file fails at once (EdgepipeError) on a missing folder, a foreign file or no permission.
    """

    def __init__(self, path: str | Path, max_bytes: int = MAX_BYTES, keep: int = KEEP, fsync: bool = False):
        if max_bytes < 1024 or keep < 0:
            raise ValueError("max_bytes must be at least 1024 and keep at least 0")
        self.path, self.max_bytes, self.keep, self.fsync = Path(path), max_bytes, keep, fsync
        self.written = self.dropped = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._encoder: LineEncoder | None = None
        self._size, self._next_check, self._closed = 0, 0.0, False
        self._fragment = False  # a failed write may have left part of a line
        refuse_foreign_telemetry(self.path, keep)
        self._open()

    # -- writing ----------------------------------------------------------------------------------
    def append(self, records: TelemetryRecord | list[TelemetryRecord]) -> None:
        """Append records (one line each)."""
        records = [records] if isinstance(records, TelemetryRecord) else records
        self._write([(r.to_json() + "\n").encode() for r in records])

    def log(self, bundle_meta: dict, labels: list[str], probabilities: np.ndarray, rgb8: np.ndarray) -> None:
        """Append the records of one batch (what records_for gives, through LineEncoder)."""
        enc = self._encoder  # a local: another thread may swap the encoder for its own bundle meanwhile
        if enc is None or enc.key != (bundle_meta["name"], bundle_meta["target"], bundle_meta["precision"],
                                      tuple(labels)):
            enc = self._encoder = LineEncoder(bundle_meta, labels)
        try:
            lines = enc.lines(probabilities, rgb8)
        except ValueError as e:  # NaN probabilities: nothing a monitor could read
            with self._lock:
                self._dropped(str(e), len(rgb8))
            return
        self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        with self._lock:
            if self._closed:
                raise ValueError(f"telemetry {self.path} is closed")
            for i, line in enumerate(lines):
                try:
                    self._append_line(line)
                except OSError as e:
                    # part of the line may be on disk: the next record starts on a new line, so the
                    # fragment stays one skipped line instead of spoiling the record after it
                    self._fragment = True
                    self._dropped(f"writing telemetry {self.path} failed: {(e.strerror or str(e)).lower()}",
                                  len(lines) - i)
                    return
                self._fragment = False
                self.written += 1

    def _append_line(self, line: bytes) -> None:
        now = time.monotonic()
        if self._fd is None or now >= self._next_check:  # once a second, not per record (a stat costs)
            if self._fd is None or self._moved():
                self._reopen()
            self._size = os.fstat(self._fd).st_size  # other writers' records count too
            self._next_check = now + 1.0
        if self._size + len(line) > self.max_bytes:
            self._size = os.fstat(self._fd).st_size
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
        if self._fragment:
            line = b"\n" + line
        n = os.write(self._fd, line)  # the whole line in one write (see the module docstring)
        while n < len(line):  # only a nearly full disk writes short: finish the line, or it glues onto the next
            line = line[n:]
            n = os.write(self._fd, line)
        self._size += n
        if self.fsync:
            os.fsync(self._fd)

    def _dropped(self, why: str, n: int) -> None:
        self.dropped += n
        if self.error is None:
            self.error = why
            warnings.warn(f"{why}; predictions go on, their telemetry records are dropped", RuntimeWarning,
                          stacklevel=4)

    # -- the file ---------------------------------------------------------------------------------
    def _open(self) -> None:
        from edgepipe.core.errors import EdgepipeError

        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            fix = (f"create the folder first (mkdir -p {self.path.parent})" if isinstance(e, FileNotFoundError)
                   else "choose a telemetry path this user can write")
            raise EdgepipeError(f"cannot write telemetry {self.path}: {why}", fix) from None
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn last line (power cut): end it, so it stays one skipped line
                    os.write(self._fd, b"\n")

    def _moved(self) -> bool:
        """True when path is no longer the file this log writes (rotated by another writer, deleted)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(self._fd)
        return (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev)

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _rotate(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: a single writer is assumed
            fcntl = None
        fd = self._fd
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another writer rotating this same file waits here
        try:
            if self._moved():
                pass  # another writer rotated it while we waited: write to the new file
            elif self.keep == 0:
                os.ftruncate(fd, 0)  # nothing kept: start the file over
            else:
                for n in range(self.keep - 1, 0, -1):  # oldest first; path.keep is replaced (dropped)
                    try:
                        os.replace(rotated(self.path, n), rotated(self.path, n + 1))
                    except FileNotFoundError:
                        pass
                os.replace(self.path, rotated(self.path, 1))
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        self._reopen()
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> TelemetryLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Records(list):
    """read_telemetry's answer: the records (dicts), oldest first, with what was skipped."""

    skipped: int = 0  # lines that are not version-1 records, torn last lines included
    torn: int = 0  # files that ended in a partial line (a power cut or a full disk mid-write)


def telemetry_files(path: str | Path, include_rotated: bool = True) -> list[Path]:
    """path.N ... path.1, path that exist: oldest first."""
    path = Path(path)
    olds = []
    if include_rotated:
        for f in path.parent.glob(f"{path.name}.*") if path.parent.is_dir() else []:
            suffix = f.name[len(path.name) + 1:]
            if suffix.isdigit() and f.is_file():
                olds.append((int(suffix), f))
    return [f for _, f in sorted(olds, reverse=True)] + ([path] if path.is_file() else [])


def read_telemetry(path: str | Path, include_rotated: bool = True, last: int | None = None) -> Records:
    """The valid records in path (and, include_rotated, its rotated files), oldest first. A line that
    is not a version-1 record, or a torn last line, is skipped and counted (Records.skipped / .torn).

    last: only the newest `last` records. Files are then read newest first and reading stops once
    there are enough, so a monitor on a unit with a full log parses one file (<= max_bytes), not all."""
    files = telemetry_files(path, include_rotated)
    out, chunks = Records(), []
    for f in reversed(files):  # newest first
        try:
            data = f.read_bytes()
        except FileNotFoundError:  # rotated away while we listed: its records are in the next file
            continue
        lines = data.split(b"\n")
        if lines[-1]:
            out.torn += 1
            out.skipped += 1
        chunk = []
        for line in reversed(lines[:-1]):
            if last is not None and len(chunk) + sum(map(len, chunks)) >= last:
                break
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                TelemetryRecord.from_dict(d)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
                out.skipped += 1
                continue
            chunk.append(d)
        chunks.append(chunk)
        if last is not None and sum(map(len, chunks)) >= last:
            break
    for chunk in reversed(chunks):  # oldest file first, each file's records back in order
        out.extend(reversed(chunk))
    return out
