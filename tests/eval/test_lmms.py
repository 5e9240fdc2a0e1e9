"""lmms-eval's questions answered by a utamoe model: open answers equal the predictor's (cut at the
task's stop strings), multiple-choice scores are negative log-likelihoods (lmms-eval picks the
smallest), a document with two images is an error. Where lmms-eval is installed (the `lmms` extra;
not in `dev`, see docs/evaluation.md) also: the class registered through its entry point, run in
process by `lmms-eval --model utamoe` on a local task, and lmms-eval's `openai_compatible` backend
against `utamoe serve`, both giving the scores the predictor gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.model.helpers import images, tiny_model
from utamoe.eval.lmms import HarnessModel
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig
from utamoe.model.io import save_model_dir

Q = "what color is the circle ?"


class Req:
    """What the harness hands a model: an object with `args` (lmms-eval's Instance has more)."""

    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def predictor():
    model, tok, _ = tiny_model()
    return Predictor(model, tok)


@pytest.fixture
def harness(predictor):
    h = HarnessModel(predictor, "vqa", batch_size=2)
    docs = [{"image": img, "question": Q} for img in images(3)]
    docs.append({"image": None, "images": images(2), "question": Q})
    h.task_dict = {"t": {"test": docs}}
    return h


def _visual(doc):
    return doc.get("images") or [Image.fromarray(doc["image"])]


def test_open_answers_equal_the_predictor_and_stop_at_until(harness, predictor):
    greedy = predictor.answer(images(3), [Q] * 3, sampling=SamplingConfig(max_new_tokens=6))
    reqs = [Req(Q, {"max_new_tokens": 6, "do_sample": False}, _visual, i, "t", "test") for i in range(3)]
    assert harness.generate_until(reqs) == greedy
    stop = greedy[0][1:3] if len(greedy[0]) > 3 else "\x00"
    cut = harness.generate_until([Req(Q, {"max_new_tokens": 6, "until": [stop]}, _visual, 0, "t",
                                      "test")])
    assert cut == [greedy[0].split(stop)[0]]
    sampled = harness.generate_until([Req(Q, {"max_new_tokens": 6, "do_sample": True,
                                              "temperature": 1.0, "top_p": 0.9}, _visual, 1, "t", "test")])
    want = predictor.run([predictor.request("vqa", Q, images(3)[1], SamplingConfig(
        temperature=1.0, top_p=0.9, max_new_tokens=6))])[0].text
    assert sampled == [want]


def test_multiple_choice_scores_are_negative_log_likelihoods(harness, predictor):
    options = ["red", "blue", "yes"]
    reqs = [Req(Q, " " + o, _visual, 0, "t", "test") for o in options]  # lmms-eval's delimiter
    got = harness.loglikelihood(reqs)
    want = predictor.loglikelihood("vqa", [Q] * 3, options, images(3)[0])
    assert [g for _, g in got] == [g for _, g in want]
    assert np.allclose([nll for nll, _ in got], [-lp for lp, _ in want], atol=1e-5)
    assert all(nll > 0 for nll, _ in got)
    by_target = harness.loglikelihood([Req(Q, lambda doc: "red", _visual, 0, "t", "test")])
    assert by_target[0][0] == pytest.approx(got[0][0], abs=1e-5)


def test_a_document_with_two_images_or_a_wrong_task_is_an_error(harness, predictor):
    with pytest.raises(InputError, match="t document 3 has 2 images"):
        harness.generate_until([Req(Q, {}, _visual, 3, "t", "test")])
    with pytest.raises(InputError, match="not a text task"):
        HarnessModel(predictor, "t2i")
    assert HarnessModel(predictor).task == "dialog"  # the tiny model has conversations


# ---------------------------------------------------------------------- with lmms-eval itself


@pytest.fixture(scope="module")
def local_task(tmp_path_factory, predictor):
    """A model on disk, three documents with image files, and lmms-eval task YAMLs over them
    (benchmark data cannot be downloaded here). The gold answers are what the predictor says for
    two documents and a wrong one for the third, so the scores must come out 2/3."""
    root = tmp_path_factory.mktemp("lmms")
    save_model_dir(predictor.model, root / "model", predictor.tokenizer)
    pictures = images(3, seed=5)
    greedy = predictor.answer(pictures, [Q] * 3, sampling=SamplingConfig(max_new_tokens=6))
    options = ["red", "blue", "yes"]
    docs = []
    for i, img in enumerate(pictures):
        Image.fromarray(img).save(root / f"img{i}.png")
        lls = predictor.loglikelihood("vqa", [Q] * 3, options, img)
        best = max(range(3), key=lambda k: lls[k][0])
        docs.append({"question": Q, "image": str(root / f"img{i}.png"), "choices": options,
                     "answer": greedy[i] if i < 2 else greedy[i] + " wrong",
                     "label": best if i < 2 else (best + 1) % 3})
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(
        "from PIL import Image\n\n\ndef doc_to_visual(doc):\n"
        "    return [Image.open(doc['image']).convert('RGB')]\n\n\n"
        "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n\n"
        "def process_results(doc, results):\n"
        "    return {'exact_match': float(results[0] == doc['answer'])}\n")
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
              "test_split: test\ndoc_to_visual: !function utils.doc_to_visual\n"
              "doc_to_text: !function utils.doc_to_text\n")
    (tasks / "open.yaml").write_text(
        "task: utamoe_tiny_open\n" + common + "output_type: generate_until\ndoc_to_target: answer\n"
        "generation_kwargs:\n  max_new_tokens: 6\n  do_sample: false\n  temperature: 0\n"
        "process_results: !function utils.process_results\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (tasks / "mc.yaml").write_text(
        "task: utamoe_tiny_mc\n" + common + "output_type: multiple_choice\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")
    # utamoe's entry point as an installed utamoe declares it (pyproject.toml), on the path of
    # the lmms-eval process: the editable install here predates it.
    info = root / "ep" / "utamoe_lmms_entry-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: utamoe-lmms-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\n"
                                           "utamoe = utamoe.eval.lmms_model:manifest\n")
    return root


