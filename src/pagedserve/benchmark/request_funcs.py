"""One streaming request to an OpenAI-compatible server, timed the way `vllm bench serve` times it.

TTFT is send → first chunk carrying generated text; ITL are the gaps between later text chunks; E2EL is
send → last chunk with choices. Output tokens come from the usage chunk (`stream_options.include_usage`);
when a server sends none the metrics step counts them with the tokenizer instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class RequestFuncInput:
    prompt: str
    prompt_len: int
    output_len: int
    model: str
    api_url: str  # base url + endpoint
    ignore_eos: bool = False
    temperature: float = 0.0
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestFuncOutput:
    success: bool = False
    generated_text: str = ""
    prompt_len: int = 0
    output_tokens: int | None = None  # from the usage chunk; None when the server sent none
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)  # seconds between text chunks
    latency: float = 0.0  # seconds, see below
    start_time: float = 0.0  # perf_counter() when the request was sent
    # E2EL for successes; for failures, how long until the failure showed (never in latency statistics)
    error: str = ""


def build_payload(request: RequestFuncInput, endpoint: str) -> dict[str, Any]:
    """The JSON body vLLM's benchmark sends (repetition_penalty always present, usage requested)."""
    payload: dict[str, Any] = {
        "model": request.model,
        "temperature": request.temperature,
        "repetition_penalty": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "/v1/chat/completions":
        payload["messages"] = [{"role": "user", "content": request.prompt}]
        # vLLM's client sends max_completion_tokens; max_tokens too so servers that predate it stop as well.
        payload["max_completion_tokens"] = request.output_len
        payload["max_tokens"] = request.output_len
    else:
        payload["prompt"] = request.prompt
        payload["max_tokens"] = request.output_len
    if request.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(request.extra_body)
    return payload


async def iter_sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent-events body, whatever the network chunking."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip().decode("utf-8")
    for line in buffer.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip().decode("utf-8")


def _chunk_text(choice: dict[str, Any], endpoint: str) -> str:
    if endpoint == "/v1/chat/completions":
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


def _error_message(body: str) -> str:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:200]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)[:200]
    return str(error)[:200]


async def send_streaming_request(
    session: aiohttp.ClientSession, request: RequestFuncInput, endpoint: str
) -> RequestFuncOutput:
    """POST one streaming request and time its chunks. Never raises: failures come back with `error` set."""
    output = RequestFuncOutput(prompt_len=request.prompt_len)
    await _stream(session, request, endpoint, output)
    if not output.success:
        output.latency = time.perf_counter() - output.start_time
    return output


async def _stream(
    session: aiohttp.ClientSession, request: RequestFuncInput, endpoint: str, output: RequestFuncOutput
) -> None:
    headers = {"Content-Type": "application/json"}
    if request.api_key:
        headers["Authorization"] = f"Bearer {request.api_key}"
    payload = build_payload(request, endpoint)
    text_parts: list[str] = []
    start = time.perf_counter()
    output.start_time = start
    last_chunk = start
    last_text_chunk: float | None = None
    got_choices = False
    try:
        async with session.post(request.api_url, json=payload, headers=headers) as response:
            if response.status != 200:
                body = await response.text()
                output.error = f"HTTP {response.status}: {_error_message(body) or response.reason}"
                return
            async for data in iter_sse_data(response):
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    output.error = f"malformed stream chunk: {data[:100]!r}"
                    return
                if not isinstance(chunk, dict):
                    output.error = f"malformed stream chunk: {data[:100]!r}"
                    return
                if chunk.get("error"):
                    output.error = f"stream error: {_error_message(data)}"
                    return
                now = time.perf_counter()
                choices = chunk.get("choices")
                if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                    got_choices = True
                    last_chunk = now
                    text = _chunk_text(choices[0], endpoint)
                    if text:
                        if last_text_chunk is None:
                            output.ttft = now - start
                        else:
                            output.itl.append(now - last_text_chunk)
                        last_text_chunk = now
                        text_parts.append(text)
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    output.output_tokens = usage["completion_tokens"]
    except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError) as exc:
        output.error = f"{type(exc).__name__}: {exc}".strip()
        return
    if not got_choices:
        output.error = "the stream ended without a chunk carrying choices"
        return
    if last_text_chunk is None:
        # An empty completion: its first (only) chunk stands in for the first token.
        output.ttft = last_chunk - start
    output.generated_text = "".join(text_parts)
    output.latency = last_chunk - start
    output.success = True
