"""roff (man and mdoc macros) -> plain text: the NAME and DESCRIPTION sections of a manual page.

A small interpreter rather than `groff -man -Tutf8`: it gives the same DESCRIPTION text on the pages checked
(tests/test_sources.py compares it with groff on a fixed sample of installed pages) at a fraction of groff's cost,
which matters when every installed page is parsed, and it needs no external program. It handles what man pages use
for text: escapes, special characters and string registers, fill (`.fi`) and no-fill (`.nf`, example blocks keep
their lines) modes, `.TP`/`.IP` tags on their own lines, nroff conditionals, macro definitions and tables (skipped
as layout), and mdoc's semantic macros (see `pipelines.sources.mdoc`). Layout-only requests (indents, fonts, adjust
modes) are ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from pipelines.sources.mdoc import _MDOC_CALLABLE, _mdoc_line

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
# tbl: the `tab(x)` option of a table, and the T{ ... T} marks around a text block cell.
_TBL_TAB = re.compile(r"\btab\s*\((.)\)")
_TBL_BLOCK = re.compile(r"^T\}|T\{\s*$")


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


@dataclasses.dataclass
class _RoffState:
    """Interpreter state that survives across lines: strings, skipped blocks, conditionals."""

    strings: dict[str, str] = dataclasses.field(default_factory=lambda: dict(_DEFAULT_STRINGS))
    skip_until: str | None = None  # Request that ends a skipped block: "." (the "..") after .de/.ig, EN, PE.
    brace_skip: int = 0  # Depth of a false conditional's \{ ... \} block being skipped.
    last_ie: bool = True  # Outcome of the last .ie, for its .el.
    table_format: bool = False  # Inside .TS before the format lines end with ".".
    table_tab: str | None = None  # Inside .TS ... .TE: the cell separator (tbl's `tab(@)` option, else a tab).


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


def roff_to_text(lines: Iterable[str], page_name: str, max_chars: int) -> str:
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
        option = _TBL_TAB.search(raw)
        state.table_tab = option.group(1) if option else state.table_tab
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
    if state.table_tab is not None:  # A table row: cells separated by spaces, tbl's T{ ... T} block marks dropped.
        text = _TBL_BLOCK.sub("", text.replace(state.table_tab, " "))
        if not text.strip():
            return
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
        state.table_tab = "\t"
        sink.fill = False
    elif name == "TE":
        state.table_tab = None
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


def man_sections(lines: list[str]) -> dict[str, list[str]]:
    """The raw lines of the first NAME and DESCRIPTION sections (man `.SH` or mdoc `.Sh`).

    Macro definitions (`.de ... ..`) are skipped so a `.SH` inside a definition is not mistaken for a heading.

    Args:
        lines: the page's lines, continuations joined (see `join_continuations`).

    Returns:
        {"NAME": lines, "DESCRIPTION": lines} for the sections the page has, headings excluded.
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


def join_continuations(text: str) -> list[str]:
    """Split into lines, joining a line that ends in an unescaped backslash with the next one.

    Args:
        text: a whole page, "\\n" line ends.

    Returns:
        The page's input lines.
    """
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

