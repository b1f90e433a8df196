"""Data: built-in offline corpora, local files or Hub datasets -> a `datasets.DatasetDict` (train/validation/test).

Every split is deterministic (built-in sources split by a hash of a stable key; local files by a hash of the
row) and every scored split carries a content fingerprint recorded with its scores.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from pathlib import Path

import datasets

from pipelines.errors import TuneforgeError
from pipelines.recipe import DataConfig, SourceSpec
from pipelines.sources import SOURCES, fingerprint, load_source, split_for_key

SPLITS = ("train", "validation", "test")
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def source_kind(source: str) -> str:
    """'builtin', 'local' or 'hub' for a recipe's `data.source` value."""
    if source in SOURCES:
        return "builtin"
    if Path(source).suffix in LOCAL_FORMATS or Path(source).exists() or source.startswith((".", "/", "~")):
        return "local"
    return "hub"


def check_source(spec: SourceSpec, field: str = "data.source") -> None:
    """Cheap checks (no loading) that `validate` runs: the local file exists, the built-in name is known.

    Raises:
        TuneforgeError: a missing local file, a name that looks like a misspelled built-in source, or a
            `columns` entry naming a column the built-in source does not have.
    """
    kind = source_kind(spec.source)
    if kind == "builtin":  # its columns are known without loading it
        lang = str(spec.params.get("lang", "de"))
        check_columns(spec, [c.format(lang=lang) for c in SOURCES[spec.source].columns], field.removesuffix(".source"))
    if kind == "local" and not Path(spec.source).expanduser().exists():
        raise TuneforgeError(f"{field}: {spec.source!r} does not exist; give a json/jsonl/csv/parquet/txt file")
    if kind == "hub" and "/" not in spec.source:
        close = difflib.get_close_matches(spec.source, list(SOURCES), n=1)
        if close:
            raise TuneforgeError(f"{field}: unknown source {spec.source!r}; did you mean {close[0]!r}?")


def _load_local(path: Path) -> datasets.DatasetDict:
    """One local file split deterministically by a hash of each row's content."""
    builder = LOCAL_FORMATS.get(path.suffix)
    if builder is None:
        raise TuneforgeError(f"data.source: {str(path)!r} has an unknown format; use one of {sorted(LOCAL_FORMATS)}")
    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    keys = [json.dumps(row, sort_keys=True, default=str) for row in ds]
    split_of = [split_for_key(k) for k in keys]
    return datasets.DatasetDict(
        {s: ds.select([i for i, name in enumerate(split_of) if name == s]) for s in SPLITS}
    )


def _load_hub(spec: SourceSpec, splits: dict[str, str]) -> datasets.DatasetDict:
    """A Hub dataset (network); `params.name` selects a configuration."""
    params = dict(spec.params)
    name = params.pop("name", None)
    loaded = datasets.load_dataset(spec.source, name, **params)
    out = {}
    for ours, theirs in splits.items():
        if theirs not in loaded:
            raise TuneforgeError(
                f"data.splits.{ours}: {spec.source!r} has no split {theirs!r}; it has {sorted(loaded)}"
            )
        out[ours] = loaded[theirs]
    return datasets.DatasetDict(out)


def load_spec(spec: SourceSpec, splits: dict[str, str] | None = None) -> datasets.DatasetDict:
    """Load one source into train/validation/test.

    Raises:
        TuneforgeError: unknown built-in name, missing host corpus, missing file, missing column.
    """
    check_source(spec)
    kind = source_kind(spec.source)
    if kind == "builtin":
        dd = load_source(spec.source, **{k: v for k, v in spec.params.items()})
    elif kind == "local":
        dd = _load_local(Path(spec.source).expanduser())
    else:
        dd = _load_hub(spec, splits or {s: s for s in SPLITS})
    if kind != "hub":  # built-in and local sources come as train/validation/test; `data.splits` may remap them
        for ours, theirs in (splits or {}).items():
            if theirs not in SPLITS:
                raise TuneforgeError(
                    f"data.splits.{ours}: {spec.source!r} has no split {theirs!r}; it has {list(SPLITS)}"
                )
        dd = datasets.DatasetDict({ours: dd[(splits or {}).get(ours, ours)] for ours in SPLITS})
    check_columns(spec, dd["train"].column_names)
    return dd


