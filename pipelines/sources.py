"""Built-in offline corpora read from the host: manual pages, gettext catalogs and the apt package list.

Every source becomes a `datasets.DatasetDict` with "train", "validation" and "test". A row's split comes from a
hash of a stable key (page name + section, the English text, the package name), so it never moves when other rows
come or go, and rows are sorted by that key so `fingerprint` is stable across processes and runs.

Parsing ~20k manual pages takes a while, so each source's result is cached under `$TUNEFORGE_CACHE/sources/`
(default `~/.cache/tuneforge/sources/`), keyed by the list of input files with their sizes and mtimes plus
`PARSER_VERSION`; bump `PARSER_VERSION` whenever a change to the parsing changes rows.

Decisions worth knowing:
    - manpages: English pages only (`man[1-9]*/`, never `<lang>/man*`). Symlinked aliases and `.so` redirect pages
      are skipped (they repeat another page). `name` and `section` come from the file name (`ls.1.gz`), the
      NAME line and DESCRIPTION text from a small roff (man and mdoc) to plain-text converter that honours
      `.nf`/`.fi` (example blocks keep their lines) and turns `.TP`/`.IP` tags into their own lines.
    - manpages-chat: the same pages as two-exchange conversations (`messages`, see `manpage_conversation`), each
      in its page's split.
    - gettext: plural entries give two pairs, msgid -> msgstr[0] and msgid_plural -> msgstr[1]; that is the
      singular/plural pairing for German-like languages and only approximate for languages with other plural
      rules (e.g. Polish msgstr[1] is the 2-4 form). Languages with a single plural form give only the first.
      GTK-style mnemonics ("_Open" / "Ö_ffnen") are removed only when the English has exactly one underscore at
      the start of a word and the translation has exactly one underscore, so identifiers such as `wal_level`
      or `KP_Up` survive. "&" is never stripped: in the catalogs here it is literal ("Audio & Video", "AT&T").
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import gzip
import hashlib
import json
import logging
import operator
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import datasets

from pipelines.errors import TuneforgeError

logger = logging.getLogger(__name__)

# Bump when parsing changes what rows come out, so stale caches are not reused.
PARSER_VERSION = 2
SPLITS = ("train", "validation", "test")
# Per-mille buckets of sha256(key): [0, 50) test, [50, 100) validation, the rest train.
_TEST_PER_MILLE = 50
_VALIDATION_PER_MILLE = 100
DESCRIPTION_MAX_CHARS = 2000


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
        build: (root, lang, inventory) -> (rows, stats).
        features: `datasets` feature types of the columns that are not plain strings (e.g. a `messages` list).
    """

    description: str
    default_root: str | None
    columns: tuple[str, ...]
    split_key: Callable[[dict], str]
    inventory: Callable[[Path | None, str], list[tuple]]
    build: Callable[[Path | None, str, list[tuple]], tuple[list[dict], dict]]
    features: dict[str, object] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


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


def load_source(name: str, *, lang: str = "de", root: str | Path | None = None) -> datasets.DatasetDict:
    """Load a built-in corpus from the host (or from the cache of an earlier load).

    Args:
        name: one of `SOURCES` ("manpages", "manpages-chat", "gettext", "debian-packages").
        lang: target language for "gettext" (the exact directory name under /usr/share/locale, e.g. "de";
            "de" never includes "de_AT"); ignored by the other sources.
        root: overrides the host location: the man tree (/usr/share/man), the locale tree (/usr/share/locale)
            or, for "debian-packages", a file holding `apt-cache dumpavail` output.

    Returns:
        DatasetDict with "train", "validation" and "test", rows sorted by their split key.

    Raises:
        TuneforgeError: unknown name (with a did-you-mean), or the host lacks the source (with how to get it).
    """
    dd, _ = _load(name, lang, root)
    return dd


def source_stats(name: str, *, lang: str = "de", root: str | Path | None = None) -> dict:
    """What loading a source read, kept and skipped (builds it if it is not cached yet).

    Args:
        name: a built-in source name.
        lang: as for `load_source`.
        root: as for `load_source`.

    Returns:
        {"source", "read", "kept", "skipped": {reason: count}, "splits": {split: rows}}; read == kept + skipped.

    Raises:
        TuneforgeError: as `load_source`.
    """
    _, stats = _load(name, lang, root)
    return stats


# --------------------------------------------------------------------------------------------------------------
# Registry, caching and split assembly
# --------------------------------------------------------------------------------------------------------------


