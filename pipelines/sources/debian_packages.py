"""Source `debian-packages`: one row per package of the apt cache (name, synopsis, section, debtags).

The default input is one `apt-cache dumpavail` run, so the rows are what `apt-get update` last fetched; `root`
names a file holding such output instead (for hosts without apt). The first stanza of a package wins.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pipelines.errors import TuneforgeError
from pipelines.sources.record import _file_identity, _stats

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
