"""Datatrove blocks with their per-word Python loops replaced by C-level builtins, giving the same results.

Used with `word_tokenizer: fast`; `word_tokenizer: spacy` runs datatrove's blocks as shipped (the reference).
Profiling the pipeline on the Gutenberg books with fast word splitting left these as the hot spots:
- `GopherRepetitionFilter` joins every 2..10-gram of a document into a new string in a Python loop (a third of the
  filter stage). Here n-grams are counted as word tuples (`zip` + `Counter`/`set`); the duplicate scan, whose
  skip-ahead makes it sequential, runs only when some n-gram repeats, which most paragraphs never do.
- `simplify_text` (MinHash shingles, decontamination) removes diacritics with a per-character Python generator over
  the whole text; after lowercasing and punctuation removal most English text is ASCII, which has none.
Executors pickle these blocks and find them again by this module path.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.utils.text import TextNormConfig, simplify_text, split_into_words

MERSENNE_PRIME = np.uint64((1 << 61) - 1)  # the modulus of datatrove's MinHash permutations
NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _drop_combining_mark(match: re.Match) -> str:
    return "" if unicodedata.category(match[0]) == "Mn" else match[0]


def fast_simplify_text(text: str, config: TextNormConfig) -> str:
    """`datatrove.utils.text.simplify_text` with its last step (NFD, drop combining marks "Mn", strip) looking up
    the Unicode category of non-ASCII characters only."""
    if not config.norm_unicode_diacritics:
        return simplify_text(text, config)
    text = simplify_text(text, dataclasses.replace(config, norm_unicode_diacritics=False))
    text = unicodedata.normalize("NFD", text)
    if not text.isascii():
        text = NON_ASCII.sub(_drop_combining_mark, text)
    return text.strip()


def word_ngrams(words: list[str], n: int):
    """The n-grams of `words` as tuples (datatrove joins them with " "; words hold no spaces, so the same keys)."""
    return zip(*(words[i:] for i in range(n)))


def top_ngram_chars(words: list[str], n: int) -> int | None:
    """datatrove's `find_top_duplicate(get_n_grams(words, n))`: characters of the most frequent " "-joined n-gram
    times its count (ties: the first seen, as `Counter.most_common`); None when there are fewer than n words."""
    counts = Counter(word_ngrams(words, n))
    if not counts:
        return None
    gram, count = counts.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def repeated_ngram_chars(words: list[str], n: int) -> int:
    """datatrove's `find_all_duplicate(words, n)`: characters of n-grams (joined without spaces, as datatrove keys
    them) already seen earlier, skipping n words after each repeat."""
    keys = list(map("".join, word_ngrams(words, n)))
    if len(set(keys)) == len(keys):
        return 0
    seen: set[str] = set()
    repeated = index = 0
    while index < len(keys):
        key = keys[index]
        if key in seen:
            repeated += len(key)
            index += n
        else:
            seen.add(key)
            index += 1
    return repeated


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's Gopher repetition filter; its line and paragraph checks run unchanged (the parent's `filter`
    with its n-gram rules switched off), the n-gram rules run here in the parent's order with the same reasons."""

    def __init__(self, **options):
        super().__init__(**options)
        self.word_top_n_grams, self.word_dup_n_grams = self.top_n_grams, self.dup_n_grams
        self.top_n_grams = self.dup_n_grams = ()

    def filter(self, doc):
        verdict = super().filter(doc)
        if verdict is not True:
            return verdict
        text = doc.text
        words = split_into_words(text, self.language)  # the parent's call: served from datatrove's cache
        for n, n_frac in self.word_top_n_grams:
            top_chars = top_ngram_chars(words, n)
            if top_chars is not None and top_chars / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.word_dup_n_grams:
            if repeated_ngram_chars(words, n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True


class FastMinhashDedupSignature(MinhashDedupSignature):
    """datatrove's MinHash signature block; shingles from `fast_simplify_text` and `map` instead of a generator, and
    the signature cut into buckets by one reshape instead of `np.split` (half of `get_signature`'s time).

    The permuted hashes are computed `chunk_rows` shingles at a time (the minimum of the chunks' minima is the
    minimum): datatrove's block holds a shingles x hashes uint64 matrix and its temporaries at once, 1.5 GB more
    memory for a 5 MB document with the default 112 hashes; here at most `chunk_rows` rows of it (~60 MB)."""

    chunk_rows = 1 << 16

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        a, b = self.parameters
        signature = None
        for start in range(0, len(shingles), self.chunk_rows):
            permuted = (shingles[start:start + self.chunk_rows] * a + b) % MERSENNE_PRIME
            if self.config.hash_config.precision == 32:
                permuted = np.bitwise_and(permuted, self.config.hash_config.max)
            minimum = permuted.min(axis=0)
            signature = minimum if signature is None else np.minimum(signature, minimum)
        signature = signature.astype(self.config.hash_config.np_dtype)
        return signature.reshape(self.config.num_buckets, -1).tolist()

    def get_shingles(self, text: str) -> np.ndarray:
        words = self.word_tokenizer.word_tokenize(fast_simplify_text(text, self.config.norm_config))
        hashes = list(map(self._hash_func, map(" ".join, word_ngrams(words, self.config.n_grams))))
        return np.fromiter(hashes, dtype=np.uint64, count=len(hashes)).reshape((-1, 1))
