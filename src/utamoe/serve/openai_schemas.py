"""Request bodies of the OpenAI-compatible endpoints (serve/openai_routes.py), typed and bounded
as OpenAI documents them, so the official clients and the harnesses built on them (lmms-eval's
`openai_compatible`) talk to `utamoe serve` unchanged.

Unknown fields are refused (a 400 naming the field), as OpenAI does. Parameters a utamoe model
has no use for are accepted only at the value that means "off" (`frequency_penalty: 0`,
`logprobs: false`, `response_format: {"type": "text"}`, ...): a client that asks for more gets
a 400 saying so, never a silent skip. Extensions beyond OpenAI's fields: `top_k`, `trace` (the experts
view) and `execute_spans` (task spans run, serve/spans.py) for chats; for images `cfg_scale`,
`seed`, `temperature`, `top_k`, `top_p` and `trace`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Finite = dict(allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(..., description="a data URL (data:image/png;base64,...) or plain base64; "
                                      "the server fetches nothing")
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | ImagePart]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


def _off(value, off, what: str):
    if value not in (None, off):
        raise ValueError(f"{what} is not supported by utamoe models; leave it out")
    return value


class ChatRequest(_Strict):
    model: str = Field(..., description="an id of GET /v1/models: `utamoe`, or `utamoe:TASK` "
                                        "for one of the model's text tasks")
    messages: list[Message] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy", **Finite)
    top_p: float = Field(1.0, gt=0.0, le=1.0, **Finite)
    top_k: int = Field(0, ge=0, le=100_000, description="extension: 0 = no top-k filter")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    n: int = Field(1, ge=1, le=8, description="choice j samples with seed + j")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="default 0")
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None
    reasoning_effort: str | None = None
    trace: bool = Field(False, description="extension: each answer token's expert group and "
                                           "experts per MoE layer (choices[j].trace; not streamed)")
    execute_spans: bool = Field(False, description="extension: run the answer's task spans "
                                                   "(choices[j].spans; not streamed)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v, info):
        return _off(v, 0, info.field_name)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        return _off(v, False, "logprobs")

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, v):
        return _off(v, 0, "top_logprobs")

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v not in (None, {"type": "text"}):
            raise ValueError('only {"type": "text"} is supported')
        return v

    @field_validator("reasoning_effort")
    @classmethod
    def _no_reasoning(cls, v):
        return _off(v, None, "reasoning_effort")


class _ImageOptions(_Strict):
    model: str | None = Field(None, description="`utamoe` (or `utamoe:TASK`); may be left out")
    n: int = Field(1, ge=1, le=8, description="image j uses seed + j")
    size: str | None = Field(None, description="WxH; only the model's own size (or auto)")
    response_format: Literal["b64_json"] = Field(
        "b64_json", description="images come back in the body (no file is hosted for a url)")
    quality: Literal["auto", "standard"] | None = None
    style: str | None = None
    user: str | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1, description="extension")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="extension; 0 = greedy", **Finite)
    top_k: int = Field(0, ge=0, le=100_000, description="extension")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="extension", **Finite)
    cfg_scale: float = Field(3.0, ge=0.0, le=30.0, description="extension; 1 = no guidance",
                             **Finite)
    trace: bool = Field(False, description="extension: each code's expert group and experts")

    @field_validator("style")
    @classmethod
    def _no_style(cls, v):
        return _off(v, None, "style")


class ImageGenerationRequest(_ImageOptions):
    prompt: str = Field(..., description="what to draw")


class ImageEditOptions(_ImageOptions):
    """The form fields of /v1/images/edits besides the image file."""

    prompt: str = Field(..., description="the edit instruction")
