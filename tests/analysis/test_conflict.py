"""Gradient-conflict diagnostics: exact cosines on toy modules, the UnifiedModel wrapper, the CLI."""

import json
import math

import pytest
import torch
from torch import nn

from tests.model.helpers import mixed_samples, tiny_model
from utamoe.analysis.conflict import gradient_conflict, unified_conflict
from utamoe.analysis.run import build_batches
from utamoe.cli import main
from utamoe.data.sequences import collate
from utamoe.infer.checks import InputError
from utamoe.model.io import save_model_dir
from utamoe.moe import MoEConfig
from utamoe.shapes import ShapesWorldConfig, write_dataset


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.extra = nn.Linear(4, 1)  # used by loss a only

    def loss(self, x, with_extra=False):
        out = self.body(x).pow(2).mean()
        return out + self.extra(x).pow(2).mean() if with_extra else out


X = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_identical_losses_give_one_and_opposed_give_minus_one(sign):
    toy = Toy()
    res = gradient_conflict(toy, lambda: toy.loss(X, with_extra=True),
                            lambda: sign * toy.loss(X), names=("und", "gen"))
    assert set(res.groups) == {"body", "extra"}
    assert res.groups["body"].cosine == pytest.approx(sign, abs=1e-6)
    for name in ("body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"):
        assert res.pieces[name].cosine == pytest.approx(sign, abs=1e-6)
    # extra: only loss a reaches it -> one-sided, no cosine, its norm reported
    extra = res.groups["extra"]
    assert extra.status == "a_only" and extra.cosine is None
    assert extra.norm_a > 0 and extra.norm_b == 0
    assert extra.to_dict(res.names)["status"] == "und only"
    assert res.shared.cosine == pytest.approx(sign, abs=1e-6)  # shared = body only
    assert res.shared.numel == sum(p.numel() for p in toy.body.parameters())
    # whole model: the one-sided part adds to |g_a| but not to the dot product
    na, nb = res.overall.norm_a, res.overall.norm_b
    assert res.overall.cosine == pytest.approx(sign * nb / na, abs=1e-6) and abs(nb / na) < 1


def test_known_cosine_groups_pieces_and_batch_average():
    w = nn.Parameter(torch.zeros(2, 3))
    holder = nn.Module()
    holder.w = w
    u = [torch.tensor([[1.0, 0, 0], [0, 1, 0]]), torch.tensor([[1.0, 1, 0], [0, 0, 1]])]
    v = [torch.tensor([[0.0, 1, 0], [0, 1, 0]]), torch.tensor([[1.0, 0, 0], [0, 0, -1]])]
    calls = {"a": 0, "b": 0}

    def loss(which, vecs):
        def fn():
            i = calls[which]
            calls[which] += 1
            return (w * vecs[i]).sum()  # gradient = vecs[i]
        return fn

    res = gradient_conflict(holder, loss("a", u), loss("b", v), n_batches=2,
                            group_of=lambda n: ["all", "row0" if n.endswith("[0]") else "row1"],
                            pieces=lambda n, p: [(f"{n}[{r}]", r) for r in range(2)])

    def cos(a, b):
        return float((a * b).sum() / (a.norm() * b.norm()))

    ga, gb = (u[0] + u[1]) / 2, (v[0] + v[1]) / 2
    assert res.groups["all"].cosine == pytest.approx(cos(ga, gb))
    assert res.groups["row0"].cosine == pytest.approx(cos(ga[0], gb[0]))
    assert res.groups["row1"].cosine == pytest.approx(cos(ga[1], gb[1]))
    assert res.groups["all"].norm_a == pytest.approx(float(ga.norm()))  # a mean gradient
    pairs = [cos(u[i], v[i]) for i in range(2)]
    assert res.groups["all"].pair_mean == pytest.approx(sum(pairs) / 2)
    assert res.groups["all"].pair_std == pytest.approx(abs(pairs[0] - pairs[1]) / 2)
    assert res.groups["row1"].cosine == pytest.approx(0.0, abs=1e-7)  # (0,.5,.5).(0,.5,-.5) = 0
    assert set(res.pieces) == {"w[0]", "w[1]"}
    with pytest.raises(ValueError, match="n_batches"):
        gradient_conflict(holder, loss("a", u), loss("b", v), n_batches=0)