def _source(name: str) -> Source:
    """The registry entry for `name`, or a TuneforgeError with a did-you-mean."""
    if name in SOURCES:
        return SOURCES[name]
    close = difflib.get_close_matches(name, list(SOURCES), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(SOURCES)
    raise TuneforgeError(f"data.source: {name!r} is not a built-in source; {hint}built-in sources: {known}")


def _cache_root() -> Path:
    """$TUNEFORGE_CACHE/sources, else $XDG_CACHE_HOME/tuneforge/sources, else ~/.cache/tuneforge/sources."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser() / "sources"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuneforge" / "sources"


def _load(name: str, lang: str, root: str | Path | None) -> tuple[datasets.DatasetDict, dict]:
    """Load from the cache, or build, cache and return (dataset, stats)."""
    source = _source(name)
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
    columns = tuple(c.format(lang=lang) for c in source.columns)
    cached = _read_cache(path)
    if cached is not None:
        rows, stats = cached
    else:
        rows, stats = source.build(root_path, lang, inventory)
    # The cache holds the parsed rows, not Arrow files: splitting and sorting ~60k rows takes a fraction of a
    # second, and the cached and the fresh result then come from the same code.
    dd = _assemble(rows, columns, source.split_key, source.features)
    if cached is None:
        stats = {"source": name, **stats, "splits": {s: len(dd[s]) for s in SPLITS}}
        _log_stats(stats)
        _write_cache(path, rows, stats)
    return dd, stats


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


# --------------------------------------------------------------------------------------------------------------
# roff -> plain text (man and mdoc macros), for the manpages source
# --------------------------------------------------------------------------------------------------------------

# Special characters: \(xx, \[xx] and \C'xx'. Unknown ones become "".
_SPECIALS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "pl": "+", "mu": "\u00d7", "di": "\u00f7", "eq": "=",
    "bu": "\u2022", "ci": "\u25cb", "sq": "\u25a1", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d",
    "oq": "\u2018", "cq": "\u2019", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a",
    "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "de": "\u00b0", "ps": "\u00b6", "sc": "\u00a7",
    ">=": "\u2265", "<=": "\u2264", "!=": "\u2260", "==": "\u2261", "->": "\u2192", "<-": "\u2190",
    "<>": "\u2194", "ua": "\u2191", "da": "\u2193", "rs": "\\", "sl": "/", "ha": "^", "ti": "~", "ga": "`",
    "aa": "\u00b4", "ba": "|", "br": "|", "or": "|", "ul": "_", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
    "la": "\u27e8", "ra": "\u27e9", "+-": "\u00b1", "12": "\u00bd", "14": "\u00bc", "34": "\u00be",
    "*a": "\u03b1", "*b": "\u03b2", "*m": "\u03bc", "*p": "\u03c0", "if": "\u221e", "Do": "$", "Eu": "\u20ac",
    "ss": "\u00df", ":a": "\u00e4", ":o": "\u00f6", ":u": "\u00fc", ":A": "\u00c4", ":O": "\u00d6", ":U": "\u00dc",
    "'e": "\u00e9", "`e": "\u00e8", "'a": "\u00e1", "`a": "\u00e0", "~n": "\u00f1", ",c": "\u00e7",
    "nb": "\u2284", "mo": "\u2208", "at": "@", "sh": "#", "dg": "\u2020", "OK": "\u2713", "pc": "\u00b7",
}
# Predefined strings (\*x, \*(xx, \*[name]); pod2man's preamble defines these inside nroff/troff conditionals.
_DEFAULT_STRINGS = {
    "Aq": "'", 'L"': '"', 'R"': '"', "C`": '"', "C'": '"', "C+": "C++", "--": "--", "PI": "pi",
    "lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122", "S": "", "N": "", "Ba": "|",
}
# One regex for every escape we understand; the replacement function decides what each becomes.
_ESCAPE = re.compile(
    r"""\\(?:
        (?P<font>[fF](?:\[[^\]]*\]|\(..|.))                      # \fB \f(CW \f[CR] -> nothing
      | (?P<special>\((?P<sp2>..)|\[(?P<spn>[^\]]*)\]|C'(?P<spc>[^']*)')  # \(em \[em] \C'em'
      | \*(?P<string>\[[^\]]*\]|\(..|.)                           # \*(Aq string registers
      | n[+-]?(?:\[[^\]]*\]|\(..|.)                               # \n(.g number registers -> nothing
      | s(?:[+-]?\d|\(\d\d|\[[^\]]*\]|'[^']*')                   # \s-1 size changes -> nothing
      | [hvwlLDoXZbxkSNR](?P<q>['"|]).*?(?P=q)                   # \h'..' \w'..' motions etc. -> nothing
      | [mMgY](?:\[[^\]]*\]|\(..|.)                               # colours, format of registers -> nothing
      | \$(?:\d|\*|@)                                             # macro arguments -> nothing
      | (?P<simple>.)                                             # \- \e \& \| \  ...
    )""",
    re.VERBOSE,
)
_SIMPLE = {
    "-": "-", "e": "\\", "E": "\\", "\\": "\\", ".": ".", "'": "\u00b4", "`": "`", " ": " ", "~": " ", "0": " ",
    "_": "_", "t": "\t", "%": "", "&": "", "|": "", "^": "", ",": "", "/": "", ":": "", "c": "", "d": "", "u": "",
    "p": "", "z": "", "a": "", "r": "", "{": "", "}": "", "!": "", "?": "",
}
_WS = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?][)\"'\u201d]?(?=\s)")
# ".so man3/foo.3" at the top of a page that only redirects to another page.
_SO_REQUEST = re.compile(r"^\.\s*so\s+\S", re.MULTILINE)


def _unescape(text: str, strings: dict[str, str]) -> str:
    """Replace roff escapes in one line of text by plain characters (fonts and motions vanish).

    Args:
        text: a line after comment removal.
        strings: string registers defined so far (`.ds`), used for `\\*x`.

    Returns:
        The line as plain text.
    """
    if "\\" not in text:
        return text

    def replace(m: re.Match) -> str:
        if m.group("font") is not None:
            return ""
        if m.group("special") is not None:
            name = m.group("sp2") or m.group("spn") or m.group("spc") or ""
            if name.startswith("u") and len(name) >= 5:  # \[u00E9] Unicode code points.
                try:
                    return "".join(chr(int(part, 16)) for part in name[1:].split("_"))
                except ValueError:
                    return ""
            return _SPECIALS.get(name, "")
        if m.group("string") is not None:
            ref = m.group("string")
            ref = ref[1:-1] if ref.startswith("[") else ref[1:] if ref.startswith("(") else ref
            return strings.get(ref, "")
        if m.group("simple") is not None:
            return _SIMPLE.get(m.group("simple"), m.group("simple"))
        return ""

    return _ESCAPE.sub(replace, text)


def _strip_comment(line: str) -> str:
    r"""Drop a `\"` or `\#` comment (but not an escaped backslash followed by a quote, `\\"`)."""
    i = line.find("\\")
    while i != -1 and i + 1 < len(line):
        nxt = line[i + 1]
        if nxt in "\"#":
            return line[:i]
        i = line.find("\\", i + 2)
    return line


def _split_args(rest: str) -> list[str]:
    """Split request arguments on blanks, honouring double quotes ("" inside quotes is a literal quote) and `\\ `."""
    args, i, n = [], 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest[i] == '"':
            i += 1
            buf = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and rest[j] not in " \t":
                j += 2 if rest[j] == "\\" else 1  # "\ " is an escaped space inside the argument.
            j = min(j, n)
            args.append(rest[i:j])
            i = j
    return args


class _TextSink:
    """Collects converted text as paragraphs; fill mode joins input lines with spaces, no-fill keeps them.

    Attributes:
        size: characters collected so far (lets the caller stop early once the cap is reached).
    """

    def __init__(self) -> None:
        self.paragraphs: list[str] = []
        self._parts: list[str] = []  # Alternating text and separators of the current paragraph.
        self.fill = True
        self.size = 0
        self.break_after_next = False  # Set by .TP: the next line is a tag and ends its own line.

    def text(self, line: str) -> None:
        """Add one input line of text (already unescaped)."""
        if self.fill:
            line = _WS.sub(" ", line).strip()
            if not line:
                return
        else:
            line = line.rstrip()
        if self._parts and self._parts[-1] not in ("\n",):
            self._parts.append(" " if self.fill else "\n")
        self._parts.append(line)
        self.size += len(line) + 1
        if self.break_after_next:
            self.break_after_next = False
            self.line_break()

    def line_break(self) -> None:
        """End the current output line (.br, a .TP tag)."""
        if self._parts and self._parts[-1] != "\n":
            self._parts.append("\n")

    def paragraph(self) -> None:
        """End the current paragraph (.PP, .SS, blank line ...)."""
        text = "".join(self._parts).strip("\n")
        if text.strip():
            self.paragraphs.append(text)
        self._parts = []

    def result(self) -> str:
        """All paragraphs separated by blank lines."""
        self.paragraph()
        return "\n\n".join(self.paragraphs)


# Requests that end a paragraph, that switch fill mode, or that print their arguments.
_PARAGRAPH_REQUESTS = {"PP", "P", "LP", "sp", "Sp", "HP", "PD0", "Pp", "Lp", "Sh", "Ss", "Bl", "El", "Bd", "Ed"}
_NOFILL_ON = {"nf", "EX", "Vb", "Bd"}
_NOFILL_OFF = {"fi", "EE", "Ve", "Ed"}
_FONT_SPACED = {"B", "I", "SM", "SB"}
_FONT_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
# mdoc macros whose name is dropped while their arguments are printed (when called inline).
_MDOC_CALLABLE = {
    "Ad", "Ar", "Cm", "Dv", "Em", "Er", "Ev", "Fa", "Fn", "Ft", "Ic", "Li", "Ms", "Pa", "Sy", "Tn", "Va", "Vt",
    "Xr", "Fl", "Nm", "Op", "Oo", "Oc", "Dq", "Do", "Dc", "Sq", "So", "Sc", "Qq", "Qo", "Qc", "Pq", "Po", "Pc",
    "Bq", "Bo", "Bc", "Brq", "Bro", "Brc", "Aq", "Ao", "Ac", "Ql", "No", "Ns", "Pf", "Ux", "Bx", "At", "Mt",
    "Lk", "Cd", "In", "Lb", "Ot", "St", "Fx", "Nx", "Ox", "Dx", "Xo", "Xc", "Sx", "An", "Ta",
}
_MDOC_QUOTES = {
    "Dq": ("\u201c", "\u201d"), "Sq": ("\u2018", "\u2019"), "Qq": ('"', '"'), "Pq": ("(", ")"), "Op": ("[", "]"),
    "Bq": ("[", "]"), "Brq": ("{", "}"), "Aq": ("<", ">"), "Ql": ("\u2018", "\u2019"),
}
_CLOSING_PUNCT = {".", ",", ";", ":", "?", "!", ")", "]"}


def _mdoc_line(macro: str, args: list[str], page_name: str) -> str:
    """Render one mdoc macro line (`.Fl a Ar file ,`) as text; nested callable macros are rendered too."""
    out: list[str] = []
    no_space = False
    closers: list[str] = []
    tokens = [macro, *args]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok in _MDOC_CALLABLE:
            if tok == "Ns":
                no_space = True
            elif tok == "Fl":
                flag = "-" + (tokens[i] if i < len(tokens) and tokens[i] not in _MDOC_CALLABLE else "")
                i += 1 if flag != "-" else 0
                out.append(("" if no_space or not out else " ") + flag)
                no_space = False
            elif tok == "Xr" and i + 1 < len(tokens):
                out.append(("" if not out else " ") + f"{tokens[i]}({tokens[i + 1]})")
                i += 2
            elif tok == "Nm" and (i >= len(tokens) or tokens[i] in _MDOC_CALLABLE or tokens[i] in _CLOSING_PUNCT):
                out.append(("" if not out else " ") + page_name)
            elif tok in _MDOC_QUOTES:
                left, right = _MDOC_QUOTES[tok]
                out.append(("" if not out else " ") + left)
                no_space = True
                closers.append(right)
            continue
        sep = "" if no_space or not out or tok in _CLOSING_PUNCT else " "
        out.append(sep + tok)
        no_space = False
    return "".join(out) + "".join(reversed(closers))


@dataclasses.dataclass
class _RoffState:
    """Interpreter state that survives across lines: strings, skipped blocks, conditionals."""

    strings: dict[str, str] = dataclasses.field(default_factory=lambda: dict(_DEFAULT_STRINGS))
    skip_until: str | None = None  # Request that ends a skipped block: "." (the "..") after .de/.ig, EN, PE.
    brace_skip: int = 0  # Depth of a false conditional's \{ ... \} block being skipped.
    last_ie: bool = True  # Outcome of the last .ie, for its .el.
    table_format: bool = False  # Inside .TS before the format lines end with ".".


def _condition(cond: str) -> bool:
    """Evaluate a conditional simplistically: we are nroff; anything else (registers, comparisons) is false."""
    negate = cond.startswith("!")
    cond = cond[1:] if negate else cond
    value = cond == "n"
    return value != negate


def _control_line(line: str, state: _RoffState) -> tuple[str, list[str], str] | None:
    """Split a request line into (name, args, raw rest) after resolving conditionals; None when nothing to do."""
    body = line[1:].lstrip()
    if not body or body.startswith(('\\"', "\\#")):
        return None
    body = _strip_comment(body)
    name, _, rest = body.partition(" ")
    if "\t" in name:
        name, _, more = name.partition("\t")
        rest = more + " " + rest
    if name in ("if", "ie", "el", "while"):
        if name == "el":
            taken, tail = not state.last_ie, rest.strip()
        else:
            cond, _, tail = rest.strip().partition(" ")
            taken = _condition(cond)
            if name == "ie":
                state.last_ie = taken
        tail = tail.strip()
        opens = tail.startswith("\\{")
        tail = tail[2:].strip() if opens else tail
        if not taken:
            state.brace_skip = 1 if opens and "\\}" not in tail else 0
            return None
        tail = tail.replace("\\}", "").strip()
        if not tail or not tail.startswith((".", "'")):
            return ("#text", [tail], tail) if tail else None
        return _control_line(tail, state)
    return name, _split_args(rest), rest


def _roff_to_text(lines: Iterable[str], page_name: str, max_chars: int) -> str:
    """Convert the lines of one man page section (man or mdoc macros) to plain text.

    Args:
        lines: the section's raw lines, without the heading.
        page_name: substituted for mdoc's bare `.Nm`.
        max_chars: stop converting once this much text is collected (the caller trims to a boundary).

    Returns:
        Paragraphs separated by blank lines; inside a paragraph, filled text on one line, no-fill text as is.
    """
    state = _RoffState()
    sink = _TextSink()
    for raw in lines:
        if sink.size > max_chars:
            break
        _roff_line(raw, state, sink, page_name)
    return sink.result()


def _roff_line(raw: str, state: _RoffState, sink: _TextSink, page_name: str) -> None:
    """Interpret one input line: skip blocks, run a request, or add text to the sink."""
    if state.brace_skip:
        state.brace_skip += raw.count("\\{") - raw.count("\\}")
        state.brace_skip = max(state.brace_skip, 0)
        return
    if state.skip_until is not None:
        if _request_name(raw) == state.skip_until:
            state.skip_until = None
        return
    if state.table_format:
        state.table_format = not raw.rstrip().endswith(".")
        return
    if raw.startswith((".", "'")):
        parsed = _control_line(raw, state)
        if parsed is None:
            return
        name, args, rest = parsed
        if name == "#text":
            sink.text(_unescape(_strip_comment(args[0]), state.strings))
            return
        _request(name, args, rest, state, sink, page_name)
        return
    text = _strip_comment(raw)
    if not text.strip():
        if sink.fill and raw.strip() == "":
            sink.paragraph()  # A blank input line is a paragraph break in fill mode.
        elif not sink.fill:
            sink.text("")
        return
    sink.text(_unescape(text.replace("\t", " ") if sink.fill else text.expandtabs(8), state.strings))


def _request(name: str, args: list[str], rest: str, state: _RoffState, sink: _TextSink, page_name: str) -> None:
    """Run one request or macro (man or mdoc) against the sink."""
    if name in ("de", "de1", "am", "ig"):
        state.skip_until = "."
    elif name in ("EQ", "PS"):
        state.skip_until = "EN" if name == "EQ" else "PE"
    elif name == "TS":
        sink.paragraph()
        state.table_format = True
        sink.fill = False
    elif name == "TE":
        sink.paragraph()
        sink.fill = True
    elif name == "ds" and args:
        state.strings[args[0]] = _unescape(rest.partition(" ")[2].lstrip().removeprefix('"'), state.strings)
    elif name in _NOFILL_ON:
        sink.paragraph()
        sink.fill = False
    elif name in _NOFILL_OFF:
        sink.paragraph()
        sink.fill = True
    elif name in ("SH", "SS", "Ss"):
        sink.paragraph()
        sink.text(_unescape(" ".join(args), state.strings))
        sink.paragraph()
    elif name in ("TP", "TQ"):
        if name == "TP":
            sink.paragraph()
        else:
            sink.line_break()
        sink.break_after_next = True
    elif name in ("IP", "It"):
        sink.paragraph()
        tag = _mdoc_line("No", args, page_name) if name == "It" else (args[0] if args else "")
        if tag:
            sink.text(_unescape(tag, state.strings))
            sink.line_break()
    elif name in _PARAGRAPH_REQUESTS:
        sink.paragraph()
    elif name == "br":
        sink.line_break()
    elif name in _FONT_ALTERNATING:
        sink.text(_unescape("".join(args), state.strings))
    elif name in _FONT_SPACED:
        sink.text(_unescape(" ".join(args), state.strings))
    elif name == "Nd":  # mdoc's NAME description: ".Nm ls" ".Nd list directory contents".
        sink.text("- " + _unescape(_mdoc_line("No", args, page_name), state.strings))
    elif name in _MDOC_CALLABLE or name in ("Dl", "D1"):
        sink.text(_unescape(_mdoc_line("No" if name in ("Dl", "D1") else name, args, page_name), state.strings))
    # Everything else (.TH .RS .RE .IX .ad .nh .ft .in .UR .UE ...) changes layout only: ignore it.


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """The raw lines of the first NAME and DESCRIPTION sections (man `.SH` or mdoc `.Sh`).

    Macro definitions (`.de ... ..`) are skipped so a `.SH` inside a definition is not mistaken for a heading.
    """
    wanted: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_definition = False
    pending_heading = False
    for line in lines:
        if in_definition:
            in_definition = _request_name(line) != "."  # ".." (or ".  .") ends a definition.
            continue
        req = _request_name(line)
        if req is not None:
            head = line[1:].lstrip()
            if req in ("de", "de1", "am", "ig"):
                in_definition = True
                continue
            if req in ("SH", "Sh"):
                title = _heading(head[len(req):])
                pending_heading = not title
                current = _open_section(wanted, title)
                continue
        if pending_heading:  # Old style: ".SH" alone, the title on the next line.
            pending_heading = False
            current = _open_section(wanted, _heading(line))
            continue
        if current is not None:
            current.append(line)
    return wanted


def _request_name(line: str) -> str | None:
    """The request name of a control line (".SH x" -> "SH", "..", ".  ." -> "."), None for a text line."""
    if not line.startswith((".", "'")):
        return None
    body = line[1:].lstrip(" \t")
    return body.split(None, 1)[0] if body.strip() else ""


def _heading(text: str) -> str:
    """A section title normalised for matching: unescaped, unquoted, upper case, single spaces."""
    return _WS.sub(" ", _unescape(_strip_comment(text), {}).replace('"', "")).strip().upper()


def _open_section(wanted: dict[str, list[str]], title: str) -> list[str] | None:
    """Start collecting a NAME or DESCRIPTION section (first occurrence only); None for other sections."""
    if title in ("NAME", "DESCRIPTION") and title not in wanted:
        wanted[title] = []
        return wanted[title]
    return None


def _join_continuations(text: str) -> list[str]:
    """Split into lines, joining a line that ends in an unescaped backslash with the next one."""
    lines = text.split("\n")
    if "\\\n" not in text:
        return lines
    out: list[str] = []
    buf = ""
    for line in lines:
        stripped = line.rstrip("\\")
        if (len(line) - len(stripped)) % 2 == 1:
            buf += line[:-1]
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


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
    sections = _sections(_join_continuations(text.replace("\r\n", "\n")))
    if "NAME" not in sections:
        return None, "redirect pages (.so)" if _SO_REQUEST.search(text[:4096]) else "pages without NAME"
    name_line = _WS.sub(" ", _roff_to_text(sections["NAME"], page_name, 4000)).strip()
    summary = _split_name_line(name_line)
    if summary is None:
        return None, "pages without a 'name - summary' NAME line"
    if "DESCRIPTION" not in sections:
        return None, "pages without DESCRIPTION"
    description = _cap_text(_roff_to_text(sections["DESCRIPTION"], page_name, DESCRIPTION_MAX_CHARS + 1000))
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


# --------------------------------------------------------------------------------------------------------------
# Source: manpages
# --------------------------------------------------------------------------------------------------------------


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
    """Parse every page (in a process pool when there are many) into rows; dedupe name + section."""
    skipped: Counter = Counter()
    pages = []
    for rel, _size, _mtime, is_link in inventory:
        if is_link:
            skipped["symlinked aliases"] += 1  # e.g. man1/zstdmt.1.gz -> zstd.1.gz: the same page again.
        else:
            pages.append(rel)
    # One process is enough (~7 s for 20k pages on this host). A pool would need fork (unsafe once torch threads
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
    return rows, _stats(len(inventory), len(rows), skipped)


# Chat answers stay short enough that a whole conversation fits a 256-token window of the tiny GPT's BPE.
CHAT_DETAIL_MAX_CHARS = 500
# What a page documents, by the first character of its section (man-pages(7) section names).
_SECTION_QUESTIONS = {
    "1": "What does the {name} command do?",
    "2": "What does the {name} system call do?",
    "3": "What does the {name} function do?",
    "4": "What is the {name} device?",
    "5": "What is the {name} file format?",
    "6": "What does the {name} game do?",
    "7": "What is {name}?",
    "8": "What does the {name} command do?",
}


def manpage_conversation(page: dict) -> list[dict]:
    """A two-exchange chat about one man page, in the standard `messages` format.

    The user asks what the page's subject does and the assistant answers with the NAME line's summary as a
    sentence; the user asks for more and the assistant answers with the start of the DESCRIPTION (at most
    `CHAT_DETAIL_MAX_CHARS`, cut at a paragraph, sentence or word boundary). No system message: recipes add one
    with `chat.system_prompt`.

    Args:
        page: a `manpages` row (name, section, summary, description).

    Returns:
        [user, assistant, user, assistant] as {"role", "content"} dicts.
    """
    name, section = page["name"], page["section"]
    if section.startswith("3") and section.endswith(("pm", "perl")):
        question = f"What does the {name} Perl module do?"
    else:
        question = _SECTION_QUESTIONS.get(section[:1], "What is {name}(" + section + ")?").format(name=name)
    summary = page["summary"][:1].upper() + page["summary"][1:]
    summary += "" if summary.endswith((".", "!", "?")) else "."
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": summary},
        {"role": "user", "content": f"Tell me more about {name}."},
        {"role": "assistant", "content": _cap_text(page["description"], CHAT_DETAIL_MAX_CHARS)},
    ]


def _manpages_chat_build(root: Path, lang: str, inventory: list[tuple]) -> tuple[list[dict], dict]:
    """The manpages rows turned into conversations; same pages, keys and skip counts as `manpages`."""
    pages, stats = _manpages_build(root, lang, inventory)
    rows = [{"name": p["name"], "section": p["section"], "messages": manpage_conversation(p)} for p in pages]
    return rows, stats


# --------------------------------------------------------------------------------------------------------------
# Source: gettext
# --------------------------------------------------------------------------------------------------------------

_MO_MAGIC = 0x950412DE
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z0-9]{2,4})?(?:@[A-Za-z0-9]+)?$")
# printf conversions (%s, %1$-10lu, %%, %.*s), Python/brace fields ({0}, {name}) and $VAR / ${VAR}.
_FORMAT_SPEC = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?[diouxXeEfFgGaAcspnm%]"
    r"|%\([^)]*\)[a-z]|\{[\w.]*\}|\$\{?\w+\}?|%<\w+>"
)
_MNEMONIC = re.compile(r"_(?=\w)")


def _check_lang(lang: str) -> None:
    """Reject language codes that are not a locale directory name (and English, the source side)."""
    if not isinstance(lang, str) or not _LANG_RE.match(lang):
        raise TuneforgeError(f"data.params.lang: {lang!r} is not a language code; use e.g. 'de', 'fr' or 'pt_BR'")
    if lang == "en" or lang.startswith("en_"):
        raise TuneforgeError(f"data.params.lang: {lang!r} is English, the source side of gettext; use e.g. 'de'")


def read_mo(data: bytes) -> list[tuple[str, str, str, list[str]]]:
    """Parse a GNU .mo catalog (either byte order) into (context, msgid, msgid_plural, msgstrs) entries.

    The header entry (empty msgid) is returned too; its Content-Type charset decodes all other strings.

    Args:
        data: the whole .mo file.

    Returns:
        Entries in file order (sorted by msgid bytes, as msgfmt writes them).

    Raises:
        ValueError: not a .mo file, an unknown major revision, a table pointing outside the file, or an unknown
            charset.
    """
    if len(data) < 20:
        raise ValueError("too short for a .mo header")
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] == _MO_MAGIC:
            break
    else:
        raise ValueError("bad magic number")
    revision, count, orig_offset, trans_offset = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 not in (0, 1):
        raise ValueError(f"unknown major revision {revision >> 16}")
    pairs = []
    for i in range(count):
        olen, ooff = struct.unpack_from(order + "2I", data, orig_offset + 8 * i)
        tlen, toff = struct.unpack_from(order + "2I", data, trans_offset + 8 * i)
        if ooff + olen > len(data) or toff + tlen > len(data):
            raise ValueError("string table points outside the file")
        pairs.append((data[ooff : ooff + olen], data[toff : toff + tlen]))
    charset = "utf-8"
    for msgid, msgstr in pairs:
        if msgid == b"":
            match = re.search(rb"charset=([A-Za-z0-9_.:-]+)", msgstr)
            if match and match.group(1).upper() != b"CHARSET":
                charset = match.group(1).decode("ascii")
    try:
        codecs.lookup(charset)
    except LookupError as err:
        raise ValueError(f"unknown charset {charset!r}") from err
    entries = []
    for msgid, msgstr in pairs:
        context, _, ident = msgid.rpartition(b"\x04")
        singular, _, plural = ident.partition(b"\x00")
        entries.append((
            context.decode(charset, "replace"),
            singular.decode(charset, "replace"),
            plural.decode(charset, "replace"),
            [s.decode(charset, "replace") for s in msgstr.split(b"\x00")],
        ))
    return entries


def _strip_mnemonics(en: str, target: str) -> tuple[str, str]:
    """Remove GTK mnemonic underscores ("_Open" / "Ö_ffnen") when both sides clearly carry one (see module doc)."""
    marks = _MNEMONIC.findall(en)
    if len(marks) != 1 or en.count("_") != 1 or target.count("_") != 1 or not _MNEMONIC.search(target):
        return en, target
    at = en.index("_")
    if at > 0 and not en[at - 1].isspace():
        return en, target  # Mid-word ("wal_level", "KP_Up") is far more often an identifier than a mnemonic.
    return en.replace("_", "", 1), target.replace("_", "", 1)


def _pair_problem(en: str, target: str) -> str | None:
    """Why an (English, translation) pair is unusable, or None when it is fine."""
    if not target:
        return "empty translations"
    if not any(ch.isalpha() for ch in _FORMAT_SPEC.sub("", en)):
        return "format/punctuation-only entries"
    if target == en:
        return "untranslated entries (same as English)"
    return None


def _catalog_pairs(entries: list[tuple[str, str, str, list[str]]]) -> Iterable[tuple[str, str, str] | str]:
    """Yield (context, en, target) pairs, or a skip reason for every entry or plural form not used."""
    for context, singular, plural, msgstrs in entries:
        if not singular and not context:
            yield "header entries"
            continue
        forms = [(singular, msgstrs[0])]
        if plural:
            if len(msgstrs) > 1:
                forms.append((plural, msgstrs[1]))  # msgstr[1] is the plural for German-like plural rules.
            else:
                yield "plural forms without a second translation"
        for en, target in forms:
            en, target = _WS.sub(" ", en).strip(), _WS.sub(" ", target).strip()
            en, target = _strip_mnemonics(en, target)
            problem = _pair_problem(en, target)
            yield problem if problem else (context, en, target)


def _available_languages(root: Path) -> list[str]:
    """Locale directories under root that hold at least one .mo catalog."""
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/LC_MESSAGES") if any(p.glob("*.mo")))


def _gettext_inventory(root: Path | None, lang: str) -> list[tuple]:
    """Every `<lang>/LC_MESSAGES/*.mo` under root (exactly `lang`, not its regional variants), sorted.

    Raises:
        TuneforgeError: no catalogs for this language (listing some available ones).
    """
    folder = root / lang / "LC_MESSAGES"
    files = [_file_identity(p, root) for p in sorted(folder.glob("*.mo"))] if folder.is_dir() else []
    if files:
        return files
    available = _available_languages(root)
    listed = ", ".join(available[:30]) + (f" ... ({len(available)} in all)" if len(available) > 30 else "")
    have = f"catalogs exist for: {listed}" if available else f"no catalogs at all under {str(root)!r}"
    raise TuneforgeError(
        f"data.params.lang: no gettext catalogs for {lang!r} under {str(folder)!r}; {have}. Choose one of those, "
        "or install packages that ship translations (Ubuntu: `apt-get install language-pack-<lang>`; minimized "
        "images exclude /usr/share/locale in /etc/dpkg/dpkg.cfg.d/, drop that and reinstall the packages)"
    )


def _gettext_build(root: Path, lang: str, inventory: list[tuple]) -> tuple[list[dict], dict]:
    """Read every catalog in sorted order into de-duplicated English -> lang pairs."""
    skipped: Counter = Counter()
    rows: list[dict] = []
    seen: set[str] = set()
    read = 0
    for rel, *_ in inventory:
        path = root / rel
        try:
            entries = read_mo(path.read_bytes())
        except (OSError, ValueError, struct.error) as err:
            logger.warning("gettext: skipping unreadable catalog %s (%s)", path, err)
            read += 1
            skipped["unreadable catalogs"] += 1
            continue
        for item in _catalog_pairs(entries):
            read += 1
            if isinstance(item, str):
                skipped[item] += 1
            elif item[1] in seen:
                skipped["duplicate English texts"] += 1
            else:
                seen.add(item[1])
                rows.append({"en": item[1], lang: item[2], "domain": path.stem, "context": item[0]})
    return rows, _stats(read, len(rows), skipped)


# --------------------------------------------------------------------------------------------------------------
# Source: debian-packages
# --------------------------------------------------------------------------------------------------------------

_APT_STATE = (Path("/var/lib/apt/lists"), Path("/var/lib/dpkg/status"))
_APT_HINT = "run `apt-get update` (as root) so the apt cache lists the archive's packages"


def _debian_inventory(root: Path | None, lang: str) -> list[tuple]:
    """Identity of the package list: the given dumpavail file, or apt's list files and dpkg status.

    Raises:
        TuneforgeError: the file is missing, or apt-cache is not installed.
    """
    if root is not None:
        if not root.is_file():
            raise TuneforgeError(
                f"data.params.root: {str(root)!r} is not a file; give `apt-cache dumpavail > FILE` output"
            )
        st = root.stat()
        return [(str(root.resolve()), st.st_size, st.st_mtime_ns)]
    if shutil.which("apt-cache") is None:
        raise TuneforgeError(
            "data.source: debian-packages needs `apt-cache` (a Debian/Ubuntu host) and it is not installed; "
            "on another host pass params.root: a file with `apt-cache dumpavail` output from a Debian machine"
        )
    files: list[tuple] = []
    for path in _APT_STATE:
        if path.is_file():
            files.append(_file_identity(path, path.parent))
        elif path.is_dir():
            files.extend(_file_identity(p, path) for p in sorted(path.iterdir()) if p.is_file())
    return files


def _dumpavail_text(root: Path | None) -> str:
    """The dumpavail text: read from the given file, or from one `apt-cache dumpavail` run.

    Raises:
        TuneforgeError: apt-cache fails or prints nothing.
    """
    if root is not None:
        text = root.read_text(encoding="utf-8", errors="replace")
        source = str(root)
    else:
        try:
            proc = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise TuneforgeError(f"data.source: `apt-cache dumpavail` failed ({err}); {_APT_HINT}") from err
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip()[-300:]
            raise TuneforgeError(f"data.source: `apt-cache dumpavail` exited {proc.returncode}: {tail}; {_APT_HINT}")
        text = proc.stdout.decode("utf-8", "replace")
        source = "`apt-cache dumpavail`"
    if not text.strip():
        raise TuneforgeError(f"data.source: {source} lists no packages; {_APT_HINT}")
    return text


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Parse deb822 paragraphs; continuation lines (leading blank) are appended to the field, newline-joined."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and last is not None:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields


def _package_row(fields: dict[str, str]) -> dict | str:
    """A row from one stanza, or the reason it is skipped."""
    package = fields.get("Package", "").strip()
    if not package:
        return "stanzas without Package"
    synopsis = fields.get("Description", fields.get("Description-en", "")).split("\n", 1)[0].strip()
    if not synopsis:
        return "packages without Description"
    section = fields.get("Section", "").strip().rsplit("/", 1)[-1]  # "contrib/games" -> "games"
    if not section:
        return "packages without Section"
    tags = [t.strip() for t in fields.get("Tag", "").replace("\n", " ").split(",") if t.strip()]
    return {"package": package, "synopsis": synopsis, "section": section, "tags": ", ".join(tags)}


def _debian_build(root: Path | None, lang: str, inventory: list[tuple]) -> tuple[list[dict], dict]:
    """Parse dumpavail output into one row per package (the first stanza of a package wins)."""
    skipped: Counter = Counter()
    rows: list[dict] = []
    seen: set[str] = set()
    read = 0
    for fields in _deb822_stanzas(_dumpavail_text(root)):
        read += 1
        row = _package_row(fields)
        if isinstance(row, str):
            skipped[row] += 1
        elif row["package"] in seen:
            skipped["duplicate packages"] += 1
        else:
            seen.add(row["package"])
            rows.append(row)
    if not rows:
        raise TuneforgeError(f"data.source: debian-packages found no usable package stanzas; {_APT_HINT}")
    return rows, _stats(read, len(rows), skipped)


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
