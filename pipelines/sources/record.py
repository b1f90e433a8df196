"""The shared part of every built-in source: its record, the deterministic split, the fingerprint and the cache.

A row's split comes from a hash of a stable key (page name + section, the English text, the package name), so it
never moves when other rows come or go, and rows are sorted by that key so `fingerprint` is stable across
processes and runs.

Parsing every installed manual page takes a while, so each source's parsed rows are cached under
`$TUNEFORGE_CACHE/sources/` (default `~/.cache/tuneforge/sources/`), keyed by the list of input files with their
sizes and mtimes plus `PARSER_VERSION`; bump `PARSER_VERSION` whenever a change to the parsing changes rows. The
cache holds rows, not Arrow files: splitting and sorting them is quick, and a cached and a fresh load then come
from the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import datasets

logger = logging.getLogger("pipelines.sources")

# Bump when parsing changes what rows come out, so stale caches are not reused.
# 3: manpages rows carry DUPLICATE_OF (near-duplicate pages); the cache stores the build's stats without splits.
PARSER_VERSION = 3
SPLITS = ("train", "validation", "test")
# Per-mille buckets of sha256(key): [0, 50) test, [50, 100) validation, the rest train.
_TEST_PER_MILLE = 50
_VALIDATION_PER_MILLE = 100
# A row field a build may set: the split key of the row this one nearly repeats (its representative), or None.
# Loading drops such rows unless the recipe keeps near-duplicates; it is never a dataset column.
DUPLICATE_OF = "near_duplicate_of"


@dataclasses.dataclass(frozen=True)
class Source:
    """One built-in corpus.

    Attributes:
        description: one line for `tuneforge data` and error messages.
        default_root: where the host keeps the raw data (`root=` overrides it); None for debian-packages, whose
            default is running `apt-cache dumpavail`.
        columns: the dataset's columns in order; "{lang}" stands for the target language code.
        split_key: row -> the stable key that decides the row's split and its sort position.
        inventory: (root, lang) -> sorted file identities [(path, size, mtime_ns, ...)], the cache key; raises
            TuneforgeError when the host lacks the source.
        build: (root, lang, inventory) -> (rows, stats); rows may carry `DUPLICATE_OF`.
        features: `datasets` feature types of the columns that are not plain strings (e.g. a `messages` list).
    """

    description: str
    default_root: str | None
    columns: tuple[str, ...]
    split_key: Callable[[dict], str]
    inventory: Callable[[Path | None, str], list[tuple]]
    build: Callable[[Path | None, str, list[tuple]], tuple[list[dict], dict]]
    features: dict[str, object] = dataclasses.field(default_factory=dict)


def split_for_key(key: str) -> str:
    """The split a row belongs to, from a hash of its stable key.

    Args:
        key: the row's stable key (e.g. "ls(1)", an English message, a package name).

    Returns:
        "test" (5%), "validation" (5%) or "train" (90%); the same key always gives the same split.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < _TEST_PER_MILLE:
        return "test"
    if bucket < _VALIDATION_PER_MILLE:
        return "validation"
    return "train"


def fingerprint(ds: datasets.Dataset) -> str:
    """A content hash of a dataset's rows in order, stable across processes, runs and machines.

    Each row is serialised as canonical JSON (sorted keys), so column order and Arrow chunking do not matter
    but any change of a value, of the row order or of the row count does.

    Args:
        ds: any dataset; values that are not JSON types are hashed by their `str()`.

    Returns:
        "sha256:" followed by the first 16 hex digits of the digest.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(ds.column_names)).encode("utf-8"))
    for batch in ds.iter(batch_size=1024):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
            digest.update(b"\n")
    return "sha256:" + digest.hexdigest()[:16]




def _cache_root() -> Path:
    """$TUNEFORGE_CACHE/sources, else $XDG_CACHE_HOME/tuneforge/sources, else ~/.cache/tuneforge/sources."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser() / "sources"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuneforge" / "sources"




def _read_cache(path: Path) -> tuple[list[dict], dict] | None:
    """(rows, stats) from a cache file, or None when it is missing or unreadable (then the source is rebuilt)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return payload["rows"], payload["stats"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as err:
        logger.warning("ignoring unreadable cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, rows: list[dict], stats: dict) -> None:
    """Write the cache file atomically (temp file + rename) so a killed run never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"stats": stats, "rows": rows}, fh, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as err:  # A read-only home must not stop training; it only costs a rebuild next time.
        logger.warning("could not cache %s: %s", path, err)


def _assemble(
    rows: list[dict], columns: tuple[str, ...], key_of: Callable[[dict], str], types: dict[str, object] | None = None
) -> datasets.DatasetDict:
    """Split rows by their key's hash and sort each split by key (so fingerprints do not depend on read order)."""
    by_split: dict[str, list[tuple[str, dict]]] = {s: [] for s in SPLITS}
    for row in rows:
        key = key_of(row)
        by_split[split_for_key(key)].append((key, row))
    features = datasets.Features({c: (types or {}).get(c, datasets.Value("string")) for c in columns})
    out = {}
    for split, keyed in by_split.items():
        keyed.sort(key=lambda kr: kr[0])
        out[split] = datasets.Dataset.from_dict({c: [r[c] for _, r in keyed] for c in columns}, features=features)
    return datasets.DatasetDict(out)


def _log_stats(stats: dict) -> None:
    """One info line per source: kept rows, split sizes and every skip reason with its count."""
    skipped = "; ".join(f"skipped {n} {reason}" for reason, n in sorted(stats["skipped"].items()))
    logger.info(
        "%s: read %d, kept %d (train %d, validation %d, test %d)%s",
        stats["source"], stats["read"], stats["kept"], *(stats["splits"][s] for s in SPLITS),
        "; " + skipped if skipped else "",
    )


def _file_identity(path: Path, root: Path) -> tuple:
    """(relative path, size, mtime_ns, is_symlink) without following symlinks."""
    st = path.lstat()
    return (str(path.relative_to(root)), st.st_size, st.st_mtime_ns, path.is_symlink())


def _stats(read: int, kept: int, skipped: Counter) -> dict:
    """The stats dict shared by all sources (JSON-friendly, reasons sorted)."""
    assert read == kept + sum(skipped.values()), "every item read is either kept or skipped with a reason"
    return {"read": read, "kept": kept, "skipped": dict(sorted(skipped.items()))}


