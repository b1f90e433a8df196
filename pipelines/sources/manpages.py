"""Source `manpages`: the installed English manual pages, one row per page (NAME line, summary, DESCRIPTION).

English pages only (`man[1-9]*/`, never `<lang>/man*`). Symlinked aliases and `.so` redirect pages are skipped
(they repeat another page). `name` and `section` come from the file name (`ls.1.gz`); the NAME line and the
DESCRIPTION text from the roff converter in `pipelines.sources.roff`. Pages whose DESCRIPTION nearly repeats
another page's (see `pipelines.sources.near_duplicates`) are marked with their representative, and dropped on
load unless the recipe keeps them: the host's man tree is mostly generated `gcloud` pages, many of them the GA,
beta and alpha copies of one command, and a model trained on them learns that boilerplate.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

from pipelines.errors import TuneforgeError
from pipelines.sources.near_duplicates import find_near_duplicates
from pipelines.sources.record import DUPLICATE_OF, _file_identity, _stats
from pipelines.sources.roff import _WS, join_continuations, man_sections, roff_to_text

DESCRIPTION_MAX_CHARS = 2000
_SENTENCE_END = re.compile(r"[.!?][)\"'\u201d]?(?=\s)")
# ".so man3/foo.3" at the top of a page that only redirects to another page.
_SO_REQUEST = re.compile(r"^\.\s*so\s+\S", re.MULTILINE)
_NAME_SEPARATOR = re.compile(r"\s+(?:-{1,2}|\u2014|\u2013)\s+")


def _split_name_line(name_line: str) -> str | None:
    """The summary after the NAME separator (" - "), or None when there is no usable summary."""
    parts = _NAME_SEPARATOR.split(name_line, maxsplit=1)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        return None
    return parts[1].strip()


def _cap_text(text: str, limit: int = DESCRIPTION_MAX_CHARS) -> str:
    """Trim to at most `limit` characters at a paragraph, else sentence, else word boundary in the second half."""
    if len(text) <= limit:
        return text
    window = text[:limit]
    cut = window.rfind("\n\n")
    if cut >= limit // 2:
        return window[:cut].rstrip()
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= limit // 2:
        return window[: ends[-1]].rstrip()
    cut = max(window.rfind(" "), window.rfind("\n"))
    return (window[:cut] if cut >= limit // 2 else window).rstrip()


def parse_man_page(data: bytes, page_name: str) -> tuple[dict | None, str | None]:
    """Extract the NAME line, its summary and the DESCRIPTION text from one (uncompressed) man page.

    Args:
        data: the page source (roff, man or mdoc macros); UTF-8, falling back to Latin-1.
        page_name: the page's name, used for mdoc's bare `.Nm`.

    Returns:
        ({"name_line", "summary", "description"}, None) for a usable page, else (None, skip reason).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # Old pages in ISO-8859-1; Latin-1 never fails.
    sections = man_sections(join_continuations(text.replace("\r\n", "\n")))
    if "NAME" not in sections:
        return None, "redirect pages (.so)" if _SO_REQUEST.search(text[:4096]) else "pages without NAME"
    name_line = _WS.sub(" ", roff_to_text(sections["NAME"], page_name, 4000)).strip()
    summary = _split_name_line(name_line)
    if summary is None:
        return None, "pages without a 'name - summary' NAME line"
    if "DESCRIPTION" not in sections:
        return None, "pages without DESCRIPTION"
    description = _cap_text(roff_to_text(sections["DESCRIPTION"], page_name, DESCRIPTION_MAX_CHARS + 1000))
    if not any(ch.isalpha() for ch in description):
        return None, "pages with an empty DESCRIPTION"
    return {"name_line": name_line, "summary": summary, "description": description}, None


def _parse_man_file(path: str) -> tuple[dict | None, str | None]:
    """Read, gunzip and parse one page."""
    name = _page_name_section(Path(path).name)[0]
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError):
        return None, "unreadable files (bad gzip)"
    return parse_man_page(data, name)


def _page_name_section(filename: str) -> tuple[str, str]:
    """("ls", "1") from "ls.1.gz"; ("Algorithm::Diff", "3pm") from "Algorithm::Diff.3pm.gz"."""
    stem = filename.removesuffix(".gz")
    name, _, section = stem.rpartition(".")
    return (name, section) if name else (stem, "")


def _manpage_key(row: dict) -> str:
    """The split key of a page: name and section, as in "ls(1)"."""
    return f"{row['name']}({row['section']})"




def _manpages_inventory(root: Path | None, lang: str) -> list[tuple]:
    """Every `man[1-9]*/*.gz` under root (English pages only), sorted, with size, mtime and symlink flag.

    Raises:
        TuneforgeError: the tree is missing or holds no pages.
    """
    files: list[tuple] = []
    if root.is_dir():
        for folder in sorted(p for p in root.glob("man[1-9]*") if p.is_dir()):
            files.extend(_file_identity(p, root) for p in sorted(folder.glob("*.gz")))
    if not files:
        raise TuneforgeError(
            f"data.source: manpages needs manual pages under {str(root)!r} (man[1-9]*/*.gz) and found none; "
            "install them with `apt-get install man-db manpages` (on minimized Docker images also drop the "
            "/usr/share/man path-exclude in /etc/dpkg/dpkg.cfg.d/ and reinstall, or run `unminimize`)"
        )
    return files


def _manpages_build(root: Path, lang: str, inventory: list[tuple]) -> tuple[list[dict], dict]:
    """Parse every page into rows; drop repeated name + section; mark near-duplicate pages with DUPLICATE_OF."""
    skipped: Counter = Counter()
    pages = []
    for rel, _size, _mtime, is_link in inventory:
        if is_link:
            skipped["symlinked aliases"] += 1  # e.g. man1/zstdmt.1.gz -> zstd.1.gz: the same page again.
        else:
            pages.append(rel)
    # One process is enough (seconds for the whole man tree). A pool would need fork (unsafe once torch threads
    # exist) or spawn (re-imports the caller's __main__, which breaks unguarded scripts).
    parsed = [_parse_man_file(str(root / rel)) for rel in pages]
    rows: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for rel, (fields, reason) in zip(pages, parsed, strict=True):
        if fields is None:
            skipped[reason] += 1
            continue
        name, section = _page_name_section(Path(rel).name)
        if (name, section) in seen:
            skipped["duplicate name + section"] += 1
            continue
        seen.add((name, section))
        rows.append({"name": name, "section": section, **fields})
    duplicate_of = find_near_duplicates([(_manpage_key(r), r["description"]) for r in rows])
    for row in rows:
        row[DUPLICATE_OF] = duplicate_of.get(_manpage_key(row))
    return rows, _stats(len(inventory), len(rows), skipped)

