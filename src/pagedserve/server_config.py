"""The API server's configuration (`pagedserve serve`'s server flags, spelled as vLLM's). Each field's docstring is its
CLI help (`cli/args.py`); the engine's configuration is `config.py`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    """Address to bind."""

    port: int = 8000
    """Port to bind."""

    served_model_name: list[str] | None = None
    """Names the API accepts in the model field; the first is reported. Default: the model path's name."""

    api_key: str | None = None
    """Require this bearer key on every route but probes (also from VLLM_API_KEY or PAGEDSERVE_API_KEY)."""

    max_num_queued_reqs: int = 1024
    """Requests admitted but not yet finished beyond which new ones get 503 with Retry-After."""

    max_request_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger ones get 413 before parsing."""

    max_n: int = 16
    """Largest n (samples per request) accepted."""

    shutdown_timeout: float = 30.0
    """Seconds in-flight requests get to finish after SIGTERM."""

    disable_log_requests: bool = False
    """Do not log one line per finished request."""

    enable_log_requests: bool | None = None
    """vLLM's newer spelling: --enable-log-requests logs one line per finished request (pagedserve's default
    anyway), --no-enable-log-requests does not (as --disable-log-requests); --enable-log-requests with --disable-log-requests is
    refused."""

    disable_frontend_multiprocessing: bool = False
    """vLLM's flag, with vLLM V1's effect: none. The engine's front end (tokenizing, detokenizing) already runs in
    the API server's process, and the engine core in its own (PAGEDSERVE_ENABLE_ENGINE_PROCESS=0 keeps it in)."""

    disable_uvicorn_access_log: bool = False
    """No uvicorn access log line per HTTP request (vLLM's flag)."""

    root_path: str | None = None
    """The path prefix a proxy serves the API under (vLLM's flag; FastAPI's root_path): the routes stay where they
    are, the OpenAPI docs point below the prefix."""

    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    """CORS: origins a browser may call the API from (vLLM's flag and default: any; a JSON list, e.g.
    '["https://app.example.com"]')."""

    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    """CORS: methods allowed from those origins (vLLM's flag; a JSON list)."""

    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    """CORS: request headers allowed from those origins (vLLM's flag; a JSON list)."""

    allow_credentials: bool = False
    """CORS: let browsers send cookies and HTTP authentication (vLLM's flag)."""

    disable_fastapi_docs: bool = False
    """Serve no OpenAPI schema, Swagger UI or ReDoc (/openapi.json, /docs, /redoc; vLLM's flag)."""

    chat_template_content_format: Literal["auto", "string", "openai"] = "auto"
    """How a message's content reaches the chat template (vLLM's flag): string (text parts joined by newlines),
    openai (a list of {"type": "text", "text": ...} parts), or auto: openai when the template loops over a
    message's content, else string."""

    response_role: str = "assistant"
    """The role of chat completions' messages (vLLM's flag)."""

    enable_prompt_tokens_details: bool = False
    """usage.prompt_tokens_details.cached_tokens: the prompt tokens served from the prefix cache, when there are
    any (vLLM's flag)."""

    enable_force_include_usage: bool = False
    """Include usage in every streamed response, as if each request asked for stream_options include_usage and
    continuous_usage_stats: every chunk carries the usage so far, and a last chunk the total (vLLM's flag)."""

    disable_log_stats: bool = False
    """Do not log the periodic stats line."""

    uvicorn_log_level: str = "info"
    """Log level of uvicorn."""

    metrics_require_auth: bool = False
    """Also require the API key on /metrics (open by default so Prometheus can scrape)."""

    enable_server_load_tracking: bool = False
    """GET /load reports the requests in flight (vLLM's flag; without it /load says 0, as vLLM's)."""

    ready_stall_seconds: float = 30.0
    """/ready turns 503 when the engine has work but made no step for this long (wedged engine)."""

    enable_auto_tool_choice: bool = False
    """Allow tool_choice "auto" (also the default when a request has tools): the model decides, and
    --tool-call-parser reads its calls out of the text. "required" and named choices work without it (a grammar)."""

    return_tokens_as_token_ids: bool = False
    """Name logprobs' tokens "token_id:N" rather than by their text (vLLM's flag; a request can also ask), so tokens
    that are not valid UTF-8 on their own stay identifiable."""

    reasoning_parser: Literal["deepseek_r1", "qwen3", "granite"] | None = None
    """Split a thinking model's <think>...</think> text into the chat message's `reasoning` field (vLLM's flag):
    deepseek_r1 (DeepSeek-R1, QwQ: the block may open in the prompt), qwen3 (Qwen3: the model opens it) or granite
    (Granite 3.2 / 3.3: "Here is my thought process:" ... "Here is my response:")."""

    lora_modules: list[str] | None = None
    """LoRA adapters to serve (vLLM's flag, with --enable-lora): name=path, or JSON {"name": ..., "path": ...,
    "base_model_name": ...}; a request selects one by giving its name as the model."""

    tool_call_parser: str | None = None
    """How the model writes tool calls, for tool_choice "auto": hermes (<tool_call>{...}</tool_call>: Hermes,
    Qwen), llama3_json ({"name": ..., "parameters": ...}: Llama 3.x) or pythonic ([f(a=1), g(b='x')]: Llama
    3.2 / 4, Gemma 3)."""

    @property
    def log_requests(self) -> bool:
        """One log line per finished request: unless --disable-log-requests or --no-enable-log-requests."""
        return not self.disable_log_requests and self.enable_log_requests is not False
