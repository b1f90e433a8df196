"""Near-duplicate documents: MinHash-LSH candidates (datasketch), exact Jaccard decision, shortest key kept.

The rule, in full: a document's text is lower-cased and becomes the set of its word 5-grams. Documents are visited
shortest key first (ties alphabetically); a document whose 5-gram Jaccard similarity with an already kept document
is at least `THRESHOLD` is a near-duplicate of the first such document visited, otherwise it is kept. Shortest first
because the shortest name is usually the canonical page: `ls(1)` rather than `dir(1)`,
`gcloud_compute_instances_create(1)` rather than its `gcloud_beta_...` copy. The text is not otherwise normalised:
masking each page's own name (so that two pages differing only in the command they name match) dropped about a tenth
more pages, but also merged distinct short pages of one template ("The ls page." / "The passwd page."), so it is not
done.

Why this shape: datasketch's MinHash-LSH (Broder 1997; Leskovec, Rajaraman and Ullman, "Mining of Massive
Datasets", ch. 3) finds the candidate pairs without comparing every pair, and the exact Jaccard on the 5-gram
sets then decides, so the estimate's noise never decides a drop. Visiting in a fixed key order and comparing
only with kept documents makes the result a function of the set of documents (not of the read order or of the
split loaded), and every dropped document is within the threshold of its representative (no chains of ever
less similar pages). Word 5-gram MinHash is the NearDup set-up of Lee et al. 2022 ("Deduplicating Training Data
Makes Language Models Better"); the 0.8 threshold was chosen by reading what it drops and keeps on the host's
man pages (GA/beta/alpha copies of one command go, pages of one family with their own text stay).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

THRESHOLD = 0.8
SHINGLE_WORDS = 5
# 128 permutations and a fixed seed: the LSH bands for 0.8 then miss a pair at Jaccard 0.8 rarely, and the
# result is the same on every machine (datasketch hashes with sha1 and seeds its permutations with numpy).
_NUM_PERM = 128
_SEED = 1
_WORD = re.compile(r"\w+")
RULE = f"DESCRIPTION word {SHINGLE_WORDS}-gram Jaccard >= {THRESHOLD} with a kept page of shorter name"


def shingles(text: str) -> set[str]:
    """The set of word n-grams of a text.

    Args:
        text: the document.

    Returns:
        The distinct `SHINGLE_WORDS`-word n-grams, lower-cased; a shorter text gives one n-gram of all its words.
    """
    words = _WORD.findall(text.lower())
    if len(words) <= SHINGLE_WORDS:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def find_near_duplicates(docs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Which documents nearly repeat another one, and which document represents each (see the module doc).

    Args:
        docs: (key, text) per document; keys unique.

    Returns:
        {key of a near-duplicate: key of the kept document it repeats}; kept documents are absent.

    Raises:
        ValueError: two documents share a key.
    """
    keys = [key for key, _ in docs]
    if len(set(keys)) != len(keys):
        raise ValueError("near-duplicate detection needs unique keys")
    ordered = sorted(docs, key=lambda d: (len(d[0]), d[0]))
    sets = [shingles(text) for _, text in ordered]
    hashes = MinHash.bulk([[s.encode("utf-8") for s in shingle_set] for shingle_set in sets], num_perm=_NUM_PERM,
                          seed=_SEED)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=_NUM_PERM)
    duplicate_of: dict[str, str] = {}
    for i, ((key, _), minhash) in enumerate(zip(ordered, hashes, strict=True)):
        representative = None
        for j in lsh.query(minhash):  # kept documents only, all visited before this one
            jaccard = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
            if jaccard >= THRESHOLD and (representative is None or j < representative):
                representative = j
        if representative is None:
            lsh.insert(i, minhash)
        else:
            duplicate_of[key] = ordered[representative][0]
    return duplicate_of
