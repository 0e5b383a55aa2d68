"""Train a byte-level BPE tokenizer with `tokenizers` and give it a chat template TRL understands.

The result is a plain `PreTrainedTokenizerFast` folder (loads without hfscratch installed). Byte-level, no
normalizer: every UTF-8 string round-trips exactly. Pad is distinct from eos, so padding never masks the
end-of-turn label. `tokenizer(text)` adds no special tokens (GPT-2 style): the packer and the chat template add
bos/eos themselves, so no path gets a doubled bos. The chat template renders each turn as `<|role|>content<|eos|>`
after a leading bos, with assistant content and its eos inside `{% generation %}`, so TRL's
`assistant_only_loss=True` trains exactly on what the model must produce, including when to stop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .errors import ConfigError, DataError

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
ROLE_TOKENS = [SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]
# Order fixes the ids: pad=0, bos=1, eos=2, then the role markers, then the 256 byte symbols.
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS]
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)

# Role markers are written literally (not via variables) so that the template works unchanged on any
# tokenizer that `ensure_chat_template` has given these tokens. Content may be a string or a list of
# {"type": "text", "text": ...} parts (the multimodal message shape some TRL paths produce).
CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is none -%}"
    "{%- else -%}{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "<|system|>{{ render_content(message['content']) }}{{ eos_token }}"
    "{%- elif message['role'] == 'user' -%}"
    "<|user|>{{ render_content(message['content']) }}{{ eos_token }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ render_content(message['content']) }}{{ eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('hfscratch chat template: unknown role ' ~ message['role'] ~ '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs {BYTE_ALPHABET_SIZE} byte symbols + "
                          f"{len(SPECIAL_TOKENS)} special tokens = {MIN_VOCAB_SIZE}; set vocab_size >= {MIN_VOCAB_SIZE} "
                          "(a few thousand for small corpora, 32k-64k for large ones)")


def _wrap(tokenizer_object: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS), chat_template=CHAT_TEMPLATE, padding_side="right",
        clean_up_tokenization_spaces=False,  # exact round trips: never "clean up" spaces before punctuation on decode
        model_input_names=["input_ids", "attention_mask"],  # the model takes no token_type_ids; do not produce them
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_dir: str | Path | None = None, min_frequency: int = 2,
                    show_progress: bool = True) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and return it as a `PreTrainedTokenizerFast`.

    With `output_dir` it is saved there and reloaded, so it is exactly what `AutoTokenizer.from_pretrained` gives."""
    check_vocab_size(vocab_size)
    if min_frequency < 1:
        raise ConfigError(f"min_frequency={min_frequency} must be >= 1")
    tokenizer = Tokenizer(models.BPE())
    # GPT-2/Llama-3 style split (letters, numbers, punctuation, spaces) over raw bytes; no normalizer.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    seen = [0]  # characters trained on

    def counted(stream):
        for text in stream:
            if text:
                seen[0] += len(text)
                yield text

    tokenizer.train_from_iterator(counted(texts), trainer=trainer)
    if seen[0] == 0:
        raise DataError("cannot train a tokenizer on an empty corpus; give sources that contain text")
    fast = _wrap(tokenizer)
    if output_dir is None:
        return fast
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(output_dir)
    return load_tokenizer(output_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"no tokenizer.json in {path}; point tokenizer_path at a folder written by save_pretrained")
    return AutoTokenizer.from_pretrained(path)


def ensure_chat_template(tokenizer):
    """Give a tokenizer that lacks a chat template the hfscratch one (plus role markers, pad if missing), in place.

    Added tokens get new ids at the end of the vocabulary, so a paired model then needs
    `model.resize_token_embeddings(len(tokenizer))`. A tokenizer with a chat template is returned untouched."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError("the tokenizer has no eos_token, which the chat template needs to end each turn; "
                          "set one (tokenizer.eos_token = ...) or use a tokenizer trained by hfscratch")
    missing = [t for t in ROLE_TOKENS if t not in tokenizer.get_vocab()]
    special: dict = {}
    if missing:
        special["extra_special_tokens"] = missing
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A pad equal to eos would make collators mask the eos label, so the model never learns to stop.
        special["pad_token"] = PAD_TOKEN
    if special:
        tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def bytes_per_token(tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts` (no special tokens): the compression ratio on held-out text."""
    total_bytes = total_tokens = 0
    texts = iter(t for t in texts if t)
    while batch := list(itertools.islice(texts, 256)):  # batches of 256: fast, and memory stays bounded
        total_bytes += sum(len(text.encode("utf-8")) for text in batch)
        total_tokens += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
    if total_tokens == 0:
        raise DataError("bytes_per_token needs non-empty texts")
    return total_bytes / total_tokens


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides the token ids: the serialized tokenizer, special tokens and chat template."""
    backend = tokenizer.backend_tokenizer.to_str()
    extra = json.dumps({"special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
                        "chat_template": tokenizer.chat_template}, sort_keys=True)
    return hashlib.sha256((backend + extra).encode("utf-8")).hexdigest()
