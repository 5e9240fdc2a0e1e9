"""The OpenAI-compatible endpoints, driven by the official `openai` client against a live server on
loopback: answers, conversations, streamed chunks, images and edits equal the predictor's for the
same seed; usage counts the tokens; bad requests are OpenAI's 4xx errors naming the parameter and
the server keeps serving; the API key works as OpenAI's Bearer header."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from utamoe.data.conversations import Turn
from utamoe.infer.sampling import SamplingConfig

from .conftest import png_b64

openai = pytest.importorskip("openai")

Q = "what color is the circle ?"


@pytest.fixture(scope="module")
def server(predictor):
    from utamoe.serve.app import ServeConfig, create_app

    from .conftest import LiveServer

    with LiveServer(create_app(predictor, ServeConfig(), model_dir="tiny")) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _url(image) -> str:
    return "data:image/png;base64," + png_b64(image)


def _user(text, image=None) -> dict:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": _url(image)}})
    return {"role": "user", "content": parts}


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_models_list_the_model_and_its_tasks(client, predictor):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "utamoe" and {f"utamoe:{t}" for t in predictor.tasks} == set(ids[1:])
    assert client.models.retrieve("utamoe:vqa").id == "utamoe:vqa"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_question_about_an_image_equals_the_predictor_and_counts_usage(client, predictor, image):
    out = client.chat.completions.create(model="utamoe:vqa", messages=[_user(Q, image)],
                                         temperature=0, max_tokens=6)
    want = predictor.answer(image, Q, sampling=SamplingConfig(max_new_tokens=6))[0]
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == want
    req = predictor.request("vqa", Q, image, SamplingConfig(max_new_tokens=6))
    assert out.usage.prompt_tokens == predictor.prompt_tokens(req)
    result = predictor.run([req])[0]
    assert out.usage.completion_tokens == result.tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert choice.finish_reason == ("stop" if result.stopped else "length")


def test_a_conversation_of_several_turns_with_n_choices_and_seeds(client, predictor, image):
    messages = [{"role": "system", "content": "answer briefly"}, _user(Q, image),
                {"role": "assistant", "content": "red"}, _user("and the square ?")]
    out = client.chat.completions.create(model="utamoe", messages=messages, temperature=1.0,
                                         top_p=0.9, n=2, seed=5, max_tokens=5)
    turns = [Turn("user", "answer briefly " + Q, image), Turn("assistant", "red"),
             Turn("user", "and the square ?")]
    for j, choice in enumerate(out.choices):
        want = predictor.converse([turns], "dialog", SamplingConfig(
            temperature=1.0, top_p=0.9, seed=5 + j, max_new_tokens=5))[0]
        assert choice.index == j and choice.message.content == want
    req = predictor.conversation_request(turns, "dialog", SamplingConfig(max_new_tokens=5))
    assert out.usage.prompt_tokens == predictor.prompt_tokens(req)


def test_streamed_chunks_add_up_to_the_answer_and_end_with_usage(client, image):
    kw = dict(model="utamoe:vqa", messages=[_user(Q, image)], temperature=0, max_tokens=8)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stop_strings_cut_the_answer_streamed_or_not(client, image):
    kw = dict(model="utamoe:vqa", messages=[_user(Q, image)], temperature=0, max_tokens=12)
    full = client.chat.completions.create(**kw).choices[0].message.content
    if len(full) < 4:
        pytest.skip(f"the tiny model's answer {full!r} is too short to cut")
    stop = full[len(full) // 2:len(full) // 2 + 2]
    want = full[:full.find(stop)]
    cut = client.chat.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.message.content == want and cut.finish_reason == "stop"
    chunks = list(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want


def test_images_generate_and_edit_equal_the_predictor(client, predictor, image, tmp_path):
    side = predictor.processor.size
    out = client.images.generate(model="utamoe", prompt="a red circle", n=2, size=f"{side}x{side}",
                                 response_format="b64_json", extra_body={"seed": 3})
    for j, item in enumerate(out.data):
        want = predictor.generate("a red circle", SamplingConfig(temperature=1.0, cfg_scale=3.0,
                                                                 seed=3 + j))[0]
        assert np.array_equal(_pixels(item.b64_json), want)
    assert out.usage.output_tokens == 2 * predictor.code_grid ** 2
    Image.fromarray(image).save(tmp_path / "in.png")
    with open(tmp_path / "in.png", "rb") as f:
        edited = client.images.edit(image=f, prompt="make the circle blue", n=1)
    want = predictor.edit(image, "make the circle blue", SamplingConfig(temperature=1.0,
                                                                        cfg_scale=3.0))[0]
    assert np.array_equal(_pixels(edited.data[0].b64_json), want)


@pytest.mark.parametrize("call, error, param", [
    (dict(model="gpt-4o"), openai.NotFoundError, "model"),
    (dict(model="utamoe:t2i"), openai.BadRequestError, "model"),
    (dict(temperature=5), openai.BadRequestError, "temperature"),
    (dict(top_p=0), openai.BadRequestError, "top_p"),
    (dict(n=20), openai.BadRequestError, "n"),
    (dict(frequency_penalty=0.5), openai.BadRequestError, "frequency_penalty"),
    (dict(extra_body={"colour": "red"}), openai.BadRequestError, "colour"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url",
                                                  "image_url": {"url": "data:image/png;base64,@@"}},
                                                 {"type": "text", "text": "q"}]}]),
     openai.BadRequestError, "messages.0.content.0.image_url.url"),
    (dict(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
     openai.BadRequestError, "messages"),
    (dict(messages=[{"role": "user", "content": "   "}]), openai.BadRequestError, "messages.0.content"),
    (dict(messages=[{"role": "tool", "content": "q"}]), openai.BadRequestError, "messages.0"),
])
def test_bad_chat_requests_are_openai_errors_naming_the_parameter(client, image, call, error, param):
    kw = {"model": "utamoe:vqa", "messages": [_user(Q, image)], "max_tokens": 2, **call}
    with pytest.raises(error) as err:
        client.chat.completions.create(**kw)
    body = err.value.body
    assert set(body) >= {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error" and body["param"].startswith(param), body
    assert client.chat.completions.create(model="utamoe:vqa", messages=[_user(Q, image)],
                                          max_tokens=2).choices  # still serving


@pytest.mark.parametrize("call, param", [(dict(size="1024x1024"), "size"),
                                         (dict(response_format="url"), "response_format"),
                                         (dict(prompt=""), "prompt"),
                                         (dict(n=9), "n")])
def test_bad_image_requests_are_400_naming_the_parameter(client, call, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(**{"prompt": "a red circle", **call})
    assert err.value.body["param"] == param and param in err.value.body["message"]


def test_the_api_key_is_openais_bearer_header(live, image):
    with live(api_key="s3cret") as server:
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        out = right.chat.completions.create(model="utamoe:vqa", messages=[_user(Q, image)],
                                            max_tokens=2)
        assert out.choices[0].message.content is not None


def test_chat_can_return_the_experts_trace_and_run_task_spans(client, predictor, image):
    out = client.chat.completions.create(model="utamoe:vqa", messages=[_user(Q, image)],
                                         temperature=0, max_tokens=4,
                                         extra_body={"trace": True, "execute_spans": True})
    body = out.model_dump()
    assert body["groups"] == predictor.group_names
    trace = body["choices"][0]["trace"]
    assert len(trace) == out.usage.completion_tokens and {"group", "experts"} <= set(trace[0]["layers"][0])
    assert isinstance(body["choices"][0]["spans"], list)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="utamoe:vqa", messages=[_user(Q, image)], stream=True,
                                       extra_body={"trace": True})
    assert err.value.body["param"] == "stream"


def test_task_spans_run_through_their_executors_and_errors_stay_per_span(predictor, image):
    import asyncio

    from utamoe.serve.spans import SpanRunner

    spans = asyncio.run(SpanRunner(predictor).run(
        "sure <t2i>a red circle</t2i> and <bogus>x</bogus>", [image]))
    drawn, bad = spans
    assert drawn["tag"] == "t2i" and drawn["error"] is None and len(drawn["images"]) == 1
    assert _pixels(drawn["images"][0]).shape == (predictor.processor.size,) * 2 + (3,)
    assert bad["images"] == [] and bad["error"]["kind"] in ("unknown_tag", "stray_closer")
