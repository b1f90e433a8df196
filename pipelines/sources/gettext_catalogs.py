"""Source `gettext`: English -> <lang> message pairs from the installed gettext (.mo) catalogs.

Plural entries give two pairs, msgid -> msgstr[0] and msgid_plural -> msgstr[1]; that is the singular/plural
pairing for German-like languages and only approximate for languages with other plural rules (e.g. Polish
msgstr[1] is the 2-4 form). Languages with a single plural form give only the first. GTK-style mnemonics
("_Open" / "Ö_ffnen") are removed only when the English has exactly one underscore at the start of a word and
the translation has exactly one underscore, so identifiers such as `wal_level` or `KP_Up` survive. "&" is never
stripped: in the catalogs here it is literal ("Audio & Video", "AT&T"). The first catalog (sorted by name) that
gives an English text wins.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import polib

from pipelines.errors import TuneforgeError
from pipelines.sources.record import _file_identity, _stats

logger = logging.getLogger("pipelines.sources")
_WS = re.compile(r"\s+")

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
    """Parse a GNU .mo catalog (either byte order) into (context, msgid, msgid_plural, msgstrs) entries, with polib.

    polib decodes the strings with the charset of the catalog's header. Its header (the empty msgid, which polib
    keeps as metadata) comes first, as ("", "", "", [header text]), so callers see every entry of the file.

    Args:
        data: the whole .mo file.

    Returns:
        Entries in file order (sorted by msgid bytes, as msgfmt writes them); msgstrs has one string for a
        singular entry and every plural form, in order, for a plural one.

    Raises:
        ValueError: not a .mo file, an unknown revision, a table pointing outside the file, or an unknown charset.
    """
    if len(data) < 20:
        raise ValueError("too short for a .mo header")
    try:
        catalog = polib.mofile(data)
    except (OSError, UnicodeDecodeError, LookupError, struct.error, IndexError) as err:
        raise ValueError(str(err) or type(err).__name__) from err
    entries = []
    if catalog.metadata:
        entries.append(("", "", "", ["".join(f"{k}: {v}\n" for k, v in catalog.ordered_metadata())]))
    for entry in catalog:
        if entry.msgid_plural:
            msgstrs = [entry.msgstr_plural[k] for k in sorted(entry.msgstr_plural)]
        else:
            msgstrs = [entry.msgstr]
        entries.append((entry.msgctxt or "", entry.msgid, entry.msgid_plural or "", msgstrs))
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
