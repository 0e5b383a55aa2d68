"""`word_tokenizer: fast` (hfscratch.data.clean.word_tokenizer, fast_blocks) against datatrove's spaCy tokenizer and
blocks (`word_tokenizer: spacy`, the reference) on real Gutenberg text."""

import json
import pickle
import re

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

from hfscratch.data.clean import CleanConfig, clean_corpus
from hfscratch.data.clean.fast_blocks import (
    FastMinhashDedupSignature,
    fast_simplify_text,
    repeated_ngram_chars,
    top_ngram_chars,
)
from hfscratch.data.clean.steps import plain_document_dict
from hfscratch.data.clean.word_tokenizer import ChunkCachedWordTokenizer
from hfscratch.errors import ConfigError

from .test_data_clean import read_output

BOOKS = ["pg11.txt", "pg1342.txt"]  # Alice (curly quotes, dialogue), Pride and Prejudice (straight quotes, dashes)


@pytest.fixture(scope="module")
def book_texts(shared_data):
    return [(shared_data / "gutenberg" / "books" / name).read_text(encoding="utf-8") for name in BOOKS]


@pytest.fixture(scope="module")
def book_paragraphs(book_texts):
    return [p.strip() for text in book_texts for p in re.split(r"\n\s*\n", text) if p.strip()]


@pytest.fixture(scope="module")
def fast_tokenizer():
    return ChunkCachedWordTokenizer("en").preload()


def test_fast_words_equal_spacy_words_on_every_distinct_chunk_of_two_books(book_texts, fast_tokenizer):
    # Measured on all 63 books (337k distinct chunks, raw and simplified): identical. Any chunk the shortcuts
    # (plain words, quoted/hyphenated words) split differently from spaCy fails here.
    nlp = load_word_tokenizer("en").tokenizer
    chunks = sorted({c for text in book_texts for c in text.split() + simplify_text(text).split()})
    assert len(chunks) > 15_000
    fast = {c: tuple(fast_tokenizer.word_tokenize(c)) for c in chunks}
    differing = [c for c in chunks if fast[c] != tuple(t.text for t in nlp.tokenizer(c) if t.text.strip())]
    assert differing == []


def test_fast_words_equal_spacy_words_on_whole_paragraphs(book_paragraphs, fast_tokenizer):
    reference = load_word_tokenizer("en")
    sample = book_paragraphs[::5]  # every 5th paragraph of both books
    assert len(sample) > 500
    assert [fast_tokenizer.word_tokenize(p) for p in sample] == [reference.word_tokenize(p) for p in sample]
    # special cases inside a chunk and the string spaCy's tokenizer cannot take, as datatrove handles them
    for text in ["I cannot—’em.’” (don't) U.S. e.g. 10km $5.00 well-bred--gone", "a xIS_ALPHAy b"]:
        assert fast_tokenizer.word_tokenize(text) == reference.word_tokenize(text)


def test_special_case_across_chunks_gets_spacy_words(fast_tokenizer):
    # The 2 of the 63 books' 150,810 paragraphs where chunk-by-chunk words differed from spaCy's (pg910, pg498):
    # spaCy's special-case matcher sees the apostrophe that ends the chunk before "'em?\"".
    reference = load_word_tokenizer("en")
    for text in ["when I was\na-feedin' 'em?\"", "the dogs' 'em?\" she said", "tellin’ ’em!” then"]:
        assert fast_tokenizer.word_tokenize(text) == reference.word_tokenize(text), text


def test_fast_tokenizer_pickles_to_a_working_copy(fast_tokenizer):
    # executors pickle the pipeline; the copy carries only the language and learns its chunks again
    copy = pickle.loads(pickle.dumps(fast_tokenizer))
    assert copy.language == "en" and copy._words == {}
    # spaCy's words: "Mr." is a special case, "cannot" is split alone but not as a piece between dashes
    assert copy.word_tokenize("“Well,” said Mr. Bennet—cannot! I cannot.") == [
        "“", "Well", ",", "”", "said", "Mr.", "Bennet", "—", "cannot", "!", "I", "can", "not", "."]


