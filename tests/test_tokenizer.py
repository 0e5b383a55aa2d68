"""Byte-level BPE training, exact UTF-8 round trips, special tokens and the TRL-ready chat template."""

import random

import pytest
from transformers import AutoTokenizer

from hfscratch.errors import ConfigError, DataError
from hfscratch.tokenizer import (
    CHAT_TEMPLATE,
    MIN_VOCAB_SIZE,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    bytes_per_token,
    ensure_chat_template,
    tokenizer_fingerprint,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text):
    out = tmp_path_factory.mktemp("bpe")
    # Train on the first 90%; the last 10% is held out for bytes/token.
    cut = int(len(shakespeare_text) * 0.9)
    docs = shakespeare_text[:cut].split("\n\n")
    tok = train_tokenizer(docs, vocab_size=1024, output_dir=out, show_progress=False)
    return tok, out, shakespeare_text[cut:]


def _random_unicode(rng: random.Random, length: int) -> str:
    # Every plane that matters: ASCII incl. all C0 controls and NUL, Latin-1, CJK, emoji (astral plane),
    # combining marks, private use, and arbitrary valid code points (surrogates are not valid UTF-8).
    pools = [(0, 0x7F), (0x80, 0x24F), (0x300, 0x36F), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF), (0, 0x10FFFF)]
    chars = []
    while len(chars) < length:
        lo, hi = rng.choice(pools)
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        chars.append(chr(cp))
    return "".join(chars)


def test_round_trip_arbitrary_utf8(trained):
    tok, _, _ = trained
    fixed = [
        "",
        "plain ascii, with  double  spaces and trailing space ",
        "line one\r\nline two\r\n\r\n",
        "NUL\x00inside\x00\x00 and \x01\x02\x1b[31mANSI\x7f",
        "emoji 🙂👍🏽👨‍👩‍👧‍👦 flags 🇫🇷 and CJK 世界你好 日本語 한국어",
        "combining é (e + \u0301), RTL שלום مرحبا, zero width \u200b\u200d, BOM \ufeff",
        "\t\ttabs\v\fform feed \u2028 line sep",
        " leading space, punctuation before spaces: a , b . c ' d",
    ]
    rng = random.Random(0)
    randomized = [_random_unicode(rng, rng.randint(1, 200)) for _ in range(200)]
    for text in fixed + randomized:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, repr(text)
    # The same through the raw `tokenizers` object, batch path.
    encoded = tok.backend_tokenizer.encode_batch(randomized, add_special_tokens=False)
    assert tok.backend_tokenizer.decode_batch([e.ids for e in encoded], skip_special_tokens=False) == randomized


def test_special_tokens_present_distinct_and_atomic(trained):
    tok, _, _ = trained
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.unk_token_id not in ids or tok.unk_token is None
    assert tok.pad_token_id != tok.eos_token_id
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert set(ROLE_TOKENS) <= set(tok.all_special_tokens)
    assert len(tok) == 1024
    # Special tokens are one id each, and plain text never adds bos/eos on its own.
    assert tok("<|assistant|>", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|assistant|>")]
    assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]
    assert "token_type_ids" not in tok("hello")


def test_autotokenizer_reload_matches(trained):
    tok, out, held_out = trained
    again = AutoTokenizer.from_pretrained(out)
    assert again.chat_template == CHAT_TEMPLATE
    assert again(held_out[:2000])["input_ids"] == tok(held_out[:2000])["input_ids"]
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)


MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": "3 + 4 = 7\n#### 7"},
    {"role": "user", "content": "And 2 * 5?"},
    {"role": "assistant", "content": "10 🙂"},
]


def test_chat_template_assistant_mask_is_exactly_assistant_content_and_eos(trained):
    tok, _, _ = trained
    out = tok.apply_chat_template(MESSAGES, return_assistant_tokens_mask=True, return_dict=True, tokenize=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    assert ids[0] == tok.bos_token_id
    # Walk the rendered turns and build the expected mask independently of the template's jinja.
    expected_ids, expected_mask = [tok.bos_token_id], [0]
    role_id = {m: tok.convert_tokens_to_ids(f"<|{m}|>") for m in ("system", "user", "assistant")}
    for message in MESSAGES:
        content = tok(message["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        expected_ids += [role_id[message["role"]]] + content
        flag = int(message["role"] == "assistant")
        expected_mask += [0] + [flag] * len(content)
    assert ids == expected_ids
    assert mask == expected_mask
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "3 + 4 = 7\n#### 7<|eos|>10 🙂<|eos|>"


def test_generation_prompt_and_prefix_consistency(trained):
    tok, _, _ = trained
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|system|>Answer briefly.<|eos|><|user|>What is 3 + 4?<|eos|><|assistant|>"
    full = tok.apply_chat_template(MESSAGES[:3], tokenize=False)
    # TRL's prompt-completion path requires the prompt to be a prefix of the full conversation.
    assert full.startswith(prompt) and full.endswith("#### 7<|eos|>")
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_vocab_too_small_is_config_error():
    with pytest.raises(ConfigError, match=f">= {MIN_VOCAB_SIZE}"):
        train_tokenizer(["some text"], vocab_size=MIN_VOCAB_SIZE - 1)
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer(["", ""], vocab_size=300, show_progress=False)


def test_bytes_per_token_on_held_out_text(trained):
    tok, _, held_out = trained
    bpt = bytes_per_token(tok, held_out.split("\n\n"))
    # A 1k-vocab BPE compresses English well beyond 1 byte/token but below a word per token.
    assert 2.0 < bpt < 5.0
    # Control bytes never seen in training stay one token per byte.
    assert bytes_per_token(tok, ["\x00\x01\x02\x03"]) == pytest.approx(1.0)


def test_ensure_chat_template_on_a_foreign_tokenizer(tiny_tokenizer, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    assert not tok.chat_template
    before = len(tok)
    ensure_chat_template(tok)
    assert len(tok) == before + len(ROLE_TOKENS)  # pad already existed and differs from eos
    out = tok.apply_chat_template(MESSAGES[1:3], return_assistant_tokens_mask=True, return_dict=True, tokenize=True)
    masked = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert masked == "3 + 4 = 7\n#### 7<|eos|>"
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == CHAT_TEMPLATE and len(reloaded) == len(tok)
    # Idempotent: a tokenizer with a template is left alone.
    assert len(ensure_chat_template(reloaded)) == len(tok)


def test_trl_accepts_the_template_for_assistant_only_loss(trained):
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    tok, _, _ = trained
    assert get_training_chat_template(tok) is None  # TRL needs no patched template
    assert is_chat_template_stop_token_trained(tok)  # the end-of-turn token is inside the assistant mask
