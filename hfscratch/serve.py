"""`hfscratch serve MODEL`: an OpenAI-compatible HTTP server, with a web chat page at `/`, for any causal LM folder.

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (both stream as server-sent events with
`"stream": true`), `GET /v1/models`, `GET /health`, and `GET /` (the chat page). Concurrent requests share the model
through transformers' continuous batching (a paged KV cache; a request joins the running batch as soon as it
arrives). The number of requests in flight is bounded (429 beyond it), each has a deadline, and a client that
disconnects is cancelled at once, which frees its place in the batch and in the queue.

Hand-written on aiohttp because `transformers serve` looks model classes up by name inside `transformers`, so it
cannot load hfscratch (or other remote-code) folders. Every bad request gets an OpenAI-style JSON error with a 4xx
status, never a 500 or a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import time
from importlib import resources

from aiohttp import web
from transformers import ContinuousBatchingConfig, GenerationConfig

from .devices import resolve_device
from .errors import ConfigError
from .hub import resolve_model_path
from .loading import load_for_inference, stop_token_ids

DEFAULT_MAX_TOKENS = 256
MAX_STOP_STRINGS = 4  # as OpenAI's API
ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request the client can fix: becomes an OpenAI-style JSON error with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> web.Response:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


# ------------------------------------------------------------------------------------------- request checks


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or not low <= value <= high:
        shown = f"an integer in [{low}, {high}]" if integer else f"a number in [{low}, {high}]"
        raise RequestError(400, f"'{name}' must be {shown}, got {value!r}", param=name)
    return value


def _text_content(message: dict, index: int) -> str:
    """A message's content: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts."""
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise RequestError(400, f"messages[{index}].content must be a string or a list of text parts",
                           param=f"messages.{index}.content")
    return content


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS}", param="stop")
    return stop


# ------------------------------------------------------------------------------------------- generation


