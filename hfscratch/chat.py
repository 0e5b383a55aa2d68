"""`hfscratch chat PATH_OR_REPO`: talk to a model in the terminal, tokens streamed as they are generated.

Generation runs in a worker thread feeding a `TextIteratorStreamer`, so the main thread stays responsive: Ctrl-C
stops the current reply (a stopping criterion the worker checks), not the program. A tokenizer without a chat
template gets hfscratch's when the model has embeddings for its role tokens; otherwise the session continues plain
text (a base model). `--prompt` answers once for scripts: only the reply goes to stdout, notices to stderr.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
from dataclasses import dataclass, fields

from .errors import ConfigError, HfscratchError
from .hub import resolve_model_path
from .loading import load_for_inference, stop_token_ids
from .model_card import human_count
from .tokenizer import ensure_chat_template

PROMPT = ">>> "
HELP = """commands:
  /reset              forget the conversation (the system prompt stays)
  /system TEXT        set the system prompt; /system alone removes it
  /set NAME VALUE     change temperature, top_p, top_k, max_new_tokens or repetition_penalty
  /help               this help
  /exit               quit (also Ctrl-D); Ctrl-C stops the current reply"""


def _notice(message: str) -> None:
    print(f"({message})", file=sys.stderr, flush=True)


@dataclass
class SamplingConfig:
    """Decoding settings; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0

    def validate(self) -> SamplingConfig:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        return self

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        return kwargs


