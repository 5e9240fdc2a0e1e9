"""Request bodies of the HTTP API: every field typed and bounded, unknown fields refused, so a
bad request is a 422 that names the field (pydantic) before any work is queued."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Finite = dict(allow_inf_nan=False)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy", **Finite)
    top_k: int = Field(0, ge=0, le=100_000, description="0 = no top-k filter")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    stream: bool = Field(False, description="server-sent events: token / progress, then result")
    timeout_s: float | None = Field(None, gt=0.0, le=3600.0, description="this request's deadline",
                                    **Finite)


class AnswerRequest(_Body):
    image: str = Field(..., description="the image, base64 (PNG, JPEG, ...; any size and mode)")
    question: str = Field(..., description="the question or prompt")
    task: str = Field("vqa", description="a text task of the model (see /health)")
    max_new_tokens: int = Field(32, ge=1, le=512)


class _ImageBody(_Body):
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 = greedy", **Finite)
    cfg_scale: float = Field(3.0, ge=0.0, le=30.0, description="1 = no guidance", **Finite)
    num_images: int = Field(1, ge=1, le=8, description="image j uses seed + j")
    trace: bool = Field(False, description="return each code's expert group and experts per layer")


class GenerateRequest(_ImageBody):
    prompt: str = Field(..., description="what to draw")


class EditRequest(_ImageBody):
    image: str = Field(..., description="the image to edit, base64")
    instruction: str = Field(..., description="the edit instruction")
