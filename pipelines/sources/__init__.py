"""Built-in offline corpora read from the host: manual pages, gettext catalogs and the apt package list.

Every source becomes a `datasets.DatasetDict` with "train", "validation" and "test", split by a hash of each
row's stable key and fingerprinted. The package, one module per concern (names with a leading underscore are
internal to the package):

    record           the Source record, the deterministic split, the fingerprint and the parsed-rows cache
    loader           the SOURCES registry and `load_source` / `source_stats` (cache or build, near-duplicates)
    manpages         source "manpages": English man pages -> NAME line, summary, DESCRIPTION
    manpages_chat    source "manpages-chat": the same pages as two-exchange conversations
    gettext_catalogs source "gettext": English -> <lang> pairs from .mo catalogs (read with polib)
    debian_packages  source "debian-packages": apt's package list
    roff, mdoc       the roff (man and mdoc macros) -> plain text converter
    near_duplicates  the near-duplicate rule (MinHash-LSH candidates, exact Jaccard)
"""

from pipelines.sources.gettext_catalogs import read_mo
from pipelines.sources.loader import NEAR_DUPLICATES, SOURCES, load_source, source_stats
from pipelines.sources.manpages import DESCRIPTION_MAX_CHARS, parse_man_page
from pipelines.sources.manpages_chat import CHAT_DETAIL_MAX_CHARS, manpage_conversation
from pipelines.sources.record import DUPLICATE_OF, PARSER_VERSION, SPLITS, Source, fingerprint, split_for_key

__all__ = [
    "CHAT_DETAIL_MAX_CHARS", "DESCRIPTION_MAX_CHARS", "DUPLICATE_OF", "NEAR_DUPLICATES", "PARSER_VERSION", "SOURCES",
    "SPLITS", "Source", "fingerprint", "load_source", "manpage_conversation", "parse_man_page", "read_mo",
    "source_stats", "split_for_key",
]