def load_for_chat(path_or_repo: str, *, revision: str | None = None, tokenizer_path: str | None = None,
                  device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) from a local folder or a Hub repo id (downloaded at `revision`), in eval mode."""
    folder = resolve_model_path(path_or_repo, revision=revision)
    tokenizer = resolve_model_path(tokenizer_path) if tokenizer_path else None
    return load_for_inference(folder, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


class _StopOnEvent:
    """Stopping criterion the main thread flips on Ctrl-C; `generate` checks it after every token."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatSession:
    """A conversation with history, a system prompt and streamed replies."""

    def __init__(self, model, tokenizer, *, sampling: SamplingConfig | None = None, system: str | None = None,
                 announce=_notice):
        self.model = model
        if hasattr(model, "compile_decoding_after"):
            # A person reads far slower than the uncompiled lean loop writes; compiling the decoding step would
            # stall one reply for the compile (seconds to a minute on a small CPU) and gain nothing they can see.
            model.compile_decoding_after = None
        self.tokenizer = tokenizer
        self.sampling = (sampling or SamplingConfig()).validate()
        self.system = system or None
        self.reset()
        self.announce = announce
        self.mode = self._choose_mode()
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.max_context = getattr(model.config, "max_position_embeddings", None)

    def _choose_mode(self) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return "chat"
        vocab_rows = self.model.get_input_embeddings().num_embeddings
        try:
            # On a copy: if the template's role tokens do not fit the model, the original stays untouched.
            templated = ensure_chat_template(copy.deepcopy(self.tokenizer))
        except HfscratchError:
            templated = None
        if templated is not None and len(templated) <= vocab_rows:
            self.tokenizer = templated
            self.announce("the tokenizer had no chat template: using hfscratch's default one (the model may not have been trained on it)")
            return "chat"
        self.announce("the tokenizer has no chat template and the model has no role tokens: continuing plain text (a base model)")
        return "plain"

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.transcript = ""  # plain-text mode

    def set_system(self, text: str | None) -> None:
        self.system = text.strip() if text and text.strip() else None

    def conversation(self, user_text: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + [{"role": "user", "content": user_text}]

    def _encode_chat(self, messages: list[dict]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def _encode_plain(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids  # documents start with bos in training (the packer adds it)
        return ids

    def prompt_ids(self, user_text: str) -> list[int]:
        """Token ids of the prompt, dropping the oldest turns when it would not fit the context window."""
        context = self.max_context
        budget = context - min(self.sampling.max_new_tokens, context // 2) if context else None
        if self.mode == "plain":
            ids = self._encode_plain(self.transcript + user_text)
            if budget is not None and len(ids) > budget:
                self.announce(f"the text is longer than the context window: keeping the last {budget} tokens")
                ids = ids[-budget:]
            return ids
        dropped = 0
        while True:
            ids = self._encode_chat(self.conversation(user_text))
            if budget is None or len(ids) <= budget or not self.messages:
                break
            self.messages = self.messages[2:] if len(self.messages) >= 2 else []
            dropped += 1
        if dropped:
            self.announce(f"dropped the {dropped} oldest exchange(s) to fit the context window of {self.max_context} tokens")
        if budget is not None and len(ids) > budget:
            self.announce(f"the message is longer than the context window: keeping its last {budget} tokens")
            ids = ids[-budget:]
        return ids

    def generate_stream(self, user_text: str):
        """Yield text chunks of the reply as the worker thread produces them; records the turn at the end."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        ids = self.prompt_ids(user_text)
        input_ids = torch.tensor([ids], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stopper = _StopOnEvent()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0] if self.stop_ids else None
        kwargs = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
            stopping_criteria=StoppingCriteriaList([stopper]), eos_token_id=self.stop_ids or None, pad_token_id=pad,
            **self.sampling.generate_kwargs(),
        )
        if self.max_context:  # never generate past the context window the model was trained for
            kwargs["max_new_tokens"] = max(1, min(kwargs["max_new_tokens"], self.max_context - len(ids)))
        failure: list[BaseException] = []

        def work():
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread below
                failure.append(err)
                streamer.end()  # unblock the consumer

        worker = threading.Thread(target=work, name="hfscratch-generate", daemon=True)
        worker.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                pieces.append(piece)
                yield piece
        except (KeyboardInterrupt, GeneratorExit):
            stopper.event.set()
            for piece in streamer:  # drain so the worker can finish
                pieces.append(piece)
            raise
        finally:
            worker.join()
            if not failure:
                self._record(user_text, "".join(pieces))
        if failure:
            raise failure[0]

    def _record(self, user_text: str, reply: str) -> None:
        if self.mode == "plain":
            self.transcript = self.transcript + user_text + reply
        else:
            self.messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]

    def reply(self, user_text: str, on_text=None) -> str:
        """The whole reply (streamed to `on_text(chunk)` as it comes)."""
        pieces = []
        for piece in self.generate_stream(user_text):
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(pieces)

    def handle_command(self, line: str, out=sys.stdout) -> bool:
        """Run a /command; returns False when the session should end."""
        name, _, rest = line.strip().partition(" ")
        name = name.lower()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.reset()
            print("(conversation cleared)", file=out, flush=True)
        elif name == "/system":
            if self.mode == "plain":
                print("(plain-text mode has no system prompt)", file=out, flush=True)
            else:
                self.set_system(rest)
                print("(system prompt set)" if self.system else "(system prompt removed)", file=out, flush=True)
        elif name == "/set":
            key, _, value = rest.strip().partition(" ")
            allowed = [f.name for f in fields(SamplingConfig)]
            if key not in allowed or not value.strip():
                print(f"(usage: /set NAME VALUE with NAME in {', '.join(allowed)})", file=out, flush=True)
            else:
                cast = int if key in ("top_k", "max_new_tokens") else float
                old = getattr(self.sampling, key)
                try:
                    setattr(self.sampling, key, cast(value))
                    self.sampling.validate()
                except (ValueError, ConfigError) as err:
                    setattr(self.sampling, key, old)  # a rejected value leaves the setting as it was
                    print(f"(cannot set {key}: {err})", file=out, flush=True)
                else:
                    print(f"({key} = {getattr(self.sampling, key)})", file=out, flush=True)
        elif name == "/help":
            print(HELP, file=out, flush=True)
        else:
            print(f"(unknown command {name}; /help lists them)", file=out, flush=True)
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (save_pretrained output) or Hub repo id ORG/NAME")
    parser.add_argument("--revision", default=None, help="branch, tag or commit on the Hub (e.g. step-001000)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder, when it is not saved next to the model")
    parser.add_argument("--prompt", default=None, help="answer this one message, print the reply and exit ('-' reads stdin)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=50, help="0 = off")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true", help="allow modeling code shipped with a non-hfscratch model")


def _interactive(session: ChatSession, header: str, model: str) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    print(header, flush=True)
    print("type /help for commands, /exit to quit", flush=True)
    print(f"(in a browser or over the OpenAI API instead: hfscratch serve {model}, then open "
          "http://127.0.0.1:8000/)", flush=True)
    while True:
        try:
            line = input(PROMPT)
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return 0
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            if not session.handle_command(line):
                return 0
            continue
        try:
            for piece in session.generate_stream(line):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="", flush=True)
        print(flush=True)


def run(args: argparse.Namespace) -> int:
    from transformers import set_seed

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty).validate()
    model, tokenizer = load_for_chat(args.model, revision=args.revision, tokenizer_path=args.tokenizer,
                                     device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    if args.seed is not None:
        set_seed(args.seed)
    session = ChatSession(model, tokenizer, sampling=sampling, system=args.system)
    if args.prompt is not None:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        session.reply(prompt, on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
        return 0
    n_params = sum(p.numel() for p in model.parameters())
    header = (f"hfscratch chat | {args.model} | {human_count(n_params)} parameters | {model.device} {str(model.dtype).removeprefix('torch.')}"
              f" | {'chat template' if session.mode == 'chat' else 'plain text'}")
    return _interactive(session, header, args.model)


__all__ = ["ChatSession", "SamplingConfig", "add_arguments", "load_for_chat", "run"]
