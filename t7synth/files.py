"""Atomic file and folder writes, so that an interrupted command never leaves output
that a later run would trust; and the one place where a failed write becomes a
user's one-line error.

Three promises (see ``docs/promises.md``):

* **All or nothing.** :func:`atomic_path` and :func:`atomic_dir` write to a hidden
  temporary beside the final name, flush it to the disk (``fsync``) and only then
  rename it onto the final name, so a reader sees the old file, or the complete new
  one, even after a power cut.
* **Nothing left behind.** A killed command can leave its temporaries;
  :func:`remove_stale_temporaries` recognises them by their name (which carries the
  writer's host and process id, see :data:`TEMPORARY_PATTERN`) and deletes those whose
  process has ended, never the temporaries of a command still writing.
* **One line.** A write that fails (a read-only folder, a full disk) raises
  :class:`~t7synth.errors.UserError` naming the path, not an ``OSError`` traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from t7synth.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, exclusive_lock is a no-op there
    fcntl = None

#: Hidden temporaries are ``.<name>.t7tmp-<host>-<pid>-<random><suffix>``: the host
#: (a CRC of its name) and the process id tell whether the writer can still be alive.
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.t7tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")


@functools.cache
def _umask() -> int:
    # os.umask can only be read by setting it; do it once and put it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def temporary_prefix(name: str, pid: int | None = None) -> str:
    """How the hidden temporaries of ``name`` written by process ``pid`` (default:
    this one) on this host begin (see :data:`TEMPORARY_PATTERN`)."""
    return f".{name}.t7tmp-{_host_tag()}-{os.getpid() if pid is None else pid}-"


def write_error(path: str | os.PathLike, error: OSError) -> UserError:
    """The one-line :class:`UserError` for an ``OSError`` met while writing ``path``.

    Names ``path`` and the reason (``Permission denied``, ``No space left on
    device``); when the error concerns another file (a parent folder that is a file,
    say) that file is named too.
    """
    reason = error.strerror or type(error).__name__
    other = getattr(error, "filename", None)
    if other and Path(str(other)).name.startswith(".") and ".t7tmp-" in str(other):
        other = None  # our own temporary: the final path says it better
    where = f" ({other})" if other and str(other) != str(path) else ""
    return UserError(f"cannot write {path}: {reason}{where}")


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``, with a :class:`UserError` naming it when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot write {folder}: it exists and is not a folder") from None
    except OSError as error:
        raise write_error(folder, error) from None
    return folder


def check_writable(folder: str | os.PathLike) -> Path:
    """Check, without creating anything, that ``folder`` can be created and written.

    Commands call this before any long work, so a read-only output folder is one
    line at the start rather than a failure at the end (a full disk can only be found
    by writing; :func:`atomic_path` turns that into one line too). A probe file is
    created and removed in ``folder``, or in its nearest existing parent when it
    does not exist yet, so a refused command leaves no empty folder behind.

    Raises:
        UserError: naming the folder: it (or a parent) is a file, or it cannot be
            written.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "it exists" if existing == folder else f"{existing} exists"
        raise UserError(f"cannot write {folder}: {what} and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix("probe"), dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise write_error(folder, error) from None
    return folder


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename still holds
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name keeps the final suffix (``.nii.gz``, ``.png``) so that writers
    which pick a format from the extension still work. The file is flushed to the
    disk before the rename, and the rename itself after it. On an exception the
    temporary file is removed and ``final`` is untouched.

    Raises:
        UserError: an ``OSError`` while creating, writing or renaming (read-only
            folder, full disk), naming ``final``.
    """
    final = Path(final)
    with _temporary_beside(final) as tmp:
        try:
            yield tmp
            _fsync(tmp)
            os.replace(tmp, final)
            _fsync(final.parent)
        except OSError as error:
            raise write_error(final, error) from None


@contextlib.contextmanager
def atomic_paths(*finals: str | os.PathLike) -> Iterator[list[Path]]:
    """Several output files, all or none: :func:`atomic_path` for a set of files.

    Yields one temporary per final name. Only when the block has finished are they
    flushed and renamed, one after the other, so an error while writing any of them
    leaves every final name as it was. A temporary the block deleted stands for "no
    such output this time": its final name is removed rather than left stale.

    Raises:
        UserError: an ``OSError`` while writing or renaming, naming the file.
    """
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_temporary_beside(Path(final))) for final in finals]
        try:
            yield temporaries
        except OSError as error:
            raise write_error(Path(finals[0]).parent, error) from None
        for final, tmp in zip(map(Path, finals), temporaries):
            try:
                if tmp.exists():
                    _fsync(tmp)
                    os.replace(tmp, final)
                else:
                    final.unlink(missing_ok=True)
            except OSError as error:
                raise write_error(final, error) from None
        for folder in {Path(final).parent for final in finals}:
            _fsync(folder)


@contextlib.contextmanager
def _temporary_beside(final: Path) -> Iterator[Path]:
    """A temporary file beside ``final`` (same suffix, readable mode), removed on exit."""
    make_dirs(final.parent)
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(stem), suffix=suffix, dir=final.parent)
        os.close(fd)
        # mkstemp makes the file private (0600); outputs should be as readable as any file.
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as error:
        raise write_error(final, error) from None
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it onto ``final`` on success.

    Used for whole datasets: a reader either sees the complete folder or none. Every
    file in it is flushed to the disk before the rename. If ``final`` already exists
    it is replaced.

    Raises:
        UserError: an ``OSError`` while writing or renaming, naming ``final``.
    """
    final = Path(final)
    make_dirs(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name), dir=final.parent))
    except OSError as error:
        raise write_error(final, error) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700)
        try:
            yield tmp
            for folder, _, names in os.walk(tmp):
                for name in names:
                    _fsync(Path(folder) / name)
                _fsync(Path(folder))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(final.parent)
        except OSError as error:
            raise write_error(final, error) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries that killed t7synth commands left in ``folder``.

    Only names of :data:`TEMPORARY_PATTERN` written on this host by a process that
    has ended are removed: a temporary of a command still running (or of another
    host, whose processes cannot be seen from here) is left alone.

    Args:
        folder: the folder to clean (not recursive); a missing folder is fine.
        name: only temporaries of this final name (``.<name>.t7tmp-…``, or for files
            the name without its suffixes).

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = TEMPORARY_PATTERN.match(entry.name)
        if not match or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        if name is not None and match["name"] not in (name, name.split(".")[0]):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def cache_root() -> Path:
    """Folder for t7synth's caches: ``$T7SYNTH_CACHE``, else ``$XDG_CACHE_HOME/t7synth``,
    else ``~/.cache/t7synth``. Nothing is created here; callers create what they write."""
    env = os.environ.get("T7SYNTH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "t7synth"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock named after ``path``: a hidden ``.<name>.lock`` beside it (POSIX ``flock``).

    For work that several processes on one machine may start at once and that must run
    one at a time (the demo's first generation, a sweep's study summary). Without
    ``fcntl`` (Windows) this is a no-op: the callers' writes are atomic anyway, so two
    at once waste time but never mix their outputs.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    make_dirs(path.parent)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