def check_columns(spec: SourceSpec, available: list[str], prefix: str = "data") -> None:
    """Every column the recipe's `columns` names is among `available`.

    Raises:
        TuneforgeError: the first missing one, with did-you-mean (or the columns there are).
    """
    for role, cols in spec.columns.items():
        for col in [cols] if isinstance(cols, str) else cols:
            if col not in available:
                close = difflib.get_close_matches(col, available, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"its columns: {available}"
                raise TuneforgeError(f"{prefix}.columns.{role}: no column {col!r} in {spec.source!r}; {hint}")


def _documents(dd: datasets.DatasetDict, spec: SourceSpec) -> datasets.DatasetDict:
    """Flatten the `text` role columns of a source into one `text` column of documents (pretraining corpora)."""
    cols = spec.columns.get("text")
    if cols is None:
        raise TuneforgeError(f"data.mix: source {spec.source!r} needs columns.text (the column(s) holding text)")
    cols = [cols] if isinstance(cols, str) else cols

    def explode(batch: dict) -> dict:
        return {"text": [t for c in cols for t in batch[c] if t and t.strip()]}

    return datasets.DatasetDict(
        {s: d.map(explode, batched=True, remove_columns=d.column_names) for s, d in dd.items()}
    )


def load_data(data: DataConfig) -> datasets.DatasetDict:
    """Load the recipe's data with its `mix` and limits applied.

    Without `mix`, rows keep the source's columns. With `mix`, every source contributes its `columns.text`
    as documents and the result has a single `text` column (for pretraining corpora).

    Returns:
        DatasetDict with "train", "validation" and "test".

    Raises:
        TuneforgeError: any data problem, including an empty split after filtering and limits.
    """
    dd = load_spec(data, data.splits)
    if data.mix:
        parts = [_documents(dd, data)] + [_documents(load_spec(m, None), m) for m in data.mix]
        dd = datasets.DatasetDict({s: datasets.concatenate_datasets([p[s] for p in parts]) for s in SPLITS})
    limits = {"train": data.train_limit, "validation": data.validation_limit, "test": data.test_limit}
    out = {}
    for split in SPLITS:
        ds = dd[split]
        if limits[split] is not None and len(ds) > limits[split]:
            # train_limit takes a fixed-seed random sample (as its description says): built-in sources are sorted
            # by key, so the first N rows would be e.g. the alphabetically first packages, not a fair sample.
            rows = sorted(random.Random(0).sample(range(len(ds)), limits[split])) if split == "train" else None
            ds = ds.select(rows if rows is not None else range(limits[split]))
        if len(ds) == 0:
            raise TuneforgeError(
                f"data: the {split} split of {data.source!r} is empty after filtering; "
                "check data.source/params or the limits"
            )
        out[split] = ds
    return datasets.DatasetDict(out)


def dataset_info(data: DataConfig, ds: datasets.Dataset, *, packed_view: bool = False) -> dict:
    """The identity of the scored rows `ds`, recorded with every score: dataset name (see `dataset_name`), the
    source split they came from (`data.splits.test`, "test" unless remapped), example count and fingerprint.

    Args:
        data: the recipe's data section.
        ds: the scored rows.
        packed_view: the task scores packed windows (`Task.scores_packed_windows`).
    """
    split = data.splits.get("test", "test")
    return {"name": dataset_name(data, packed_view=packed_view), "split": split, "num_examples": len(ds),
            "fingerprint": fingerprint(ds)}


def dataset_name(data: DataConfig, *, packed_view: bool = False) -> str:
    """A readable name of what is scored: source, parameters, mixed-in sources and the column view.

    The view (which columns play which role, packed windows or not) is part of the name because the same rows
    scored another way give incomparable numbers (perplexity of packed windows vs of continuations only), and
    comparison tables group runs by this name. E.g. `gettext(lang=de)[source=en, target=de]`. Only a task that
    scores packed windows (causal LM) says "packed"; chat packs its training split alone.
    """
    def one(spec: SourceSpec) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(spec.params.items()))
        return f"{spec.source}({params})" if params else spec.source

    view = ", ".join(f"{role}={'+'.join([c] if isinstance(c, str) else c)}" for role, c in data.columns.items())
    if data.packing and packed_view:
        view += f"; packed {data.max_length}"
    return "+".join([one(data)] + [one(m) for m in data.mix]) + (f"[{view}]" if view else "")


def cache_key(*parts: object) -> str:
    """A short stable hash for caching tokenized datasets."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
