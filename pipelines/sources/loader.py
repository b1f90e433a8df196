"""The registry of built-in sources and loading one: cache or build, drop near-duplicates, split, count.

Loading is the same for every source: take the host's file inventory (the cache key), read the parsed rows from
the cache or build them, drop the rows a build marked as near-duplicates (unless the recipe keeps them), then
split and sort by key. The near-duplicate choice is made at load time from the cached rows, so both settings
share one cache entry and each row's split stays a function of its own key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import operator
from collections import Counter
from pathlib import Path

import datasets

from pipelines.errors import TuneforgeError
from pipelines.sources.debian_packages import _debian_build, _debian_inventory
from pipelines.sources.gettext_catalogs import _check_lang, _gettext_build, _gettext_inventory
from pipelines.sources.manpages import _manpage_key, _manpages_build, _manpages_inventory
from pipelines.sources.manpages_chat import _manpages_chat_build
from pipelines.sources.near_duplicates import RULE as _NEAR_DUPLICATE_RULE
from pipelines.sources.record import (
    DUPLICATE_OF,
    PARSER_VERSION,
    SPLITS,
    Source,
    _assemble,
    _cache_root,
    _log_stats,
    _read_cache,
    _write_cache,
)

NEAR_DUPLICATES = ("drop", "keep")
_NEAR_DUPLICATE_REASON = f"near-duplicate pages ({_NEAR_DUPLICATE_RULE})"


def load_source(
    name: str, *, lang: str = "de", root: str | Path | None = None, near_duplicates: str = "drop"
) -> datasets.DatasetDict:
    """Load a built-in corpus from the host (or from the cache of an earlier load).

    Args:
        name: one of `SOURCES` ("manpages", "manpages-chat", "gettext", "debian-packages").
        lang: target language for "gettext" (the exact directory name under /usr/share/locale, e.g. "de";
            "de" never includes "de_AT"); ignored by the other sources.
        root: overrides the host location: the man tree (/usr/share/man), the locale tree (/usr/share/locale)
            or, for "debian-packages", a file holding `apt-cache dumpavail` output.
        near_duplicates: "drop" (default) removes the rows the source marks as near-duplicates of another row
            (manpages, manpages-chat: see `pipelines.sources.near_duplicates`); "keep" keeps them. Sources
            without such marks are unaffected.

    Returns:
        DatasetDict with "train", "validation" and "test", rows sorted by their split key.

    Raises:
        TuneforgeError: unknown name (with a did-you-mean), an unknown `near_duplicates` value, or the host lacks
            the source (with how to get it).
    """
    dd, _ = _load(name, lang, root, near_duplicates)
    return dd


def source_stats(
    name: str, *, lang: str = "de", root: str | Path | None = None, near_duplicates: str = "drop"
) -> dict:
    """What loading a source read, kept and skipped (builds it if it is not cached yet).

    Args:
        name: a built-in source name.
        lang: as for `load_source`.
        root: as for `load_source`.
        near_duplicates: as for `load_source`; dropped near-duplicates are counted among the skipped rows.

    Returns:
        {"source", "read", "kept", "skipped": {reason: count}, "splits": {split: rows}}; read == kept + skipped.
        With near_duplicates="drop" and a source that marks them, also "near_duplicates": {"rule", "dropped",
        "largest_groups": [[representative key, pages it stands for], ...] (the five largest)}.

    Raises:
        TuneforgeError: as `load_source`.
    """
    _, stats = _load(name, lang, root, near_duplicates)
    return stats


def _source(name: str) -> Source:
    """The registry entry for `name`, or a TuneforgeError with a did-you-mean."""
    if name in SOURCES:
        return SOURCES[name]
    close = difflib.get_close_matches(name, list(SOURCES), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(SOURCES)
    raise TuneforgeError(f"data.source: {name!r} is not a built-in source; {hint}built-in sources: {known}")


def _load(name: str, lang: str, root: str | Path | None, keep: str) -> tuple[datasets.DatasetDict, dict]:
    """Load from the cache, or build and cache; drop near-duplicates unless kept; return (dataset, stats)."""
    source = _source(name)
    if keep not in NEAR_DUPLICATES:
        raise TuneforgeError(f"data.near_duplicates: {keep!r} is not one of {list(NEAR_DUPLICATES)}")
    if name == "gettext":
        _check_lang(lang)
    else:
        lang = ""  # Only gettext depends on the language; one cache entry serves every lang for the others.
    root = root if root is not None else source.default_root
    root_path = Path(root).expanduser().resolve() if root is not None else None
    inventory = source.inventory(root_path, lang)
    identity = [PARSER_VERSION, name, lang, str(root_path), inventory]
    key = hashlib.sha256(json.dumps(identity, default=str).encode("utf-8")).hexdigest()[:16]
    path = _cache_root() / f"{name}{'-' + lang if lang else ''}-{key}.json"
    cached = _read_cache(path)
    if cached is not None:
        rows, stats = cached
    else:
        rows, stats = source.build(root_path, lang, inventory)
        _write_cache(path, rows, stats)
    stats = {"source": name, **stats}
    if keep == "drop" and any(r.get(DUPLICATE_OF) for r in rows):
        representatives = Counter(r[DUPLICATE_OF] for r in rows if r.get(DUPLICATE_OF))
        rows = [r for r in rows if not r.get(DUPLICATE_OF)]
        dropped = sum(representatives.values())
        stats["kept"] -= dropped
        stats["skipped"] = dict(sorted({**stats["skipped"], _NEAR_DUPLICATE_REASON: dropped}.items()))
        largest = sorted(representatives.items(), key=lambda group: (-group[1], group[0]))[:5]
        stats["near_duplicates"] = {
            "rule": _NEAR_DUPLICATE_RULE, "dropped": dropped, "largest_groups": [[k, n + 1] for k, n in largest],
        }
    columns = tuple(c.format(lang=lang) for c in source.columns)
    dd = _assemble(rows, columns, source.split_key, source.features)
    stats["splits"] = {s: len(dd[s]) for s in SPLITS}
    if cached is None:
        _log_stats(stats)
    return dd, stats


SOURCES: dict[str, Source] = {
    "manpages": Source(
        description="installed English manual pages: name, section, NAME line, summary, DESCRIPTION text",
        default_root="/usr/share/man",
        columns=("name", "section", "name_line", "summary", "description"),
        split_key=_manpage_key,
        inventory=_manpages_inventory,
        build=_manpages_build,
    ),
    "manpages-chat": Source(
        description="conversations about the manual pages (what does X do? -> NAME summary; more -> DESCRIPTION)",
        default_root="/usr/share/man",
        columns=("name", "section", "messages"),
        split_key=_manpage_key,  # a page's conversation lands in the page's own split
        inventory=_manpages_inventory,
        build=_manpages_chat_build,
        features={"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]},
    ),
    "gettext": Source(
        description="English -> <lang> message pairs from the installed gettext catalogs",
        default_root="/usr/share/locale",
        columns=("en", "{lang}", "domain", "context"),
        split_key=operator.itemgetter("en"),
        inventory=_gettext_inventory,
        build=_gettext_build,
    ),
    "debian-packages": Source(
        description="Debian packages: name, one-line synopsis, section, debtags",
        default_root=None,
        columns=("package", "synopsis", "section", "tags"),
        split_key=operator.itemgetter("package"),
        inventory=_debian_inventory,
        build=_debian_build,
    ),
}
