"""mdoc (BSD manual page) macro lines rendered as text, for the roff converter in `pipelines.sources.roff`.

mdoc marks up a page's words (`.Fl a Ar file`) instead of its fonts; a line's text is its arguments with the
callable macros' names dropped, quoting macros replaced by their quotes and `Nm` by the page's name.
"""

from __future__ import annotations

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
