"""A fast word tokenizer for datatrove's blocks that returns the words of datatrove's spaCy tokenizer.

spaCy's rule-based tokenizer first splits text on whitespace, then tokenizes each whitespace-free chunk on its own
(prefixes, suffixes and infixes never look across whitespace; special cases do in one rare case, see
`APOSTROPHES_ACROSS_CHUNKS`). A document's words are therefore the concatenation of its chunks' words, and books
repeat a small set of chunks: the 10-book benchmark set has 1.15 M chunks but only 71 k distinct ones.
`ChunkCachedWordTokenizer` splits on whitespace with `str.split` (the same whitespace as spaCy's `isspace`), looks
each chunk up in a per-process table, and tokenizes only chunks it has not seen. In English, plain words and
quoted/bracketed/hyphenated ASCII words are split by two regexes written from spaCy's English rules (unless spaCy has
a special case for them: `cannot` -> `can`, `not`); any other chunk, and every chunk of other languages, goes through
spaCy's own tokenizer once. So the words equal spaCy's (measured: identical on all 150,810 paragraphs of the 63
Gutenberg books, `benchmarks/bench_data_clean.py --compare-tokenizers`) at dictionary-lookup speed.

Datatrove documents the hook: every block that tokenizes calls `load_word_tokenizer(language)`, which returns a
`WordTokenizer` instance passed as `language` unchanged, so the blocks are used as they are.
"""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, load_word_tokenizer

WORD_TOKENIZERS = ("fast", "spacy")
# spaCy languages whose tokenizer is not the whitespace-first rule-based one (dictionary/ML word segmenters)
SEGMENTED_LANGUAGES = {"zh", "ja", "ko", "th", "vi"}
# The common non-alphabetic chunks of prose, split without spaCy: ASCII words joined by hyphens or dashes, after at
# most one opening mark and before closing marks. spaCy's rules always split these marks off, and the dashes between
# letters ("well-bred", "appointed--I"); a period only after a lowercase letter ("do." splits, "I." does not).
# A chunk whose words or marks form one of spaCy's special cases ("’em", "cannot") still goes to spaCy, and the
# test suite checks this shortcut against spaCy on every distinct chunk of the Gutenberg books.
AFFIXED_WORDS = re.compile(r"([\"“‘(\[_]?)((?:[A-Za-z]+(?:---|--|-|——|—|–))*[A-Za-z]+)((?:(?<=[a-z])\.)?[,;:!?)\]”\"’_]*)")
DASH = re.compile(r"(---|--|-|——|—|–)")
# Where chunks are not independent in spaCy: its special-case matcher runs over the whole document's tokens,
# whitespace or not. After a chunk ending in an apostrophe, a chunk of an apostrophe, letters and two or more marks
# loses its special case ("feedin' 'em?\"" gives ', ', em where "'em?\"" alone gives 'em). Such a document goes to
# spaCy whole: 135 of the 63 Gutenberg books' 150,810 paragraphs, which covers the 2 whose words differed, and all
# 6,376 differing strings of a 97k-string probe of such pairs. (The probe found one other kind, an emoticon across
# chunks, "x: (:-", not in the books.)
APOSTROPHES_ACROSS_CHUNKS = re.compile(r"['‘’]\s+['‘’](?![A-Za-z]*[^\sA-Za-z]?(?:\s|$))")
MAX_CACHED_CHUNKS = 2_000_000