def test_fast_block_helpers_equal_datatrove(book_paragraphs, fast_tokenizer):
    config = TextNormConfig()
    texts = book_paragraphs[::5] + ["Café naïve Ångström résumé, “déjà vu” — ‘ﬁne’", " \u0301 e\u0301 "]
    assert [fast_simplify_text(t, config) for t in texts] == [simplify_text(t, config) for t in texts]
    repeated = [" ".join(["the cat sat on the mat"] * 4 + ["and", "the", "dog"]), "ab c ab c a bc a bc x y z w v u"]
    documents = [fast_tokenizer.word_tokenize(t) for t in book_paragraphs[::5] + repeated] + [["a", "b"], []]
    for words in documents:
        for n in (2, 3, 4):
            grams = get_n_grams(words, n)
            assert top_ngram_chars(words, n) == (find_top_duplicate(grams) if grams else None)
        for n in range(5, 11):
            assert repeated_ngram_chars(words, n) == find_all_duplicate(words, n)
    assert repeated_ngram_chars(fast_tokenizer.word_tokenize(repeated[0]), 5) > 0  # the repeat branch ran


@pytest.mark.parametrize("precision", [64, 32])
def test_fast_minhash_shingles_and_signatures_equal_datatrove(book_paragraphs, fast_tokenizer, tmp_path, precision):
    config = MinhashConfig(hash_config=HashConfig(precision=precision))
    reference = MinhashDedupSignature(str(tmp_path / "a"), config=config, language=fast_tokenizer)
    fast = FastMinhashDedupSignature(str(tmp_path / "b"), config=config, language=fast_tokenizer)
    chunked = FastMinhashDedupSignature(str(tmp_path / "c"), config=config, language=fast_tokenizer)
    chunked.chunk_rows = 7  # the bounded-memory path: most paragraphs span several chunks, the last one partial
    spanned = 0
    for text in book_paragraphs[::10]:
        shingles = reference.get_shingles(text)
        assert np.array_equal(fast.get_shingles(text), shingles)
        if shingles.size:
            expected = reference.get_signature(shingles)
            assert fast.get_signature(shingles) == expected and chunked.get_signature(shingles) == expected
            spanned += len(shingles) > 2 * chunked.chunk_rows
    assert spanned > 10


def test_fast_and_spacy_pipelines_make_the_same_decisions(book_paragraphs, shared_data, tmp_path):
    docs = [{"text": p} for p in book_paragraphs[200:500]]
    docs += [docs[3], docs[10]]  # exact copies
    docs.append({"text": "Click here to buy cheap watches now!\n" * 30})
    gsm8k = shared_data / "gsm8k" / "test.jsonl"
    outputs = {}
    for mode in ("spacy", "fast"):
        config = CleanConfig(word_tokenizer=mode, decontaminate_with=[str(gsm8k)], progress=False,
                             gopher_quality_options={"min_doc_words": 10},  # the book settings of RESULTS_data_clean.md
                             c4_quality_options={"filter_no_terminal_punct": False, "min_num_sentences": 1})
        outputs[mode] = clean_corpus(docs, tmp_path / mode, config)
    spacy_stages, fast_stages = (outputs[m].stats["stages"] for m in ("spacy", "fast"))
    assert fast_stages == spacy_stages  # per stage: documents and bytes in/out, why each was dropped
    assert [d["text"] for d in read_output(outputs["fast"])] == [d["text"] for d in read_output(outputs["spacy"])]
    assert spacy_stages["gopher_quality"]["dropped"] > 0 and spacy_stages["gopher_repetition"]["dropped"] > 0


def test_word_tokenizer_option_is_validated():
    with pytest.raises(ConfigError, match="word_tokenizer 'nltk' is unknown; use fast or spacy") as err:
        CleanConfig(word_tokenizer="nltk").validate()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="set word_tokenizer: spacy"):
        CleanConfig(language="zh").validate()
    CleanConfig(language="zh", word_tokenizer="spacy").validate()


def test_shard_adapter_writes_what_datatrove_writes(tmp_path):
    writer = JsonlWriter(str(tmp_path), output_filename="${rank}.jsonl")
    for doc in [Document(text="plain", id="a"), Document(text="t", id="b", metadata={"source": "x", "n": [1, {"k": 2}]}),
                Document(text="", id="c", metadata={})]:
        assert json.dumps(plain_document_dict(writer, doc)) == json.dumps(writer._default_adapter(doc))


def test_other_languages_get_spacy_words_without_the_english_shortcuts():
    # the regex shortcuts follow spaCy's English rules; other languages' new chunks all go through spaCy
    french = ChunkCachedWordTokenizer("fr")
    text = "L'homme qu'il a vu aujourd'hui, c'est-à-dire «bien» — well-bred."
    assert french.word_tokenize(text) == load_word_tokenizer("fr").word_tokenize(text)
    assert "c'" in french.word_tokenize(text) and not french.english_shortcuts
