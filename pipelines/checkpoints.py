"""Crash-safe run-folder writes: checkpoints, the final model folder and JSON files, plus the run lock.

A checkpoint is written to a hidden sibling (`checkpoints/.tmp-step_N`), completed with a manifest
(`tuneforge-checkpoint.json`: the step, the loop's counters, the number of log rows, every file with its size),
flushed to disk and only then renamed to `checkpoints/step_N`. A rename within one file system is atomic (POSIX
`rename(2)`), so a crash at any moment leaves either the complete checkpoint or none under its final name; resume
takes the newest one whose manifest matches its files (`latest_complete`) and says which ones it skipped and why.
Older checkpoints are pruned only after the new one is complete. The final `model/` is written the same way
(`atomic_dir`), and JSON files through a temporary file and `os.replace` (`write_text_atomic`).

The lock (`RunLock`) keeps two `tuneforge train` out of one run folder: `flock(2)` on `<output.dir>/.<name>.lock`
(of two starts within milliseconds exactly one gets it; the kernel drops it when its holder dies, so a crash leaves
no stale lock), the file holding the owner's PID, host and start time for the refusal message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import TuneforgeError

CHECKPOINTS = "checkpoints"
MANIFEST = "tuneforge-checkpoint.json"
TMP_PREFIX = ".tmp-"
STATE_FILE = "tuneforge-state-{rank}.json"


def warn(message: str) -> None:
    """A one-line notice on stderr (resume choices, stale locks, replaced folders): the user must see these."""
    print(f"tuneforge: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Durable writes


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to disk (a directory fsync makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (e.g. certain FUSE/network mounts) refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory bottom-up."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers (and a crash) see the old content or the new, never half of it.

    Raises:
        OSError: the write failed; the old file is untouched and the temporary one removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final`; an existing `final` is moved aside first and removed after.

    Between the two renames `final` is briefly absent (never half-written): a reader sees the old folder, none,
    or the new one.
    """
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old)


def recover_dir(final: Path) -> None:
    """Put back a folder that `replace_dir` moved aside when a crash came between its two renames."""
    final = Path(final)
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    if old.is_dir() and not final.exists():
        warn(f"restoring {final} from {old} (a replacement was interrupted)")
        os.rename(old, final)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it becomes `final` (fsynced, then renamed).

    On an exception the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def _step_of(path: Path) -> int | None:
    name = path.name.removeprefix("step_")
    return int(name) if path.name.startswith("step_") and name.isdigit() else None