def _lmms_eval(root: Path, out: Path, *args: str) -> dict:
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(src), str(root / "ep"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", *args, "--include_path",
                           str(root / "tasks"), "--output_path", str(out), "--log_samples"],
                          env=env, capture_output=True, text=True, timeout=300)
    found = list(out.rglob("*_results.json"))
    assert proc.returncode == 0 and found, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(found[0].read_text())


def test_lmms_eval_runs_the_registered_model_in_process(local_task, tmp_path):
    pytest.importorskip("lmms_eval")
    settings = tmp_path / "settings.json"
    res = _lmms_eval(local_task, tmp_path / "out", "--model", "utamoe", "--model_args",
                     f"pretrained={local_task / 'model'},task=vqa,settings_path={settings}",
                     "--tasks", "utamoe_tiny_open,utamoe_tiny_mc", "--batch_size", "2")
    assert res["results"]["utamoe_tiny_open"]["exact_match,none"] == pytest.approx(2 / 3)
    assert res["results"]["utamoe_tiny_mc"]["acc,none"] == pytest.approx(2 / 3)
    assert "task=vqa" in res["config"]["model_args"]
    recorded = json.loads(settings.read_text())
    assert recorded["harness"] == "lmms-eval" and recorded["utamoe_task"] == "vqa"
    assert recorded["prompt_templates"]["vqa"].startswith("<bos> <vqa> <img>")


def test_lmms_eval_openai_compatible_backend_against_utamoe_serve(local_task, tmp_path, predictor):
    pytest.importorskip("lmms_eval")
    from utamoe.serve.app import ServeConfig, create_app

    from ..serve.conftest import LiveServer

    with LiveServer(create_app(predictor, ServeConfig(), model_dir="tiny")) as server:
        res = _lmms_eval(local_task, tmp_path / "out", "--model", "openai_compatible",
                         "--model_args", f"model_version=utamoe:vqa,base_url={server.url}/v1,"
                         "api_key=unused,max_retries=1", "--tasks", "utamoe_tiny_open")
    assert res["results"]["utamoe_tiny_open"]["exact_match,none"] == pytest.approx(2 / 3)