class ChunkCachedWordTokenizer(WordTokenizer):
    """datatrove `WordTokenizer` giving the words of datatrove's spaCy tokenizer for `language`, each distinct
    whitespace-delimited chunk tokenized once per process. Sentences are left to spaCy (only C4 asks for them)."""

    def __init__(self, language: str = "en"):
        super().__init__(language)
        reason = why_not_fast(language)
        if reason:
            raise ValueError(f"word_tokenizer fast: language {language!r} {reason}")
        self.reference = load_word_tokenizer(language)
        self.english_shortcuts = language == "en"  # the regexes follow spaCy's English prefix/suffix/infix rules
        self._words: dict[str, tuple[str, ...]] = {}
        self._special_cases: frozenset[str] | None = None

    # Executors pickle the pipeline: send only the language. The spaCy model comes from datatrove's
    # `load_word_tokenizer` cache, which forked workers inherit already loaded when the parent called `preload()`.
    def __getstate__(self) -> dict:
        return {"language": self.language}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["language"])

    def preload(self) -> ChunkCachedWordTokenizer:
        """Load spaCy now (in the parent process, so `fork` workers do not each import and build it)."""
        if self._special_cases is None:
            rules = self.reference.tokenizer.tokenizer.rules
            self._special_cases = frozenset(rules)
        return self

    def _learn(self, chunks: list[str]) -> None:
        self.preload()
        special = self._special_cases
        words = self._words
        if len(words) > MAX_CACHED_CHUNKS:  # web text has an unbounded tail of distinct chunks (URLs, numbers)
            words.clear()
        hard = []
        for chunk in dict.fromkeys(chunks):
            if chunk in words:
                continue
            if not self.english_shortcuts:
                hard.append(chunk)
                continue
            if chunk.isalpha() and chunk not in special:
                words[chunk] = (chunk,)
                continue
            affixed = AFFIXED_WORDS.fullmatch(chunk)
            if affixed is None:
                hard.append(chunk)
                continue
            opening, core, closing = affixed.groups()
            split = (*([opening] if opening else []), *DASH.split(core), *closing)
            # spaCy's special cases apply to any run of these pieces (its special-case matcher)
            if any("".join(split[i:j]) in special for i in range(len(split)) for j in range(i + 1, len(split) + 1)):
                hard.append(chunk)
            else:
                words[chunk] = split
        if hard:
            for chunk, chunk_words in zip(hard, self._spacy_words(hard)):
                words[chunk] = chunk_words

    def _spacy_words(self, chunks: list[str]) -> list[tuple[str, ...]]:
        """spaCy's words of each chunk, one tokenizer call per chunk: joined by spaces, spaCy's special-case matcher
        can see across chunks ("’em.’”" next to another chunk loses its "’em" special case)."""
        nlp = self.reference.tokenizer
        out = []
        with nlp.memory_zone():  # as datatrove does: spaCy's vocabulary would otherwise grow with every new word
            for chunk in chunks:
                try:
                    tokens = nlp.tokenizer(chunk)
                except AssertionError:
                    if "IS_ALPHA" not in chunk:
                        raise
                    tokens = nlp.tokenizer(chunk.replace("IS_ALPHA", ""))  # datatrove's workaround for this string
                out.append(tuple(word for token in tokens if (word := token.text.strip())))
        return out

    def word_tokenize(self, text: str) -> list[str]:
        if APOSTROPHES_ACROSS_CHUNKS.search(text):
            return self.reference.word_tokenize(text)
        chunks = text.split()
        words = self._words
        try:
            return [word for chunk in chunks for word in words[chunk]]
        except KeyError:
            self._learn(chunks)
            return [word for chunk in chunks for word in words[chunk]]

    def sent_tokenize(self, text: str) -> list[str]:
        return self.reference.sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.reference.span_tokenize(text)


def why_not_fast(language: str) -> str | None:
    """Why `word_tokenizer: fast` cannot give datatrove's words for `language` (None: it can)."""
    if language in SEGMENTED_LANGUAGES:
        return "is not written with spaces between words"
    try:
        reference = load_word_tokenizer(language)
    except ValueError:
        return "has no word tokenizer in datatrove"
    if not isinstance(reference, SpaCyTokenizer):
        return f"is split by datatrove's {type(reference).__name__}, not by spaCy's rules"
    return None


def word_tokenizer_for(kind: str, language: str) -> str | WordTokenizer:
    """What to pass as datatrove's `language` argument: the language itself (datatrove loads its spaCy tokenizer)
    or the chunk-cached tokenizer, loaded in this process."""
    if kind == "spacy":
        return language
    return ChunkCachedWordTokenizer(language).preload()
