"""The tokenized-split cache: a split tokenized once is memory-mapped back by every later run with the same inputs.

The key covers everything the tokenized result depends on (see `tokenize_cached`), so a hit is always the
identical result; entries are least-recently-used pruned to a size bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets

from pipelines import data as data_lib
from pipelines.recipe import Recipe
from pipelines.runs import versions
from pipelines.tasks import Task


def tokenize_cached(task: Task, rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Tokenize a split, or load the identical result an earlier run saved (no repeated tokenization across runs).

    Saved under `$TUNEFORGE_CACHE/tokenized/<key>` (default `~/.cache/tuneforge/tokenized`) with `save_to_disk`
    and memory-mapped back with `load_from_disk`. The key covers everything the result depends on: the rows'
    content fingerprint, the tokenizer's full serialized state (vocabulary, merges, special and added tokens, chat
    template, max length), the source code of the task modules, the recipe's task, data and chat sections, the seed
    (denoising derives its noise seeds from it), the split and the library versions. Slow (Python) tokenizers have
    no serialized state to hash, so they are not cached. Processes write to a private folder and rename it into
    place, so concurrent runs never see a half-written entry.
    """
    key = _tokenized_cache_key(task, rows, tokenizer, recipe, split)
    if key is None:
        return task.tokenize(rows, tokenizer, recipe, split)
    path = _tokenized_cache_root() / key
    if (path / "dataset_info.json").is_file():
        os.utime(path)  # last use, for the least-recently-used pruning below
        return datasets.load_from_disk(str(path))
    features = task.tokenize(rows, tokenizer, recipe, split)
    tmp = path.with_name(f"{key}.tmp-{os.getpid()}")
    try:
        features.save_to_disk(str(tmp))
        os.replace(tmp, path)
    except OSError:  # another process finished the same entry first, or the cache is not writable
        shutil.rmtree(tmp, ignore_errors=True)
        return features
    _prune_tokenized_cache(path.parent, keep=path)
    return datasets.load_from_disk(str(path))


TOKENIZED_CACHE_BYTES = 2 * 2**30  # least recently used entries beyond this are deleted


def _prune_tokenized_cache(root: Path, keep: Path) -> None:
    """Delete the least recently used tokenized splits until the cache holds at most `TOKENIZED_CACHE_BYTES`."""
    entries = []
    for entry in root.iterdir():
        if entry.is_dir() and ".tmp-" not in entry.name:
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= TOKENIZED_CACHE_BYTES:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


def _tokenized_cache_root() -> Path:
    """$TUNEFORGE_CACHE/tokenized, else $XDG_CACHE_HOME/tuneforge/tokenized, else ~/.cache/tuneforge/tokenized."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser() / "tokenized"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge" / "tokenized"


def _tokenized_cache_key(task: Task, rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> str | None:
    """The cache key of a tokenized split (see `tokenize_cached`), or None for a tokenizer that cannot be hashed."""
    from pipelines import sources, tasks

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    task_code = [f.read_bytes() for f in sorted(Path(tasks.__file__).parent.glob("*.py"))]
    tokenizer_state = [backend.to_str(), type(tokenizer).__name__, str(tokenizer.special_tokens_map),
                       getattr(tokenizer, "chat_template", None), tokenizer.model_max_length,
                       tokenizer.padding_side, tokenizer.truncation_side]
    parts = [
        task.name, split, sources.fingerprint(rows), hashlib.sha256(b"\n".join(task_code)).hexdigest(),
        hashlib.sha256(json.dumps(tokenizer_state, default=str).encode()).hexdigest(),
        recipe.data.model_dump(mode="json"),
        *(section.model_dump(mode="json") if section else None
          for section in (recipe.chat, recipe.classification, recipe.seq2seq)),
        recipe.train.seed, versions(),
    ]
    return f"{task.name}-{split}-{data_lib.cache_key(*parts)}"
