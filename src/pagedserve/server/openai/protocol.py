"""Request bodies of the OpenAI-compatible endpoints, as pydantic models (they also make the OpenAPI schema).

Types are strict so that `"10"` or `1.5` for an integer, or `"1"` for a number, are refused (400) rather than
coerced. Ranges are checked by `SamplingParams`, which names the offending field. Fields of the OpenAI / vLLM
request models that pagedserve does not implement are refused by name when set (`server/unsupported.py`); other
unknown fields are accepted with a logged warning, as vLLM does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr

# A JSON number: int or float, never a string or a bool.
Number = Annotated[float, Strict()]
StopField = Union[StrictStr, list[StrictStr], None]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    """Nested objects whose every key matters: an unknown key is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaFormat(_Strict):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    # type structural_tag (vLLM): the same object as structured_outputs.structural_tag
    structures: list[dict[str, Any]] | None = None
    triggers: list[StrictStr] | None = None


class StructuredOutputsField(_Strict):
    """vLLM's `structured_outputs` request field: exactly one constraint."""

    json_: Union[StrictStr, dict[str, Any], None] = Field(default=None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    json_object: StrictBool | None = None
    structural_tag: Union[StrictStr, dict[str, Any], None] = None


class StreamOptions(_Lenient):
    include_usage: StrictBool | None = False
    continuous_usage_stats: StrictBool | None = False


class SamplingFields(BaseModel):
    """Fields shared by chat and completions (vLLM's extensions included). Unknown fields are kept in
    `model_extra` so the endpoint can refuse the ones it knows but does not implement."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    n: StrictInt | None = 1
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    seed: StrictInt | None = None
    stop: StopField = None
    stop_token_ids: list[StrictInt] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    repetition_penalty: Number | None = None
    min_tokens: StrictInt | None = None
    ignore_eos: StrictBool | None = False
    skip_special_tokens: StrictBool | None = True
    spaces_between_special_tokens: StrictBool | None = True
    include_stop_str_in_output: StrictBool | None = False
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None
    logit_bias: dict[StrictStr, Number] | None = None  # OpenAI's: token id (as a JSON key) -> bias
    allowed_token_ids: list[StrictInt] | None = None
    bad_words: list[StrictStr] | None = None
    truncate_prompt_tokens: StrictInt | None = None
    cache_salt: StrictStr | None = None
    return_token_ids: StrictBool | None = None
    priority: StrictInt | None = None
    return_tokens_as_token_ids: StrictBool | None = None
    prompt_logprobs: StrictInt | None = None  # vLLM's: each prompt token's logprob and the top-k others


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Lenient):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends it


class ToolCallMessage(_Lenient):
    """A tool call in an assistant message sent back by the client."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[StrictStr, list[TextContentPart], None] = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallMessage] | None = None  # assistant messages
    tool_call_id: StrictStr | None = None  # tool messages


class FunctionDefinition(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = None
    add_generation_prompt: StrictBool | None = True
    continue_final_message: StrictBool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: StrictBool | None = True  # with --reasoning-parser: false drops the reasoning field
    add_special_tokens: StrictBool | None = (
        False  # vLLM's: true adds the tokenizer's BOS to the rendered chat
    )
    tools: list[ChatTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: StrictBool | None = True


# str | list[str] | list[int] | list[list[int]]
PromptField = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


class CompletionRequest(SamplingFields):
    prompt: PromptField
    max_tokens: StrictInt | None = 16
    logprobs: StrictInt | None = None
    echo: StrictBool | None = False
    add_special_tokens: StrictBool | None = True
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class EmbeddingRequest(_Lenient):
    """OpenAI's embeddings request, with vLLM's extensions (add_special_tokens, truncate_prompt_tokens, normalize,
    priority). Unknown fields are ignored, as OpenAI's `user` is."""

    model: StrictStr | None = None
    input: PromptField
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    add_special_tokens: StrictBool | None = True
    truncate_prompt_tokens: StrictInt | None = None
    normalize: StrictBool | None = None
    priority: StrictInt | None = None


class _ScoreFields(_Lenient):
    """vLLM's fields shared by /score and /rerank."""

    model: StrictStr | None = None
    truncate_prompt_tokens: StrictInt | None = None
    priority: StrictInt | None = None
    use_activation: StrictBool | None = None
    activation: StrictBool | None = None  # vLLM's older spellings of use_activation
    softmax: StrictBool | None = None


class ScoreRequest(_ScoreFields):
    """vLLM's /score: text_1 against each text_2 (one text_1, or as many as text_2, paired in order)."""

    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]


class RerankRequest(_ScoreFields):
    """vLLM's /rerank (Jina and Cohere's shape): the documents ordered by their score against the query."""

    query: StrictStr
    documents: list[StrictStr]
    top_n: StrictInt = 0


class ClassificationRequest(_ScoreFields):
    """vLLM's /classify: each input's label probabilities from a sequence classifier."""

    input: PromptField
    add_special_tokens: StrictBool | None = True


class TokenizeRequest(_Lenient):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool | None = True
    add_generation_prompt: StrictBool | None = True
    continue_final_message: StrictBool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: StrictBool | None = False


class DetokenizeRequest(_Lenient):
    model: StrictStr | None = None
    tokens: list[StrictInt]


# ---- /v1/responses -------------------------------------------------------------------------------------------


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: StrictStr
    annotations: list[Any] | None = None  # output_text parts sent back carry these


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[StrictStr, list[InputText]]
    id: StrictStr | None = None  # an earlier output item sent back
    status: StrictStr | None = None


class FunctionCallItem(_Strict):
    """An earlier answer's function call, sent back with its output (the next item)."""

    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr
    id: StrictStr | None = None
    status: StrictStr | None = None


class ResponsesTool(_Strict):
    """A function tool, as the Responses API spells it (flat: no "function" object)."""

    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ResponsesNamedTool(_Strict):
    type: Literal["function"]
    name: StrictStr


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class TextOptions(_Strict):
    format: TextFormat | None = None
    verbosity: StrictStr | None = None


class ResponsesRequest(BaseModel):
    """/v1/responses (text): unknown fields kept in model_extra, where the endpoint refuses those it knows."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None
    input: Union[StrictStr, list[Union[InputMessage, FunctionCallItem, FunctionCallOutputItem]]]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    stream: StrictBool | None = False
    text: TextOptions | None = None
    store: StrictBool | None = None  # accepted: nothing is stored here (reported as false)
    metadata: dict[str, Any] | None = None
    user: StrictStr | None = None
    parallel_tool_calls: StrictBool | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], ResponsesNamedTool, None] = None
