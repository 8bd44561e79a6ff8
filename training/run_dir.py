"""The run directory: one live run at a time (an flock), files replaced atomically, another run's results kept.

A run first *claims* its directory: it takes an exclusive lock on `.run.lock` (released by the kernel when the
process ends, even on kill -9) and refuses a directory whose results belong to another run. Every file is then
written to a uniquely named temp file in the same directory and renamed over the old one, so a crash, a full
disk or a second process never leaves a truncated or interleaved file behind.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK_NAME = ".run.lock"
RESULTS = ("summary.json", "metrics.jsonl", "config.json", "ckpt.pt")  # what makes a directory another run's
TMP_SUFFIX = ".tmp"


class RunDirError(RuntimeError):
    """The run directory is taken, another run's, or not writable; the message says what to do."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` in one rename: readers see the old file or the new one, never a part."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class atomic_file:
    """`with atomic_file(path) as f:` writes a unique temp file beside `path`, fsyncs it and renames it over
    `path` on success; on any failure the temp file is removed and `path` is untouched."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self):
        self.tmp = temp_path(self.path)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in __exit__)
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)  # gone after a successful rename; removed after a failure
        return False


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh unique name beside `path` for writers that need a path (torch.save); the caller removes it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the renamed file gets a plain file's permissions
    return Path(tmp)


def check_writable_location(argv: list[str]) -> None:
    """Refuse, before Hydra creates it, a run directory (hydra.run.dir / hydra.sweep.dir, default outputs/ or
    multirun/) that cannot be created or written: Hydra would fail there with a traceback."""
    sweep = "-m" in argv or "--multirun" in argv
    key = "hydra.sweep.dir=" if sweep else "hydra.run.dir="
    value = next((a[len(key):] for a in argv if a.startswith(key)), "multirun" if sweep else "outputs")
    path = Path(value.split("$")[0] or ".")  # up to the first interpolation, e.g. ${now:...}
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to the run directory '{value}' ('{existing}' is "
                          f"{'read-only' if existing.is_dir() else 'a file'}); choose a writable one with "
                          f"{key}<dir>")


class RunDir:
    """An exclusively claimed run directory.

    fresh: it held no results when claimed (summary.json etc. may be written even if the run fails at once);
    a directory that held results may only be claimed by a run resuming from it (`resuming_from`).
    """

    def __init__(self, path: str | os.PathLike, resuming_from: str | os.PathLike | None = None):
        self.path = Path(path)
        self._lock = None
        self.fresh = True
        self._claim(resuming_from)

    def _claim(self, resuming_from) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        except OSError as e:
            raise RunDirError(f"cannot write to the run directory '{self.path}' ({e.strerror}); choose a writable "
                              f"one with hydra.run.dir=<dir>") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise RunDirError(f"the run directory '{self.path}' is in use by a live run ({holder}); wait for it "
                              f"to finish or choose another directory with hydra.run.dir=<dir>") from None
        held = [name for name in RESULTS if (self.path / name).exists()]
        own = resuming_from is not None and _same_run_dir(resuming_from, self.path)
        if held and not own:
            lock.close()
            raise RunDirError(f"the run directory '{self.path}' already holds another run's results "
                              f"({', '.join(held)}); choose a new directory with hydra.run.dir=<dir>, or continue "
                              f"that run with train.init_from=resume train.resume_from={self.path}")
        self.fresh = not held
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock
        self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> None:
        """Temp files left by a run that was killed mid-write (kill -9 cannot clean up); we hold the lock."""
        for tmp in self.path.glob(f"*{TMP_SUFFIX}"):
            if tmp.is_file() and any(tmp.name.startswith(f"{name}.") for name in (*RESULTS, "train.bin", "val.bin")):
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock; the empty lock file stays
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_run_dir(resume_from: str | os.PathLike, run_dir: Path) -> bool:
    """train.resume_from (a run directory or its ckpt.pt) names this run directory."""
    source = Path(resume_from)
    if not source.is_dir():
        source = source.parent
    try:
        return source.resolve() == run_dir.resolve()
    except OSError:
        return False