def _group_batches(encoder):
    samples = mixed_samples()
    und = collate([encoder.sample(s) for s in samples if s.group == "und"], encoder.special.pad)
    gen = collate([encoder.sample(s) for s in samples if s.group == "gen"], encoder.special.pad)
    return und, gen


@pytest.mark.parametrize("moe", [None, MoEConfig(), MoEConfig(group_routing="oracle")],
                         ids=["dense", "ta-moe", "ta-moe-oracle"])
def test_unified_wrapper(moe):
    model, _, encoder = tiny_model(moe=moe)
    und, gen = _group_batches(encoder)
    model.train()
    res = unified_conflict(model, [und], [gen])
    assert model.training  # mode restored
    assert res.names == ("und", "gen") and set(res.losses) == {"und", "gen"}
    layers, kinds, cells = res.grid()
    assert layers == [0, 1]
    for layer in layers:
        for kind in ("attention", "mlp", "norm"):
            c = cells[(layer, kind)].cosine
            assert c is not None and math.isfinite(c) and -1 <= c <= 1
    parts = res.parts()
    assert parts["lm_head"].status == "a_only" and parts["gen_head"].status == "b_only"
    assert parts["vision encoder"].status == "a_only"
    assert parts["code embeddings"].status == "b_only"
    assert parts["text embeddings"].status == "both"
    if moe is None:
        assert kinds == ["attention", "mlp", "norm"]
    else:
        assert {"router", "shared", "experts:und", "experts:gen"} <= set(kinds)
        assert cells[(0, "shared")].status == "both"
    if moe is not None and moe.group_routing == "oracle":
        # forced routing: each group's experts see only their task's tokens -> decoupled
        assert cells[(0, "experts:und")].status == "a_only"
        assert cells[(1, "experts:gen")].status == "b_only"
    json.dumps(res.to_dict())  # serialisable


def test_build_batches_needs_both_groups():
    model, _, encoder = tiny_model(moe=None)
    und_only = [s for s in mixed_samples() if s.group == "und"]
    with pytest.raises(InputError, match="no gen samples"):
        build_batches(model, encoder, und_only, batches=2, batch_size=2, seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    model, tok, _ = tiny_model()
    save_model_dir(model, root / "run" / "model", tok)
    write_dataset(root / "data", ShapesWorldConfig(sizes={"test": 2}))
    write_dataset(root / "und", ShapesWorldConfig(sizes={"test": 1}, tasks=("vqa", "caption")))
    return root


def test_cli_writes_the_five_files(saved, capsys):
    rc = main(["analyze", "--model", str(saved / "run" / "model"), "--data", str(saved / "data"),
               "--batches", "2", "--batch-size", "2"])
    assert rc == 0
    out = saved / "run" / "analysis"
    for name in ("conflict.json", "routing.json", "analysis.md", "conflict.png", "routing.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    conflict = json.loads((out / "conflict.json").read_text())
    assert conflict["groups"]["lm_head"]["status"] == "und only"
    assert conflict["settings"]["conflict_pairs"] == 2 and conflict["command"].startswith("utamoe")
    routing = json.loads((out / "routing.json").read_text())
    assert routing["layers"] == ["layers.0.mlp", "layers.1.mlp"]
    assert set(routing["per_task"]["layers.0.mlp"]) == {"caption", "vqa", "pope", "grounding",
                                                         "t2i", "edit"}
    report = (out / "analysis.md").read_text()
    assert "## Gradient conflict" in report and "## Routing" in report
    assert "gradient conflict" in capsys.readouterr().out


def test_cli_errors(saved, capsys):
    model = str(saved / "run" / "model")
    assert main(["analyze", "--model", model, "--data", str(saved / "und")]) == 2
    assert "no gen samples" in capsys.readouterr().err
    assert main(["analyze", "--model", model, "--data", str(saved / "data"), "--split",
                 "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert main(["analyze", "--model", str(saved / "missing"), "--data",
                 str(saved / "data")]) == 2
    assert "does not exist" in capsys.readouterr().err
