"""The files charrnn writes, checked before any work starts and held for the length of a run.

One rule for every command that writes (train, plot, eval show, the analyses): every path it will
write is compared, by file identity (links followed), with every path it reads (texts, models,
base models, logs), and the message names what that input is. Training writes the checkpoint
NAME, the best-validation checkpoint (model.pt -> model.best.pt), the live log NAME.log.jsonl
(model.pt -> model.pt.log.jsonl), temporary files `.NAME.XXXXXXXX.tmp` beside them (renamed into
place) and a lock file `.NAME.lock` for each. Each path is checked up front so that a run never
destroys what is not its own and never fails after hours of work for a reason it could have seen
at the start:

- it is not an input (compared by identity, links followed);
- it is not a folder, device, FIFO or socket (charrnn replaces only regular files);
- its folder exists and is writable, and its name leaves room for the temporary file's;
- `-` is refused: these outputs are files, not streams.

A symbolic link given as an output is followed: the file replaces the one it points to and the
link stays (so `latest.pt -> run3.pt` keeps working). Two runs writing the same file at once would
interleave it; the run's locks, one per file it writes, refuse the second run at start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from charrnn.errors import UsageError

TMP_SUFFIX_LEN = len(".XXXXXXXX.tmp")  # what tempfile.mkstemp adds to `.NAME.`


def best_path(out: str | os.PathLike) -> Path:
    """Where the best-validation checkpoint goes: model.pt -> model.best.pt."""
    p = Path(out)
    return p.with_name(f"{p.stem}.best{p.suffix or '.pt'}")


def lock_path(out: str | os.PathLike) -> Path:
    p = Path(out)
    return p.with_name(f".{p.name}.lock")


def log_path(out: str | os.PathLike) -> Path:
    """Where the live training log of checkpoint `out` goes: model.pt -> model.pt.log.jsonl (beside it).

    The whole name is kept, so that distinct checkpoints never share a log (exp.v1 and exp.v2 once
    both wrote exp.log.jsonl). Logs under the old name (model.log.jsonl) are still read by `plot`."""
    p = Path(out)
    return p.with_name(f"{p.name}.log.jsonl")


# A path a command reads, and what it is to the user ("the model (-m)"), for the messages.
Read = tuple[str | os.PathLike, str]


def check_file_name(given: str, what: str = "output") -> None:
    """A UsageError for a path that ends in a slash: it names a folder, and Path() would drop the slash
    ("out.onnx/" would become a file named out.onnx)."""
    if given.endswith(("/", os.sep)) or (os.altsep and given.endswith(os.altsep)):
        raise UsageError(f"{what} {given!r} ends in a slash, which names a folder; give a file name such as model.pt")


def run_files(out: str | os.PathLike) -> list[tuple[Path, str]]:
    """Every file a training run on checkpoint `out` writes, with its name for messages."""
    check_file_name(str(out))
    files = [(Path(out), "output"), (best_path(out), "best checkpoint"), (log_path(out), "training log")]
    return files + [(lock_path(p), f"lock file of the {what}") for p, what in files]


def resolve_output(path: str | os.PathLike) -> Path:
    """The file that writing `path` will replace: a symbolic link is followed (to its final target,
    which may not exist yet); anything else is returned as given."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` both exist and are one file (links followed)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, reads: Iterable[Read] = (), what: str = "output") -> Path:
    """Check that `path` can safely be written (it is none of `reads`, given as (path, what it is)
    pairs); returns the file it will replace. A UsageError (exit 2) names the path and the reason."""
    if str(path) == "-":
        raise UsageError(f"{what} '-': charrnn writes it to a file, not a stream; give a file name")
    given, p = str(path), resolve_output(path)
    check_file_name(given, what)
    shown = repr(given) if str(p) == given else f"{given!r} (a link to {str(p)!r})"
    for source, role in reads:
        s = Path(source)
        if same_file(p, s) or p.absolute() == s.absolute():
            raise UsageError(f"{what} {shown} is {role}; choose another output path")
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise UsageError(f"cannot write {what} {shown}: {e.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{what} {shown} is a directory; give a file name such as model.pt")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{what} {shown} is a device, FIFO or socket, not a regular file; charrnn "
                         "writes only regular files")
    folder = p.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {what} {shown}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (mode is not None and not os.access(p, os.W_OK)):
        raise UsageError(f"cannot write {what} {shown}: permission denied")
    longest = len(os.fsencode(f".{p.name}.")) + max(TMP_SUFFIX_LEN, len(".lock") - 1)
    if longest > _name_max(folder):
        raise UsageError(f"{what} {shown}: the file name is too long ({len(os.fsencode(p.name))} bytes; "
                         f"at most {_name_max(folder) - longest + len(os.fsencode(p.name))} leaves room for "
                         "the temporary file written beside it)")
    return p


@contextlib.contextmanager
def run_lock(*outputs: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on each file a run writes; a second run writing any of them is refused at once.

    The lock is flock(2) on `.NAME.lock` beside each file: the kernel releases it when the process
    ends in any way (SIGKILL too), so a stale lock file never blocks a later run. The files are
    removed at the end; a run that finds a lock file replaced while it waited retries."""
    with contextlib.ExitStack() as stack:
        for out in outputs:
            stack.enter_context(_lock_one(out))
        yield


@contextlib.contextmanager
def _lock_one(out: str | os.PathLike) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, runs are not guarded against each other
        yield
        return
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UsageError(f"cannot create the lock file {str(path)!r}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UsageError(f"another charrnn run is writing {str(out)!r} (it holds {str(path)!r}); wait for "
                                 "it to end or choose another output path") from None
            raise UsageError(f"cannot lock {str(path)!r}: {e.strerror}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    """(descriptor, name) of a new temporary file `.NAME.XXXXXXXX<suffix>` in `path`'s folder, to be
    renamed into place, with the permissions any new file gets under the umask (mkstemp's own are
    0600, which would make checkpoints, pages and cache entries private whatever the user's umask)."""
    import tempfile

    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent if str(p.parent) else ".")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def write_atomic(path: str | os.PathLike, data: bytes, what: str = "") -> None:
    """Write `data` to `path` (a link is followed) through a temporary file and a rename: a failure
    (disk full, a file-size limit) leaves the previous file as it was and no temporary file; it is
    reported as one line naming the file (after `what`, such as "the training log ") and the cause."""
    from charrnn.errors import DataError

    p = resolve_output(path)
    try:
        fd, tmp = temp_beside(p)
    except OSError as e:
        raise DataError(f"cannot write {what}{str(path)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"cannot write {what}{str(path)!r}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
