"""Recipe validation errors in words: one line per problem, with the field, the value and the fix.

pydantic reports where a value failed and why; a user needs the dotted field (`train.max_steps`), the value they
gave, and what to write instead: a did-you-mean for a misspelled key or value, the new place of a moved key, and one
line (not one per member) for a value that matched no member of a union.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel


def format_errors(errors: list[dict], schema: type[BaseModel], moved: dict[tuple, str]) -> list[str]:
    """One message per problem of a failed recipe validation.

    Args:
        errors: pydantic's `ValidationError.errors()`.
        schema: the recipe model (its fields give the did-you-mean candidates).
        moved: old key path (tuple of names) -> its new dotted place, for keys that moved section.

    Returns:
        The messages, in pydantic's order, union members collapsed into one line per field.
    """
    return [_format_error(e, schema, moved) for e in _collapse_unions(errors)]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (a pydantic error location), for did-you-mean suggestions."""
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = _section_class(field.annotation)
    return list(getattr(cls, "model_fields", {}))


def _section_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


_TYPE_TAGS = ("int", "float", "str", "bool", "dict", "list")


def _collapse_unions(errors: list[dict]) -> list[dict]:
    """One error per field for a value that matched no member of a union (pydantic reports one per member)."""
    out: list[dict] = []
    unions: dict[tuple, dict] = {}
    for err in errors:
        loc = err["loc"]
        at = next((i for i, p in enumerate(loc) if isinstance(p, str) and ("[" in p or p in _TYPE_TAGS)), None)
        if at is None:
            out.append(err)
        elif loc[:at] in unions:
            unions[loc[:at]]["members"].append(loc[at])
        else:
            unions[loc[:at]] = {"type": "union", "loc": loc[:at], "input": err.get("input"), "members": [loc[at]]}
            out.append(unions[loc[:at]])
    return out


def _describe_member(tag: str) -> str:
    """pydantic's union member tag in words: "literal['auto']" -> "'auto'", "list[str]" -> "a list of str"."""
    if tag.startswith("literal["):
        return tag[len("literal[") : -1]
    if tag.startswith("list["):
        return f"a list of {tag[len('list[') : -1]}"
    return tag


def _format_error(err: dict, schema: type[BaseModel], moved: dict[tuple, str]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    path = ".".join(str(p) for p in loc) or "recipe"
    value = err.get("input")
    if err["type"] == "extra_forbidden" and tuple(str(p) for p in loc) in moved:
        return f"{path}: moved; did you mean '{moved[tuple(str(p) for p in loc)]}'?"
    if err["type"] == "extra_forbidden":
        known = _fields_at(schema, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f"did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return f"{path}: unknown key. {hint or 'Known keys here: ' + ', '.join(known)}".rstrip()
    if err["type"] == "missing":
        return f"{path}: required, not set"
    if err["type"] == "literal_error" and isinstance(value, str):
        expected = [e.strip().strip("'") for e in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        close = difflib.get_close_matches(value, expected, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "use one of " + ", ".join(expected)
        return f"{path}: unknown value {value!r}; {hint}"
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    if err["type"] == "union":
        return f"{path}: expected {' or '.join(_describe_member(m) for m in err['members'])} (got {shown})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg} (got {shown})"