class Generation:
    """One request's stream of text: fed by the batching thread's callbacks, read by the HTTP handler."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text = ""  # sent so far
        self.tokens = 0
        self.finish_reason: str | None = None

    def on_output(self, output) -> None:  # called on the event loop (register_result_handler)
        self.queue.put_nowait(output)

    def advance(self, output, max_tokens: int) -> str:
        """The new text in `output` (cumulative tokens), holding back what may be the start of a stop string or
        an incomplete UTF-8 character; sets `finish_reason` when the request ends."""
        if output.error is not None:
            raise RuntimeError(output.error)
        self.tokens = len(output.generated_tokens)
        # No clean-up of spaces before punctuation: it can rewrite text already sent when the next token arrives.
        full = self.tokenizer.decode(output.generated_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = min((full.find(s) for s in self.stop if s in full), default=-1)
        if cut >= 0:
            full, self.finish_reason = full[:cut], "stop"
        elif output.is_finished():
            self.finish_reason = "length" if self.tokens >= max_tokens else "stop"
        else:
            hold = max((k for s in self.stop for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
            full = full[: len(full) - hold]
            if full.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
                full = full.rstrip("\ufffd")
        delta, self.text = (full[len(self.text):], full) if full.startswith(self.text) else ("", self.text)
        return delta


class Engine:
    """The model, its tokenizer and transformers' continuous-batching manager, with the server's limits."""

    def __init__(self, model, tokenizer, name: str, max_in_flight: int, timeout: float):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_in_flight, self.timeout = max_in_flight, timeout
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.in_flight = 0
        self.created = int(time.time())
        # Sampling settings are per request (temperature, top_k, top_p); the shared config only has to make the
        # batching manager build those processors, which it does for values other than their no-op defaults.
        # Greedy decoding (temperature 0) is top_k=1 of the same sampler: exactly the argmax.
        generation_config = GenerationConfig(
            do_sample=True, temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=DEFAULT_MAX_TOKENS,
            eos_token_id=self.stop_ids or None, pad_token_id=tokenizer.pad_token_id)
        page = 32
        # Sized for every allowed request at full context; on a CPU the manager would otherwise size the cache
        # from a share of the machine's RAM.
        blocks = max_in_flight * math.ceil(self.context / page) + 2
        self.manager = model.init_continuous_batching(
            generation_config=generation_config,
            continuous_batching_config=ContinuousBatchingConfig(
                page_size=page, num_blocks=blocks, max_batch_tokens=max(self.context, 512), use_cuda_graph=False,
                per_request_processors=True))

    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop(block=True, timeout=5)

    def check_budget(self, prompt_ids: list[int], max_tokens: int) -> None:
        if not prompt_ids:
            raise RequestError(400, "the prompt is empty", param="prompt")
        if len(prompt_ids) + max_tokens > self.context:
            raise RequestError(400, f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                               f"model's context of {self.context} tokens; shorten the prompt or lower max_tokens",
                               param="max_tokens", code="context_length_exceeded")

    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
                       stop: list[str]):
        """Yield text deltas for one request; the Generation object (finish reason, token count) comes first."""
        if self.in_flight >= self.max_in_flight:
            raise RequestError(429, f"the server is busy ({self.in_flight} requests in flight, the limit set by "
                               "--max-in-flight); retry shortly")
        self.in_flight += 1
        request_id = f"req-{secrets.token_hex(8)}"
        generation = Generation(self.tokenizer, stop)
        sampling = {"temperature": float(temperature or 1.0), "top_p": float(top_p),
                    "top_k": 1 if temperature == 0 else int(self.model.config.vocab_size)}
        finished = False
        try:
            self.manager.register_result_handler(request_id, generation.on_output)
            self.manager.add_request(prompt_ids, request_id=request_id, max_new_tokens=max_tokens, streaming=True,
                                     eos_token_id=self.stop_ids or None, **sampling)
            yield generation
            deadline = time.monotonic() + self.timeout
            while generation.finish_reason is None:
                remaining = deadline - time.monotonic()
                try:
                    output = await asyncio.wait_for(generation.queue.get(), timeout=max(remaining, 0.001))
                except asyncio.TimeoutError:
                    raise RequestError(408, f"generation did not finish within {self.timeout:g} s (--request-timeout); "
                                       "lower max_tokens or retry") from None
                finished = output.is_finished()
                if delta := generation.advance(output, max_tokens):
                    yield delta
        finally:
            self.in_flight -= 1
            if not finished:  # a stop string, a timeout or a client that went away: free the slot now
                self.manager.cancel_request(request_id)


# ------------------------------------------------------------------------------------------- HTTP


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chunk(kind: str, request_id: str, created: int, model: str, choice: dict) -> bytes:
    payload = {"id": request_id, "object": kind, "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(payload)}\n\n".encode()


class Server:
    def __init__(self, engine: Engine, api_key: str | None):
        self.engine, self.api_key = engine, api_key
        template = resources.files("hfscratch").joinpath("serve_chat.html").read_text(encoding="utf-8")
        self.page_html = template.replace("{{MODEL}}", engine.name)
        self.app = web.Application(middlewares=[self.errors_as_json], client_max_size=8 * 2**20)
        self.app.add_routes([
            web.get("/", self.page), web.get("/health", self.health), web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat_completions), web.post("/v1/completions", self.completions)])

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler):
        try:
            if request.path.startswith("/v1/") and self.api_key:
                given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if not secrets.compare_digest(given, self.api_key):
                    raise RequestError(401, "missing or wrong API key; send it as 'Authorization: Bearer KEY'")
            return await handler(request)
        except RequestError as err:
            return err.response()
        except web.HTTPException as err:  # unknown path, wrong method
            if err.status < 400:
                raise
            return RequestError(err.status, f"{request.method} {request.path}: {err.reason}").response()
        except Exception as err:  # a failure of ours, not the request's: still JSON, and the server keeps serving
            body = {"error": {"message": f"internal error: {err}", "type": "server_error", "param": None, "code": None}}
            return web.json_response(body, status=500)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page_html, content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.engine.name, "in_flight": self.engine.in_flight})

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.engine.name, "object": "model", "created": self.engine.created, "owned_by": "hfscratch"}
        return web.json_response({"object": "list", "data": [card]})

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.engine.name:
            raise RequestError(404, f"model {model!r} is not served here; this server holds {self.engine.name!r} "
                               "(see /v1/models)", param="model", code="model_not_found")
        if _number(body, "n", 1, 1, 1, integer=True) != 1:
            raise RequestError(400, "only n=1 is supported", param="n")
        return body

    def _sampling(self, body: dict, prompt_ids: list[int]) -> dict:
        sampling = {"temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
                    "top_p": _number(body, "top_p", 1.0, 1e-6, 1.0), "stop": _stop_strings(body)}
        given = body.get("max_completion_tokens", body.get("max_tokens"))
        # Not given: up to DEFAULT_MAX_TOKENS, within what the context has left after the prompt.
        fallback = max(1, min(DEFAULT_MAX_TOKENS, self.engine.context - len(prompt_ids)))
        max_tokens = _number({"max_tokens": given}, "max_tokens", fallback, 1, 10**6, integer=True)
        self.engine.check_budget(prompt_ids, max_tokens)
        return {"max_tokens": max_tokens, **sampling}

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
        conversation = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise RequestError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}",
                                   param=f"messages.{index}.role")
            conversation.append({"role": message["role"], "content": _text_content(message, index)})
        if not getattr(self.engine.tokenizer, "chat_template", None):
            raise RequestError(400, "this model's tokenizer has no chat template; use /v1/completions with a prompt")
        prompt_ids = list(self.engine.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        return await self._respond(request, body, prompt_ids, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        prompt_ids = self.engine.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return await self._respond(request, body, prompt_ids, chat=False)

    async def _respond(self, request: web.Request, body: dict, prompt_ids: list[int], chat: bool):
        sampling = self._sampling(body, prompt_ids)
        stream, stream_options = body.get("stream", False), body.get("stream_options") or {}
        if not isinstance(stream, bool) or not isinstance(stream_options, dict):
            raise RequestError(400, "'stream' must be true or false and 'stream_options' an object", param="stream")
        request_id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        kind = "chat.completion" if chat else "text_completion"
        created, name = int(time.time()), self.engine.name
        deltas = self.engine.generate(prompt_ids, **sampling)
        generation = await deltas.__anext__()  # raises 429 before any byte is sent
        if not stream:
            text = "".join([delta async for delta in deltas])
            choice = {"index": 0, "finish_reason": generation.finish_reason, "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return web.json_response({"id": request_id, "object": kind, "created": created, "model": name,
                                      "choices": [choice], "usage": usage(len(prompt_ids), generation.tokens)})
        kind += ".chunk" if chat else ""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if chat:
                await response.write(_chunk(kind, request_id, created, name,
                                            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
            async for delta in deltas:
                piece = {"delta": {"content": delta}} if chat else {"text": delta, "logprobs": None}
                await response.write(_chunk(kind, request_id, created, name, {"index": 0, **piece, "finish_reason": None}))
            last = {"delta": {}} if chat else {"text": "", "logprobs": None}
            await response.write(_chunk(kind, request_id, created, name,
                                        {"index": 0, **last, "finish_reason": generation.finish_reason}))
            if stream_options.get("include_usage"):
                payload = {"id": request_id, "object": kind, "created": created, "model": name, "choices": [],
                           "usage": usage(len(prompt_ids), generation.tokens)}
                await response.write(f"data: {json.dumps(payload)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except RequestError as err:  # the deadline passed mid-stream: the status is already sent, so say it inline
            await response.write(f"data: {json.dumps({'error': {'message': err.message, 'code': err.status}})}\n\n".encode())
        except ConnectionResetError:  # the client went away: closing `deltas` cancels its request
            pass
        finally:
            await deltas.aclose()
        return response


# ------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (save_pretrained output) or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("HFSCRATCH_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $HFSCRATCH_API_KEY, else none)")
    parser.add_argument("--served-model-name", default=None, help="the model name clients send (default: the folder name)")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a Hub model's own modeling code to run")
    parser.add_argument("--max-in-flight", type=int, default=64, help="requests generating or queued at once; more get 429")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds one request may take (then 408)")


def build_server(args: argparse.Namespace) -> Server:
    if args.max_in_flight < 1 or args.request_timeout <= 0:
        raise ConfigError("--max-in-flight must be >= 1 and --request-timeout > 0")
    folder = resolve_model_path(args.model, revision=args.revision)
    model, tokenizer = load_for_inference(folder, device=resolve_device(args.device), dtype=args.dtype,
                                          trust_remote_code=args.trust_remote_code)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    engine = Engine(model, tokenizer, name, args.max_in_flight, args.request_timeout)
    return Server(engine, args.api_key)


async def _serve(server: Server, host: str, port: int) -> None:
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass a free --port") from None
    server.engine.start()
    print(f"hfscratch serve: {server.engine.name} at http://{host}:{port}/ (chat page) and http://{host}:{port}/v1 "
          f"(OpenAI API{', key required' if server.api_key else ''}); Ctrl-C stops", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.engine.stop()
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    server = build_server(args)
    try:
        asyncio.run(_serve(server, args.host, args.port))
    except KeyboardInterrupt:
        print("hfscratch serve: stopped", flush=True)
    return 0
