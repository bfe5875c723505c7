"""Atomic file writes (a crash half-way leaves the previous file intact, never a truncated one), and
where uverify's caches live."""

from __future__ import annotations

import ctypes
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from uverify.errors import UverifyError, one_line


def cache_dir() -> Path:
    """$UVERIFY_CACHE_DIR, else $XDG_CACHE_HOME/uverify, else ~/.cache/uverify: what is only kept for
    speed (the parsed loan table, ONNX export templates); deleting it never changes a result."""
    if os.environ.get("UVERIFY_CACHE_DIR"):
        return Path(os.environ["UVERIFY_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "uverify"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets a later command tell a dead writer's file from a live one's
        fd, tmp_name = tempfile.mkstemp(prefix=staging_name(target, os.getpid()), suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise UverifyError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # after `write`: mkstemp makes the file owner-only, and a writer that recreates it (safetensors)
        # may too; every file of a run gets the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UverifyError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | os.PathLike[str]) -> None:
    """Fail before a long run, not after it, when its output folder cannot be written."""
    folder = Path(path).absolute()
    existing = folder
    while not existing.exists():  # the folder may not exist yet: its nearest existing ancestor decides
        existing = existing.parent
    if not existing.is_dir():
        raise UverifyError(f"cannot write to {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise UverifyError(f"cannot write to {folder}: {existing} is not writable")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


STAGING_SUFFIX = ".staging"
TEMP_SUFFIX = ".tmp"


def staging_name(target: Path, pid: int) -> str:
    """The prefix of a staging folder of `target` made by process `pid` (mkdtemp adds a random part)."""
    return f".{target.name}.{pid}."


@contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside `final` to write into; on success it takes `final`'s place in one atomic
    exchange (an older `final` is removed only after the new one is in place), on failure it is deleted.

    The staging folder's name carries this process's id, so that a later command can tell the leftovers
    of a process that was killed (`remove_stale_staging`). Errors that name the staging folder are
    re-raised naming `final`, the path the user gave."""
    target = Path(final).absolute()
    ensure_writable_dir(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=staging_name(target, os.getpid()), suffix=STAGING_SUFFIX, dir=target.parent)
        )
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it owner-only; the run gets the usual mode
    except OSError as exc:
        raise UverifyError(f"cannot write to {target}: {exc.strerror or exc}") from None
    try:
        yield staging
    except UverifyError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _renamed(exc, staging, target) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, target)


def _renamed(exc: UverifyError, staging: Path, target: Path) -> UverifyError:
    """`exc` with every mention of the staging folder replaced by the folder the user named."""
    text = str(exc)
    if str(staging) not in text:
        return exc
    return type(exc)(text.replace(str(staging), str(target)))


def _swap_in(staging: Path, target: Path) -> None:
    """Put the finished `staging` where `target` is. Where the OS can exchange two names atomically
    (Linux renameat2 RENAME_EXCHANGE), there is no moment without `target`; elsewhere the old folder is
    first renamed aside, and `remove_stale_staging` puts it back if the process dies in between."""
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous contents
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where that is not available.

    By hand because Python's os module has no renameat2; glibc has had it since 2.28."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def remove_stale_staging(final: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed processes left beside `final`: staging folders (`.NAME.PID.xxxx.staging`) of
    processes that no longer run, and an older `final` renamed aside (`.NAME.old-PID`), which goes back
    to its place when `final` is missing (the process died between the two renames). Call it while
    holding `final`'s lock: then no other uverify process can be writing there. Returns what it removed."""
    target = Path(final).absolute()
    if not target.parent.is_dir():
        return []
    removed = []
    for path in sorted(target.parent.glob(f".{glob.escape(target.name)}.*")):
        rest = path.name[len(target.name) + 2 :]
        if rest.endswith(STAGING_SUFFIX) and path.is_dir():
            pid = rest.split(".", 1)[0]
            if not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        elif rest.startswith("old-") and rest[4:].isdigit() and path.is_dir() and not _alive(int(rest[4:])):
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
            removed.append(path)
    return removed


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (`.NAME.PID.xxxx.tmp`) that `atomic_write` calls of processes that no
    longer run left anywhere under `folder` (a kill between writing and renaming). Call it while holding
    the folder's lock. Returns what it removed."""
    removed = []
    for path in sorted(Path(folder).rglob(f".*{TEMP_SUFFIX}")):
        parts = path.name.split(".")  # "", NAME parts..., PID, random, "tmp"
        pid = parts[-3] if len(parts) >= 5 else ""
        if path.is_file() and pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, depth] of the locks this process holds


@contextmanager
def exclusive_lock(lock_file: Path, holder: str, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an OS file lock (flock) on `lock_file` for the block, or raise `UverifyError(busy(text))` at once
    when another process holds it (`text`: what that process wrote into the file: its pid and `holder`).
    Re-entrant within a process; the lock goes with the process, however it ends.

    By hand rather than with the filelock package: it truncates the file when it tries to lock, so the
    process that is refused could not say who holds the lock."""
    key = lock_file.absolute()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise UverifyError(
            f"cannot write in {key.parent} (to lock it for this command): {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise UverifyError(busy(text)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: {holder}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race with a process opening it)


@contextmanager
def staged_update(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Change a run directory all-or-nothing: yields a copy of `folder` (hard links, so it costs no
    space) that replaces `folder` whole on success and is deleted on failure.

    Files in the copy share storage with the original, so they must only be replaced (`atomic_write`
    writes a new file and renames it), never modified in place: every writer in uverify does that."""
    source = Path(folder)
    with staged_dir(source) as staging:
        for path in sorted(source.rglob("*")):
            target = staging / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # a file system without hard links: copy
                shutil.copy2(path, target)
        yield staging


def atomic_write_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(path, write)


def atomic_write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """Several arrays in one .npz file, written atomically; never pickled (object arrays are refused)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise ValueError(f"{path}: array {key!r} holds Python objects, which an .npz must not pickle")
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            save(handle, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write)


def read_npz(path: str | os.PathLike[str], name: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an .npz file (pickles refused); `keys` must be among them. `name` says what the
    file is in the one-line error that a missing, truncated or foreign file gives."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if not magic.startswith(b"PK"):  # np.load calls anything neither zip nor .npy "pickled data"
            kind = "a single .npy array" if magic == b"\x93NUMPY" else "not an .npz archive (no zip signature)"
            raise UverifyError(f"{name}: {kind}; expected an .npz archive of arrays")
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UverifyError(f"{name}: a single array, not an .npz archive of arrays")
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise UverifyError(f"{name}: no array {' or '.join(map(repr, missing))} (it has {sorted(data.files)})")
            return {key: data[key] for key in data.files}
    except UverifyError:
        raise
    except FileNotFoundError:
        raise UverifyError(f"{name}: no such file") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        reason = "it holds Python objects, which uverify never unpickles" if "pickle" in str(exc) else one_line(exc)
        raise UverifyError(f"{name}: not a readable .npz file ({reason})") from None


def read_int_vector(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """A 1-d integer .npy file as int64 (empty when the file does not exist); `name` says what it is
    in the one-line error a damaged file gives."""
    file = Path(path)
    if not file.is_file():
        return np.zeros(0, np.int64)
    try:
        values = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UverifyError(f"{name} is not readable") from None
    if not isinstance(values, np.ndarray) or values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise UverifyError(f"{name} must be a 1-d integer array")
    return values.astype(np.int64)
