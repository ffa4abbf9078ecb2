"""The one interface the server uses to reach the engine (vLLM V1's EngineClient).

The server imports this module, `outputs`, `sampling_params`, `errors` and `core.stats` only. Implementations:
`engine.core_client.EngineCoreClient` (the default: the front end on the event loop, the engine core in its own
process) and `engine.async_engine.AsyncEngine` (PAGEDSERVE_ENABLE_ENGINE_PROCESS=0: an in-process `LLMEngine` on a
thread; also what the server's unit tests drive with a fake engine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from pagedserve.core.stats import EngineStats
from pagedserve.engine.chat import ChatOptions
from pagedserve.engine.prompts import PromptInput, TextPrompt, TokensPrompt
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import EngineInfo, RequestOutput
from pagedserve.sampling_params import SamplingParams


class EngineClient(Protocol):
    info: EngineInfo

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (encode/decode, chat template)."""

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        options: ChatOptions | None = None,
        chat_template: str | None = None,
    ) -> list[int]:
        """Token ids of a chat (rendering options: engine/chat.py's ChatOptions). Raises InvalidRequestError on
        malformed messages or options."""

    def check_lora_adapter(self, lora_request: LoRARequest) -> None:
        """InvalidRequestError when LoRA is not enabled or the adapter's folder does not fit the model (blocking:
        reads its config and its weights' header)."""

    def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and stream its cumulative outputs; the last has finished=True. `priority` (lower first)
        counts under --scheduling-policy priority; elsewhere anything but 0 is refused. `lora_request`: the LoRA
        adapter to run it with (--enable-lora); its folder is checked here.

        Raises InvalidRequestError / ContextLengthError before streaming when the request is refused, and
        EngineDeadError if the engine stopped. Closing the iterator (client disconnect) aborts the request.
        """

    async def abort(self, request_id: str) -> None: ...

    @property
    def is_running(self) -> bool:
        """The engine loop is alive."""

    @property
    def last_progress_time(self) -> float:
        """time.monotonic() of the last completed step, or of the last idle check."""

    @property
    def num_unfinished_requests(self) -> int: ...

    def add_stats_listener(self, listener: Callable[[EngineStats], None]) -> None:
        """Called after every engine step (on the engine thread or the event loop): must be quick."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


__all__ = ["EngineClient", "PromptInput", "TextPrompt", "TokensPrompt"]
