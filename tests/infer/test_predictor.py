"""The pure predictor: arrays or PIL images of any size in, text and arrays out, batched,
equal to the generation functions it wraps, reproducible, and safe to share between threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from utamoe.data.conversations import Turn
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig

from ..model.helpers import TASKS, images, tiny_model
from .batch import answers, pictures


@pytest.fixture(scope="module")
def predictor():
    model, tok, _ = tiny_model()
    return Predictor(model, tok)


def test_answers_equal_generation_and_take_any_image(predictor):
    img = images(1)[0]
    want = answers(predictor.model, predictor.encoder, ["vqa", "vqa"], ["a", "b"], [img, img])
    assert predictor.answer(img, ["a", "b"]) == want
    assert predictor.answer(Image.fromarray(img), ["a", "b"]) == want  # PIL works too
    assert predictor.answer([img, img], ["a", "b"]) == want  # one image per question
    small = np.asarray(Image.fromarray(img).resize((20, 30)))
    assert len(predictor.answer(small, "what color is the circle ?")) == 1  # resized, not refused


def test_generate_and_edit_return_uint8_arrays(predictor):
    cfg = SamplingConfig(temperature=1.0, seed=3)
    out = predictor.generate(["a red circle at the top left", "blue"], cfg)
    assert all(x.shape == (48, 48, 3) and x.dtype == np.uint8 for x in out)
    want = pictures(predictor.model, predictor.encoder, ["a red circle at the top left", "blue"], cfg)
    assert all(np.array_equal(a, b) for a, b in zip(out, want))
    edited = predictor.edit(images(1)[0], ["make the circle blue"], cfg)
    assert edited[0].shape == (48, 48, 3)


def test_threads_get_the_results_of_sequential_calls(predictor):
    cfg = SamplingConfig(temperature=1.0, seed=5)
    want = [predictor.generate([f"prompt {i}"], cfg)[0] for i in range(4)]
    got = [None] * 4

    def work(i):
        got[i] = predictor.generate([f"prompt {i}"], cfg)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("call, message", [
    (lambda p: p.answer(images(1)[0], []), "at least one question"),
    (lambda p: p.answer(images(1)[0], ["  "]), "is empty"),
    (lambda p: p.answer(None, ["q"]), "needs an input image"),
    (lambda p: p.answer(images(2), ["q"] * 3), "2 images for 3 questions"),
    (lambda p: p.answer(images(1)[0], ["q"], task="t2i"), "use generate"),
    (lambda p: p.generate(["x"], task="vqa"), "use answer"),
    (lambda p: p.answer(np.zeros((4, 4, 2)), ["q"]), "channels last"),
])
def test_bad_inputs_are_input_errors(predictor, call, message):
    with pytest.raises(InputError, match=message):
        call(predictor)


def test_load_rejects_missing_dirs_and_devices(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Predictor.load(tmp_path / "none")
    with pytest.raises(InputError, match="not a torch device"):
        Predictor.load(tmp_path, device="foo")


def test_an_optional_image_is_read_when_given():
    """instruct takes an image or none: per question, and the answer with an image is the one the
    engine gives that image (not the text-only answer, unless the model ignores it)."""
    model, tok, _ = tiny_model(tasks=(*TASKS, "instruct"))
    predictor = Predictor(model, tok)
    img = images(1)[0]
    greedy = SamplingConfig(max_new_tokens=4)
    text_only = predictor.answer(None, ["what is it?"], task="instruct", sampling=greedy)
    mixed = predictor.answer([img, None], ["what is it?", "what is it?"], task="instruct",
                             sampling=greedy)
    shared = predictor.answer(img, ["what is it?"], task="instruct", sampling=greedy)
    assert mixed[1] == text_only[0] and mixed[0] == shared[0]
    with pytest.raises(InputError, match="2 images for 1 questions"):
        predictor.answer([img, img], ["q"], task="instruct")


@pytest.mark.parametrize("token", ["<und_slot>", "<img>", "</img>", "<eos>", "<code_slot>", "<t2i>"])
def test_special_token_text_in_prompts_is_text(predictor, token):
    """A prompt holding the string of a special token is answered like any text (issue 28,
    item 3): no traceback from answer, generate, edit or converse."""
    img = images(1)[0]
    text = f"what {token} color{token} is it ?"
    assert isinstance(predictor.answer(img, [text])[0], str)
    assert predictor.generate([text])[0].shape == (48, 48, 3)
    assert predictor.edit(img, [text])[0].shape == (48, 48, 3)
    assert isinstance(predictor.converse([[Turn("user", text, img)]], "vqa")[0], str)


def test_results_count_their_tokens_and_say_whether_they_stopped(predictor):
    from utamoe.data.conversations import Turn

    img = images(1)[0]
    turns = [Turn("user", "what color is the circle ?", img)]
    req = predictor.conversation_request(turns, "dialog", SamplingConfig(max_new_tokens=3))
    gen = predictor.request("t2i", "a red circle")
    text, image = predictor.run([req, gen])
    assert 1 <= text.tokens <= 3 and (text.stopped or text.tokens == 3)
    assert text.text == predictor.converse([turns], "dialog", SamplingConfig(max_new_tokens=3))[0]
    assert image.tokens == predictor.code_grid ** 2 and not image.stopped
    assert predictor.prompt_tokens(req) == len(predictor.encoder.conversation("dialog", turns).input_ids)
    assert predictor.prompt_tokens(gen) == len(predictor.encoder.prefix("t2i", "a red circle").input_ids)
    with pytest.raises(InputError, match="must end with a user turn"):
        predictor.conversation_request([Turn("user", "hi"), Turn("assistant", "yes")])
    with pytest.raises(InputError, match="produces images"):
        predictor.conversation_request(turns, "t2i")


def test_loglikelihood_ranks_the_greedy_answer_first_in_any_batch(predictor):
    img, q = images(1)[0], "what color is the circle ?"
    first = predictor.answer(img, q, sampling=SamplingConfig(max_new_tokens=1))[0]
    options = ["red", "blue", "yes", "no", "circle"]
    if first not in options:
        options.append(first)
    scores = predictor.loglikelihood("vqa", [q] * len(options), options, img)
    best = max(range(len(options)), key=lambda i: scores[i][0])
    assert options[best] == first and scores[best][1]
    assert all(lp < 0 for lp, _ in scores)
    assert [g for _, g in scores] == [o == first for o in options]
    alone = predictor.loglikelihood("vqa", q, options[0], img)[0]
    assert alone[0] == pytest.approx(scores[0][0], abs=1e-4)  # padding changes nothing
    two = predictor.loglikelihood("vqa", q, "red blue", img)[0][0]
    assert two < scores[options.index("red")][0]  # one more token, less likely
    with pytest.raises(InputError, match="produces images"):
        predictor.loglikelihood("t2i", "x", "y")
