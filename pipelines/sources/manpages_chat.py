"""Source `manpages-chat`: the `manpages` pages as two-exchange conversations in the standard `messages` format.

Each conversation keeps its page's name and section, so it lands in its page's split and shares the page's
near-duplicate mark: the chat corpus holds exactly the pages `manpages` holds.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.sources.manpages import _cap_text, _manpages_build
from pipelines.sources.record import DUPLICATE_OF

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
    rows = [
        {"name": p["name"], "section": p["section"], "messages": manpage_conversation(p),
         DUPLICATE_OF: p[DUPLICATE_OF]}
        for p in pages
    ]
    return rows, stats
