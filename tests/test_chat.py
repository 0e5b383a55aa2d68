"""`hfscratch chat`: typed through a pseudo-terminal like a person would, one-shot mode, streaming,
plain-text fallback, context trimming, and `pipeline("text-generation")` with chat messages.

Expected replies come straight from transformers (apply_chat_template + greedy generate + decode), not
from the chat module, so the test checks the session's prompt building and history, not itself.
"""

import copy
import os
import re
import select
import subprocess
import sys
import time

import pytest
import torch

from hfscratch import HfscratchForCausalLM
from hfscratch.chat import ChatSession, SamplingConfig, load_for_chat
from hfscratch.cli import main
from hfscratch.errors import CheckpointError
from tests.helpers import tiny_config

MAX_NEW = 10


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory, tiny_tokenizer):
    from hfscratch.tokenizer import ensure_chat_template

    tokenizer = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    folder = tmp_path_factory.mktemp("chat_model")
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(tokenizer)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(chat_folder):
    return load_for_chat(str(chat_folder), device="cpu")


def greedy_reply(model, tokenizer, messages, max_new_tokens=MAX_NEW) -> str:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def squash(text: str) -> str:
    return " ".join(text.split())


def test_one_shot_prompt_prints_the_greedy_reply(chat_folder, loaded, capsys):
    model, tokenizer = loaded
    expected = greedy_reply(model, tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    code = main(["chat", str(chat_folder), "--prompt", "Hello there", "--system", "Be brief.", "--temperature", "0",
                 "--max-new-tokens", str(MAX_NEW), "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().out == expected + "\n"


def test_seeded_sampling_is_reproducible(chat_folder, capsys):
    def sample(seed):
        assert main(["chat", str(chat_folder), "--prompt", "Good morrow", "--temperature", "1.0", "--top-k", "0",
                     "--top-p", "1.0", "--max-new-tokens", "16", "--seed", str(seed), "--device", "cpu"]) == 0
        return capsys.readouterr().out

    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first


def test_reply_streams_in_chunks_and_keeps_history(loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=24))
    chunks = []
    reply = session.reply("What light through yonder window breaks?", on_text=chunks.append)
    assert len(chunks) >= 2, "the reply arrived in one piece: nothing was streamed"
    assert "".join(chunks) == reply
    assert reply == greedy_reply(model, tokenizer, [{"role": "user", "content": "What light through yonder window breaks?"}], 24)
    assert session.messages == [{"role": "user", "content": "What light through yonder window breaks?"},
                                {"role": "assistant", "content": reply}]


def test_history_is_trimmed_to_the_context_window(loaded):
    model, tokenizer = loaded
    notices = []
    session = ChatSession(model, tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=8), announce=notices.append)
    session.max_context = 64
    for turn in range(4):
        session.reply(f"Turn {turn}: tell me of the king and the queen and the fool")
    ids = session.prompt_ids("and now?")
    assert len(ids) <= 64 - 8
    assert any("dropped" in n for n in notices)
    assert session.messages and "Turn 0" not in session.messages[0]["content"]


def test_plain_text_mode_without_chat_template(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(tiny_tokenizer)).eval()  # no room for role tokens
    notices = []
    session = ChatSession(model, tiny_tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=8), announce=notices.append)
    assert session.mode == "plain" and len(notices) == 1
    ids = torch.tensor([[tiny_tokenizer.bos_token_id] + tiny_tokenizer("To be, or not")["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    assert session.reply("To be, or not") == tiny_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert tiny_tokenizer.chat_template is None  # the shared tokenizer was not modified


def test_commands(loaded):
    import io

    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=4))
    out = io.StringIO()
    assert session.handle_command("/set temperature 0.5", out) and session.sampling.temperature == 0.5
    assert session.handle_command("/set top_p 7", out) and session.sampling.top_p == 0.95  # rejected, unchanged
    assert session.handle_command("/system Speak in verse.", out) and session.system == "Speak in verse."
    assert session.handle_command("/system", out) and session.system is None
    assert session.handle_command("/frobnicate", out)
    assert not session.handle_command("/exit", out)
    text = out.getvalue()
    assert "temperature = 0.5" in text and "cannot set top_p" in text and "unknown command /frobnicate" in text


def test_bad_input_is_one_line(tmp_path, chat_folder, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_for_chat(str(tmp_path / "nope" / "model"))
    assert main(["chat", str(chat_folder), "--prompt", "hi", "--temperature", "-1"]) == 2
    assert main(["chat", str(tmp_path), "--prompt", "hi"]) == 2  # a folder, but not a model
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err and "temperature" in err and "config.json" in err


def test_pipeline_text_generation_with_chat_messages(chat_folder, loaded):
    from transformers import pipeline

    model, tokenizer = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    generator = pipeline("text-generation", model=str(chat_folder), device="cpu")
    result = generator(messages, max_new_tokens=MAX_NEW, do_sample=False)
    conversation = result[0]["generated_text"]
    assert conversation[:2] == messages and conversation[-1]["role"] == "assistant"
    assert conversation[-1]["content"] == greedy_reply(model, tokenizer, messages)


# ---------------------------------------------------------------------------------------------- pseudo-terminal

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


class Terminal:
    """A child process on a pseudo-terminal; `expect` reads until a string shows up (stdlib pty, no pexpect)."""

    def __init__(self, argv, env):
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.buffer = ""

    def expect(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; screen so far:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 1.0))
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if not data and self.proc.poll() is not None:
                    raise AssertionError(f"process exited ({self.proc.returncode}) before {text!r}:\n{self.buffer[-2000:]}")
                self.buffer += _ANSI.sub("", data.decode("utf-8", errors="replace")).replace("\r\n", "\n")
        before, _, self.buffer = self.buffer.partition(text)
        return before

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


def test_interactive_session_through_a_pty(chat_folder, loaded):
    model, tokenizer = loaded
    env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
    term = Terminal([sys.executable, "-m", "hfscratch.cli", "chat", str(chat_folder), "--temperature", "0",
                     "--max-new-tokens", str(MAX_NEW), "--device", "cpu"], env)
    try:
        banner = term.expect(">>> ")
        assert "hfscratch chat" in banner and "chat template" in banner

        def say(text):
            term.type(text)
            screen = term.expect(">>> ")
            echoed, _, reply = screen.partition(text + "\n")  # the terminal echoes what was typed
            assert echoed.strip() == ""
            return reply.rstrip("\n")

        first = say("Hello there")
        expected_first = greedy_reply(model, tokenizer, [{"role": "user", "content": "Hello there"}])
        assert squash(first) == squash(expected_first)

        term.type("/system You are terse.")
        assert "(system prompt set)" in term.expect(">>> ")
        second = say("How are you?")
        history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"},
                   {"role": "assistant", "content": expected_first}, {"role": "user", "content": "How are you?"}]
        assert squash(second) == squash(greedy_reply(model, tokenizer, history))

        term.type("/reset")
        assert "(conversation cleared)" in term.expect(">>> ")
        third = say("Hello there")
        fresh = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
        assert squash(third) == squash(greedy_reply(model, tokenizer, fresh))

        term.type("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_stopping_a_reply_midway_keeps_the_partial_turn(loaded, monkeypatch):
    """What Ctrl-C does: the consumer stops, the worker thread's generate() ends at the next token."""
    model, tokenizer = loaded
    forward = model.forward

    def slow_forward(*args, **kwargs):  # make each token take a while so the stop lands mid-reply
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    session = ChatSession(model, tokenizer, sampling=SamplingConfig(temperature=0, max_new_tokens=200))
    stream = session.generate_stream("Speak on, and at length")
    first = next(stream)
    stream.close()  # same path as KeyboardInterrupt: stop, drain, join, record
    partial = session.messages[-1]["content"]
    assert partial.startswith(first)
    assert len(tokenizer(partial)["input_ids"]) < 100
