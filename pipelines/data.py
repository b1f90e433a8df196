"""Data: built-in offline corpora, local files or Hub datasets -> a `datasets.DatasetDict` (train/validation/test).

Every split is deterministic (built-in sources split by a hash of a stable key; local files by a hash of the
row) and every scored split carries a content fingerprint recorded with its scores.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
from pathlib import Path

import datasets
import pyarrow
from datasets.exceptions import DatasetGenerationError

from pipelines import subsets
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
    if getattr(spec, "files", None):  # data.files: every split's file exists and has a known format
        for split, name in spec.files.items():
            path = Path(name).expanduser()
            if not path.is_file():
                raise TuneforgeError(f"data.files.{split}: {name!r} does not exist (or is a folder); give a "
                                     "json/jsonl/csv/parquet/txt file")
            if path.suffix not in LOCAL_FORMATS:
                raise TuneforgeError(f"data.files.{split}: {name!r} has an unknown format; use one of "
                                     f"{sorted(LOCAL_FORMATS)}")
        return
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
    ds = read_local_file(path, builder)
    keys = [json.dumps(row, sort_keys=True, default=str) for row in ds]
    split_of = [split_for_key(k) for k in keys]
    return datasets.DatasetDict(
        {s: ds.select([i for i, name in enumerate(split_of) if name == s]) for s in SPLITS}
    )


def _load_files(files: dict[str, str]) -> datasets.DatasetDict:
    """`data.files`: the user's own train/validation/test files, each read as it is (no re-splitting).

    Each file goes through `datasets.load_dataset` with its own builder, so the formats may differ per split.
    The splits must share the columns the recipe reads (checked by `check_columns` on train, and here).

    Raises:
        TuneforgeError: an unreadable file (see `read_local_file`), or splits whose columns differ.
    """
    out = {}
    for split in SPLITS:
        path = Path(files[split]).expanduser()
        out[split] = read_local_file(path, LOCAL_FORMATS[path.suffix], f"data.files.{split}")
    for split in SPLITS[1:]:
        missing = sorted(set(out["train"].column_names) - set(out[split].column_names))
        if missing:
            raise TuneforgeError(f"data.files.{split}: {files[split]!r} lacks the column(s) {missing} that the "
                                 f"train file {files['train']!r} has; give every split the same columns")
    return datasets.DatasetDict(out)


def read_local_file(path: Path, builder: str, field: str = "data.source") -> datasets.Dataset:
    """One local data file as a `Dataset`, or one clear error naming the file, the place and the fix.

    Checked first, because the loaders report them late or not at all: a folder or an empty file, bytes that are not
    UTF-8 in a text format (pyarrow loads them and fails on first access). A parse error is reported with the
    parser's own words (pyarrow, pandas) and, for JSON lines, the first line that does not parse. A column whose rows
    mix types (e.g. strings and lists) is refused: `datasets` turns it into opaque JSON values.

    Args:
        path: the file.
        builder: the `datasets` packaged builder ("json", "csv", "parquet", "text").
        field: the recipe field that named the file, for messages.

    Raises:
        TuneforgeError: any of the above.
    """
    where = f"{field}: {str(path)!r}"
    if path.is_dir():
        raise TuneforgeError(f"{where} is a folder; give one {'/'.join(sorted(set(LOCAL_FORMATS)))} file")
    if path.stat().st_size == 0:
        raise TuneforgeError(f"{where} is empty (0 bytes), so it has no rows; give a file with data")
    if builder != "parquet":
        _check_utf8(path, where)
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except (DatasetGenerationError, pyarrow.ArrowException, ValueError, StopIteration) as exc:
        line = _first_bad_json_line(path) if path.suffix == ".jsonl" else None
        cause = exc
        while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
            cause = cause.__cause__ or cause.__context__
        detail = line or f"{type(cause).__name__}: {cause}".strip().rstrip(":")
        raise TuneforgeError(f"{where} cannot be read as {builder} ({detail}); fix the file or convert it") from None
    if len(ds) == 0:
        raise TuneforgeError(f"{where} has no rows; give a file with data")
    return ds


def check_text_columns(spec: SourceSpec, dd: datasets.DatasetDict) -> None:
    """The columns the recipe reads as text hold one type: `datasets` turns a column that mixes types (e.g. strings
    and lists) into opaque JSON values, which tokenizing would fail on much later. Class labels are left to the
    classification task, which reports mixed label types itself.

    Raises:
        TuneforgeError: the first text column that mixes types, with the types found.
    """
    for role, cols in spec.columns.items():
        for col in [cols] if isinstance(cols, str) else cols:
            if role != "label" and type(dd["train"].features.get(col)).__name__ == "Json":  # splits share features
                kinds = sorted({type(v).__name__ for split in dd.values() for v in split[col]})
                raise TuneforgeError(
                    f"data.columns.{role}: column {col!r} of {spec.source!r} mixes value types ({', '.join(kinds)}); "
                    "give every row the same type (text)"
                )


def _check_utf8(path: Path, where: str) -> None:
    """Raise when the file is not UTF-8, naming the line and byte offset of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                lines += chunk[: exc.start].count(b"\n")
                raise TuneforgeError(
                    f"{where} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at line {lines}, byte offset {bad}); "
                    "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            offset += len(chunk)
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise TuneforgeError(f"{where} is not UTF-8 text (it ends inside a character); save it as UTF-8") from None


def _first_bad_json_line(path: Path) -> str | None:
    """'line N: <json error>' for the first line of a JSON-lines file that does not parse as an object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                return f"line {number} is not valid JSON: {exc}"
            if not isinstance(row, dict):
                return f"line {number} is a JSON {type(row).__name__}, not an object of columns"
    return None


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
    kind = "local" if getattr(spec, "files", None) else source_kind(spec.source)
    if getattr(spec, "files", None):
        dd = _load_files(spec.files)
    elif kind == "builtin":
        dd = load_source(spec.source, near_duplicates=spec.near_duplicates, **{k: v for k, v in spec.params.items()})
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
    if kind == "local":
        check_text_columns(spec, dd)
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


def load_data(data: DataConfig, stratify_role: str | None = None) -> datasets.DatasetDict:
    """Load the recipe's data with its `mix` and limits applied.

    Without `mix`, rows keep the source's columns. With `mix`, every source contributes its `columns.text`
    as documents and the result has a single `text` column (for pretraining corpora). Every limit takes a seeded
    random sample (`pipelines.subsets`); `stratify_role` (the task's `Task.stratify_role`, e.g. "label") makes the
    validation and test samples cover every value of that role's column when the limit allows.

    Args:
        data: the recipe's data section.
        stratify_role: a `data.columns` role to stratify the validation/test samples by, or None.

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
    column = stratify_column(data, stratify_role)
    out = {}
    for split in SPLITS:
        ds = dd[split]
        if limits[split] is not None and len(ds) > limits[split]:
            # Training rows are a plain sample (the label set is learnt from them as they come).
            labels = ds[column] if column is not None and split != "train" else None
            ds = ds.select(subsets.sample_indices(len(ds), limits[split], data.subset_seed, labels))
        if len(ds) == 0:
            raise TuneforgeError(
                f"data: the {split} split of {data.source!r} is empty after filtering; "
                "check data.source/params or the limits"
            )
        out[split] = ds
    return datasets.DatasetDict(out)


def stratify_column(data: DataConfig, role: str | None) -> str | None:
    """The column the validation/test samples stratify by: the one `data.columns` maps `role` to (None without
    mix; mixed corpora have only text)."""
    if role is None or data.mix or not isinstance(data.columns.get(role), str):
        return None
    return data.columns[role]


def dataset_info(data: DataConfig, ds: datasets.Dataset, *, packed_view: bool = False,
                 stratify_role: str | None = None) -> dict:
    """The identity of the scored rows `ds`, recorded with every score: dataset name (see `dataset_name`), the
    source split they came from (`data.splits.test`, "test" unless remapped), example count, fingerprint and how
    the rows were sampled (`subset`, with `data.test_limit`).

    Args:
        data: the recipe's data section.
        ds: the scored rows.
        packed_view: the task scores packed windows (`Task.scores_packed_windows`).
        stratify_role: the task's `Task.stratify_role`.
    """
    split = data.splits.get("test", "test")
    info = {"name": dataset_name(data, packed_view=packed_view), "split": split, "num_examples": len(ds),
            "fingerprint": fingerprint(ds)}
    subset = subsets.describe(data.test_limit, data.subset_seed, stratify_column(data, stratify_role))
    return {**info, "subset": subset} if subset else info


def dataset_name(data: DataConfig, *, packed_view: bool = False) -> str:
    """A readable name of what is scored: source, parameters, mixed-in sources and the column view.

    The view (which columns play which role, packed windows or not) is part of the name because the same rows
    scored another way give incomparable numbers (perplexity of packed windows vs of continuations only), and
    comparison tables group runs by this name. E.g. `gettext(lang=de)[source=en, target=de]`. Only a task that
    scores packed windows (causal LM) says "packed"; chat packs its training split alone.
    """
    def one(spec: SourceSpec) -> str:
        kept = {"near_duplicates": "keep"} if spec.near_duplicates == "keep" else {}  # the default stays unnamed
        params = ",".join(f"{k}={v}" for k, v in sorted({**spec.params, **kept}.items()))
        if getattr(spec, "files", None):
            params = ",".join(f"{s}={Path(spec.files[s]).name}" for s in SPLITS)
        return f"{spec.source}({params})" if params else spec.source

    view = ", ".join(f"{role}={'+'.join([c] if isinstance(c, str) else c)}" for role, c in data.columns.items())
    if data.packing and packed_view:
        view += f"; packed {data.max_length}"
    return "+".join([one(data)] + [one(m) for m in data.mix]) + (f"[{view}]" if view else "")


def cache_key(*parts: object) -> str:
    """A short stable hash for caching tokenized datasets."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
