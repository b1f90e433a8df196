"""Turning failures of the machine and of libraries into one clear `TuneforgeError`.

A full disk, a read-only folder, an output path that is a file: the OS reports them as `OSError` (safetensors as
`SafetensorError` wrapping the OS error). `writing(...)` wraps the code that writes a folder and rewords these as
one message naming the folder, the problem and the fix (with the free space and, where known, the space needed).
Errors outside this set are left alone: they are bugs, and the CLI shows their traceback.
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from pipelines.errors import TuneforgeError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
# safetensors (Rust) reports I/O failures as text: "I/O error: No space left on device (os error 28)".
_RUST_OS_CODE = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def folder_size(path: Path) -> int:
    """Bytes of the files under `path` (0 if absent)."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing ancestor), None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def os_errno(exc: BaseException) -> int | None:
    """The OS error number behind `exc` (an OSError, or a SafetensorError quoting one), else None."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    if type(exc).__name__ == "SafetensorError":
        match = _RUST_OS_CODE.search(str(exc))
        return int(match.group(1) or match.group(2)) if match else None
    return None


def message(exc: BaseException, folder: Path, field: str, needed: int | Callable[[], int | None] | None = None
            ) -> str | None:
    """One line for an OS failure while writing `folder`, or None when `exc` is not one a user can fix.

    Args:
        exc: the exception raised while writing.
        folder: the folder being written (named in the message).
        field: the recipe field or flag that chose the folder (e.g. "output.dir").
        needed: bytes the write needed, when known (e.g. the size of a checkpoint), or a function computing them
            (called only on a full disk).
    """
    code = os_errno(exc)
    where = getattr(exc, "filename", None) or folder
    if code in DISK_FULL:
        free = free_bytes(folder)
        needed = needed() if callable(needed) else needed
        need = f"; it needs about {_mb(needed)}" if needed else ""
        have = f", {_mb(free)} free" if free is not None else ""
        return (f"{field}: no space left on the disk holding {str(folder)!r} while writing {str(where)!r}"
                f"{have}{need}. Free some space (or point {field} at a larger disk) and run again")
    if code in NOT_WRITABLE:
        why = "read-only file system" if code == errno.EROFS else "permission denied"
        if not Path(where).absolute().is_relative_to(Path(folder).absolute()):  # e.g. an unreadable input file
            return f"{str(where)!r}: {why}; fix its permissions (or copy it somewhere readable)"
        return f"{field}: cannot write to {str(where)!r} ({why}); choose a writable {field} or fix its permissions"
    if code in NOT_A_FOLDER:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        return (f"{field}: {str(where)!r} is in the way: a file stands where a folder must be created ({why}); "
                f"move the file or choose another {field}")
    return None


@contextlib.contextmanager
def writing(folder: Path, field: str = "output.dir", needed: int | Callable[[], int | None] | None = None
            ) -> Iterator[None]:
    """Re-raise a user-fixable OS failure inside the block as a `TuneforgeError` naming `folder`.

    Raises:
        TuneforgeError: disk full, read-only or permission denied, a file where a folder must be.
    """
    try:
        yield
    except TuneforgeError:
        raise
    except Exception as exc:
        text = message(exc, Path(folder), field, needed)
        if text is None:
            raise
        raise TuneforgeError(text) from exc


def check_output_dir(run_dir: Path, field: str = "output.dir") -> None:
    """The run folder and its parents are folders or can be created (no file in the way), before anything is written.

    Raises:
        TuneforgeError: a file stands at the run folder's path or at one of its parents.
    """
    for path in [Path(run_dir), *Path(run_dir).parents]:
        if path.exists():
            if not path.is_dir():
                what = "output.name" if path == Path(run_dir) else field
                raise TuneforgeError(
                    f"{what}: {str(path)!r} is a file, not a folder; the run folder {str(run_dir)!r} cannot be "
                    f"created there. Choose another {what}"
                )
            return
