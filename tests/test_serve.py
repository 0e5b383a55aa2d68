"""`hfscratch serve`: the official `openai` client talking to a real server process.

Expected replies come from transformers' own `generate` (greedy, same weights) in this process, not from the
server's code: the server batches requests through transformers' continuous batching with a paged KV cache, so
equality checks the whole request → chat template → batching → detokenization path.
"""

import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch

from hfscratch import HfscratchForCausalLM
from hfscratch.cli import main
from hfscratch.tokenizer import ensure_chat_template
from tests.helpers import tiny_config

API_KEY = "test-key-123"
NAME = "tiny"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder, port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-c", "import sys; from hfscratch.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", str(folder), "--port", str(port), "--device", "cpu", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HFSCRATCH_API_KEY": ""})


def wait_healthy(process: subprocess.Popen, base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited early:\n{process.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    pytest.fail("the server did not answer /health in time")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_tokenizer):
    tokenizer = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    folder = tmp_path_factory.mktemp("serve") / NAME
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(tokenizer, tie_word_embeddings=False)).eval()
    with torch.no_grad():  # random weights favour the role tokens, which decode to nothing: make replies real text
        model.lm_head.weight[sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_folder):
    from hfscratch.loading import load_for_inference

    return load_for_inference(str(model_folder), device="cpu")


@pytest.fixture(scope="module")
def server(model_folder):
    port = free_port()
    process = start_server(model_folder, port, "--api-key", API_KEY, "--max-in-flight", "48")
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base)
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> tuple[str, str]:
    """(text, finish reason) of transformers' greedy decoding, stopping on eos like the server."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(ids):].tolist()
    finish = "stop" if tokenizer.eos_token_id in new else "length"
    return tokenizer.decode(new, skip_special_tokens=True), finish


def chat_ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What light through yonder window?"}]


def test_chat_completion_equals_transformers_greedy(client, reference):
    model, tokenizer = reference
    expected, finish = greedy(model, tokenizer, chat_ids(tokenizer, MESSAGES), 24)
    assert len(expected.strip()) > 10
    response = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=24)
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == finish
    assert response.usage.prompt_tokens == len(chat_ids(tokenizer, MESSAGES))
    assert 0 < response.usage.completion_tokens <= 24


def test_streamed_reply_equals_the_non_streamed_one(client):
    whole = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=24)
    deltas, finish = [], None
    for chunk in client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=24, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert len(deltas) >= 2, "the reply arrived in one piece: nothing was streamed"
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_legacy_completions_equal_transformers_greedy(client, reference):
    model, tokenizer = reference
    prompt = "To be, or not to be"
    expected, _ = greedy(model, tokenizer, tokenizer(prompt)["input_ids"], 16)
    assert len(expected.strip()) > 5
    response = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=16)
    assert response.choices[0].text == expected
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt=prompt, temperature=0, max_tokens=16, stream=True) if c.choices)
    assert streamed == expected


def test_stop_string_cuts_the_reply(client):
    full = client.completions.create(model=NAME, prompt="My lord,", temperature=0, max_tokens=30).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), f"no usable stop string in {full!r}"
    cut = client.completions.create(model=NAME, prompt="My lord,", temperature=0, max_tokens=30, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_sampling_follows_temperature(client):
    replies = {client.completions.create(model=NAME, prompt="The king", temperature=1.5, max_tokens=12).choices[0].text
               for _ in range(4)}
    assert len(replies) > 1, "temperature 1.5 gave the same text four times"


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == NAME


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, server, reference):
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context") as err:
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=7)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for path, body in [("/v1/chat/completions", "{not json"), ("/v1/chat/completions", "[1, 2]"),
                       ("/v1/chat/completions", json.dumps({"messages": "hello"})),
                       ("/v1/completions", json.dumps({"prompt": 42})), ("/v1/nothing", "{}"),
                       ("/v1/completions", json.dumps({"prompt": "x", "stream": True, "stream_options": "usage"}))]:
        response = httpx.post(f"{server}{path}", content=body, headers=headers)
        assert 400 <= response.status_code < 500, (path, body, response.status_code)
        assert response.json()["error"]["message"], response.text
    assert client.completions.create(model=NAME, prompt="Still", max_tokens=2).choices[0].text is not None


def test_32_concurrent_streams_all_complete(server, client):
    prompts = [f"Act {i}, scene {i % 5}:" for i in range(8)]
    expected = {p: client.completions.create(model=NAME, prompt=p, temperature=0, max_tokens=20).choices[0].text
                for p in prompts}

    async def one(async_client, prompt):
        pieces = []
        stream = await async_client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=20,
                                                       stream=True)
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
        return prompt, "".join(pieces)

    async def all_of_them():
        async_client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        return await asyncio.gather(*(one(async_client, prompts[i % len(prompts)]) for i in range(32)))

    results = asyncio.run(all_of_them())
    assert len(results) == 32
    for prompt, text in results:  # batched with 31 others, each reply is still its own greedy continuation
        assert text == expected[prompt]


def test_client_that_disconnects_frees_its_slot(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"prompt": "Once", "max_tokens": 200, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(f"{server}/health").json()["in_flight"] == 1
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server}/health").json()["in_flight"] == 0


def test_bad_command_lines_are_one_line_errors(tmp_path, model_folder, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--port", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = start_server(model_folder, taken.getsockname()[1])
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert "cannot listen on 127.0.0.1" in output and "Traceback" not in output