def step_dirs(run_dir: Path) -> list[Path]:
    """`checkpoints/step_<N>` folders (complete or not), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = [p for p in root.glob("step_*") if p.is_dir() and _step_of(p) is not None] if root.is_dir() else []
    return sorted(found, key=_step_of)


def save(accelerator, run_dir: Path, step: int, keep: int, state: dict) -> Path:
    """Save Accelerate state plus the loop's counters as `checkpoints/step_<step>`, crash-safely.

    Every process writes its part (Accelerate: model, optimizer, scheduler, its RNG states; tuneforge: its own
    `state` counters) into `checkpoints/.tmp-step_<step>`; after all have finished, the main process writes the
    manifest (the file list with sizes and the number of rows in log.jsonl), fsyncs the folder and renames it into
    place, then prunes the oldest complete checkpoints beyond `keep`. All processes wait for that.

    Args:
        accelerator: the run's Accelerator (its registered objects are saved).
        run_dir: the run folder.
        step: optimizer steps done.
        keep: complete checkpoints to keep (>= 1).
        state: this process's JSON-serializable counters (restored by `latest_complete`).

    Returns:
        The final checkpoint folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    tmp, final = root / f"{TMP_PREFIX}step_{step}", root / f"step_{step}"
    main = accelerator.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a save that was interrupted: never complete, never picked by resume
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    (tmp / STATE_FILE.format(rank=accelerator.process_index)).write_text(json.dumps(state))
    accelerator.wait_for_everyone()
    if main:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        log = Path(run_dir) / "log.jsonl"
        log_rows = len(log.read_text(encoding="utf-8").splitlines()) if log.is_file() else 0
        manifest = {"step": step, "processes": accelerator.num_processes, "log_rows": log_rows, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync_tree(tmp)
        if final.exists():
            warn(f"replacing {final} (an earlier, incomplete save of the same step)")
        replace_dir(tmp, final)
        complete = [p for p in step_dirs(run_dir) if _check(p) is None]
        for old in complete[: max(0, len(complete) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    if not main and accelerator.is_local_main_process and tmp.exists():
        # A node that does not share the main process's disk: its processes' parts go into place on its own disk
        # too, so copying the run folders together gives complete checkpoints (README: "Scaling out").
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _check(path: Path) -> str | None:
    """Why the checkpoint folder `path` is not complete, or None when it is."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest: its save was interrupted (or an older tuneforge wrote it)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
        if manifest["step"] != _step_of(path):
            return f"its manifest says step {manifest['step']}"
    except (ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {size}"
    return None


def latest_complete(run_dir: Path, rank: int = 0) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and the state it holds for process `rank`, or None when there is none.

    Incomplete checkpoints (and `.tmp-step_*` folders of interrupted saves) are reported on stderr with the reason
    and left where they are; a later save of the same step replaces them (saying so).

    Returns:
        (folder, state) where state is the dict passed to `save` by process `rank`, plus "log_rows" (rows of
        log.jsonl written up to this checkpoint) and "step".

    Raises:
        TuneforgeError: the checkpoint was written by a different number of processes.
    """
    root = Path(run_dir) / CHECKPOINTS
    say = warn if rank == 0 else (lambda message: None)  # one notice per run, not one per process
    if root.is_dir():
        for tmp in sorted(root.glob(f"{TMP_PREFIX}step_*")):
            say(f"ignoring {tmp}: an interrupted checkpoint save (never complete); the next save replaces it")
    for path in reversed(step_dirs(run_dir)):
        reason = _check(path)
        if reason is not None:
            say(f"skipping incomplete checkpoint {path}: {reason}. It is left in place")
            continue
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        state_file = path / STATE_FILE.format(rank=rank)
        if not state_file.is_file():
            raise TuneforgeError(
                f"train.resume: {path} was written by {manifest['processes']} process(es) and has no state for "
                f"process {rank}; resume with the same number of processes"
            )
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return path, {**state, "step": manifest["step"], "log_rows": manifest["log_rows"]}
    return None


def checkpoint_bytes(run_dir: Path) -> int | None:
    """Size of the newest complete checkpoint in bytes (what the next one needs), None when there is none."""
    complete = [p for p in step_dirs(run_dir) if _check(p) is None]
    return sum(f.stat().st_size for f in complete[-1].rglob("*") if f.is_file()) if complete else None


def has_complete(run_dir: Path) -> bool:
    """Whether the run folder holds at least one complete checkpoint (without printing anything)."""
    return any(_check(p) is None for p in step_dirs(run_dir))


def truncate_log(run_dir: Path, rows: int) -> None:
    """Keep the first `rows` lines of log.jsonl: the rows written after the checkpoint are written again on resume.

    Raises:
        TuneforgeError: log.jsonl has fewer rows than the checkpoint recorded (it was edited or replaced).
    """
    log = Path(run_dir) / "log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True) if log.is_file() else []
    if len(lines) < rows:
        raise TuneforgeError(
            f"train.resume: {log} has {len(lines)} rows but the checkpoint was taken after {rows}; the log was "
            "edited or removed. Restore it, or start again with --overwrite"
        )
    if len(lines) > rows:
        warn(f"{log}: dropping {len(lines) - rows} row(s) logged after the checkpoint; they are logged again")
        write_text_atomic(log, "".join(lines[:rows]))


# ---------------------------------------------------------------------------------------------------------------
# The run lock


class RunLock:
    """An exclusive lock on one run folder, held from before the folder is checked until the run ends.

    The lock file is `<parent>/.<name>.lock`, beside the run folder rather than in it, so that `--overwrite`
    (which deletes the folder) and an error that removes a half-made folder cannot delete the lock, and an empty
    run folder stays empty. The lock itself is `flock(2)` on that file, so the kernel drops it when the holder
    dies however it dies (SIGKILL, OOM): a file left by a crash is simply taken, and two starts within
    milliseconds, or two restarts after a crash, cannot both hold it. The file carries the holder's PID, host and
    start time for the message the loser gets. (`flock` is honoured across hosts on local file systems and NFSv4;
    on other network file systems two hosts are not kept apart.)
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            TuneforgeError: another live `tuneforge train` holds it (its PID, host and start time are named).
            OSError: the lock file cannot be created (e.g. a read-only folder); see `pipelines.oserrors`.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TuneforgeError(self._in_use()) from None
            try:  # the previous holder unlinks the file on release: a lock on an unlinked file guards nothing
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        left = self._owner()
        if left is not None:
            warn(f"taking over the lock {self.path} left by process {left.get('pid')} on {left.get('host')}, "
                 f"which has exited")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
        self._fd = fd

    def _in_use(self) -> str:
        owner = self._owner()  # None for the instant between the holder's flock and its write
        who = "starting now" if owner is None else (
            f"PID {owner.get('pid')} on {owner.get('host')}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('time', 0)))}")
        return (f"output: {str(self.run_dir)!r} is in use by another tuneforge run ({who}); wait for it to finish, "
                f"or write elsewhere with output.name=NEW")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            return owner if isinstance(owner, dict) and "pid" in owner else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see `acquire`). Does nothing if not held."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
