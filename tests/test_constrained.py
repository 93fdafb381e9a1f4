"""Constrained sampling (charrnn.inference.forms, charrnn.inference.constrained): acrostics and templates hold for every
sample, the reported log-probabilities are the model's distribution renormalised over what the
constraint allows, and bad constraints are one-line errors before sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.data.vocab import Vocab
from charrnn.errors import UsageError
from charrnn.inference.constrained import sample_constrained
from charrnn.inference.forms import ANY, DEFAULT_LINE_ENDS, DONE, NOT_LINE_END, Constraint
from charrnn.inference.generate import Sampling
from charrnn.model.network import CharRNN, ModelConfig

HANZI = "床前明月光疑是地上霜举头望思故乡春眠不觉晓处闻啼鸟夜来风雨声花落知多少"
TEXT = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n"
QUATRAIN = "_____，_____。_____，_____。"


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab.build(TEXT)


@pytest.fixture(scope="module")
def model(vocab: Vocab) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=vocab.size, hidden=16, layers=1, embed_dim=8)).eval()


def renormalised_logprobs(model: CharRNN, vocab: Vocab, prefix: str, text: str, constraint: Constraint) -> list[float]:
    """Each character's log-probability under the model's distribution masked by the constraint,
    recomputed with one full forward pass (not the Stepper the sampler uses)."""
    ids = torch.as_tensor(vocab.encode(prefix + text).astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0][0].double(), dim=-1)  # (T, V): row t predicts character t + 1
    out = []
    for p, c in enumerate(text):
        row = logp[len(prefix) - 1 + p].clone()
        allowed = constraint.next(text[:p])
        keep = torch.zeros(vocab.size, dtype=torch.bool)
        if allowed in (ANY, NOT_LINE_END):
            keep[:] = True
            keep[vocab.unk_id] = False
            if allowed == NOT_LINE_END:
                for e in constraint.line_ends:
                    if e in vocab.chars:
                        keep[vocab.chars.index(e)] = False
        else:
            keep[vocab.chars.index(allowed)] = True
        row[~keep] = -np.inf
        out.append(float(torch.log_softmax(row, dim=-1)[vocab.chars.index(c)]))
    return out


acrostics = st.text(alphabet=HANZI, min_size=1, max_size=4)
templates = st.lists(st.tuples(st.integers(1, 7), st.sampled_from("，。\n")), min_size=1, max_size=4).map(
    lambda lines: "".join("_" * n + end for n, end in lines))


@hsettings(max_examples=15, deadline=None)
@given(acrostic=acrostics, template=st.none() | templates, seed=st.integers(0, 2**31 - 1),
       temperature=st.sampled_from([0.5, 1.0, 2.0]), top_k=st.none() | st.integers(1, 5), greedy=st.booleans())
def test_every_sample_meets_its_constraint_and_reports_renormalised_logprobs(
        model: CharRNN, vocab: Vocab, acrostic: str, template: str | None, seed: int, temperature: float,
        top_k: int | None, greedy: bool) -> None:
    lines = None if template is None else sum(template.count(e) for e in DEFAULT_LINE_ENDS)
    if lines is not None and len(acrostic) > lines:
        acrostic = acrostic[:lines]
    constraint = Constraint(acrostic=acrostic, template=template)
    sampling = Sampling(temperature=temperature, top_k=top_k, greedy=greedy)
    prefix = "床前"
    samples = sample_constrained(model, vocab, vocab.encode(prefix), constraint, max_length=30, sampling=sampling,
                                 seed=seed, num_samples=3)
    assert len(samples) == 3
    for s in samples:
        complete = template is not None or constraint.next(s.text) == DONE
        assert constraint.satisfied_by(s.text, complete=complete), s.text
        if template is not None:
            assert len(s.text) == len(template)
        else:
            assert complete or len(s.text) == 30
        assert len(s.logprobs) == len(s.model_logprobs) == len(s.text)
        np.testing.assert_allclose(s.logprobs, renormalised_logprobs(model, vocab, prefix, s.text, constraint),
                                   atol=1e-4)
        assert all(r >= m - 1e-6 for r, m in zip(s.logprobs, s.model_logprobs, strict=True))  # renormalised: larger
        assert s.logprob == pytest.approx(sum(s.logprobs))


def test_forced_steps_have_probability_one_and_free_ones_sum_to_one(model: CharRNN, vocab: Vocab) -> None:
    c = Constraint(template="春__。")
    (s,) = sample_constrained(model, vocab, vocab.encode("床"), c, max_length=99, seed=3)
    assert s.text[0] == "春" and s.text[3] == "。" and s.logprobs[0] == 0.0 and s.logprobs[3] == 0.0
    assert s.model_logprobs[0] < 0


def test_without_a_prefix_the_first_character_comes_from_the_frequencies(model: CharRNN, vocab: Vocab) -> None:
    c = Constraint(template="__")
    firsts = {s.text[0] for s in sample_constrained(model, vocab, np.zeros(0, dtype=np.int64), c, max_length=9,
                                                    seed=1, num_samples=64)}
    assert firsts <= set(HANZI) and len(firsts) > 3  # never a line end, never <unk>


def test_acrostic_alone_ends_with_its_last_line(model: CharRNN, vocab: Vocab) -> None:
    for s in sample_constrained(model, vocab, vocab.encode("床"), Constraint(acrostic="春花"), max_length=500,
                                seed=0, num_samples=4):
        assert s.text[0] == "春" and s.text[-1] in DEFAULT_LINE_ENDS
        clauses = [p for p in s.text.replace("\n", "。").replace("，", "。").split("。") if p]
        assert [p[0] for p in clauses] == ["春", "花"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({}, "needs --acrostic or --template"),
    ({"template": ""}, "--template must not be empty"),
    ({"acrostic": "春", "placeholder": "，"}, "is a line end"),
    ({"acrostic": "春", "placeholder": "ab"}, "one character"),
    ({"acrostic": "春。"}, "contains a line end"),
    ({"acrostic": "春花", "template": "_____。"}, "only 1 line"),
    ({"acrostic": "春花", "template": "_____，春天。"}, "line 2 of --template has no placeholder"),
    ({"acrostic": "春", "line_ends": ""}, "--line-ends must not be empty"),
])
def test_bad_constraints(kwargs: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        Constraint(**kwargs)


def test_template_and_acrostic_combine_on_each_lines_first_placeholder() -> None:
    c = Constraint(acrostic="春花", template="《_》_，_。", placeholder="_")
    assert c.plan == ("《", "春", "》", None, "，", "花", "。")


def test_any_script_and_another_placeholder(vocab: Vocab) -> None:
    c = Constraint(template="ab?d\n", placeholder="?", line_ends="\n")
    assert c.satisfied_by("abcd\n") and not c.satisfied_by("ab\nd\n") and not c.satisfied_by("abcd")


def test_a_character_the_vocabulary_lacks_is_an_error_before_sampling(model: CharRNN, vocab: Vocab) -> None:
    with pytest.raises(UsageError, match="lacks 1 character.*'夏'"):
        sample_constrained(model, vocab, vocab.encode("床"), Constraint(acrostic="春夏"), max_length=9)


# The command line, as a user runs it.

def charrnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("forms")
    (d / "poems.txt").write_text(TEXT * 20, encoding="utf-8")
    r = charrnn("train", str(d / "poems.txt"), "-o", str(d / "m.pt"), "--hidden", "16", "--embed-dim", "8",
                "-b", "4", "-t", "16", "--max-steps", "4", "-q", "--threads", "1")
    assert r.returncode == 0, r.stderr
    return d / "m.pt"


def test_cli_acrostic_template_and_json(trained: Path) -> None:
    r = charrnn("generate", "-m", str(trained), "--acrostic", "春花", "--template", QUATRAIN, "--seed", "1",
                "--json", "--num-samples", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seed"] == 1 and len(out["samples"]) == 2
    c = Constraint(acrostic="春花", template=QUATRAIN)
    for s in out["samples"]:
        assert c.satisfied_by(s["text"]) and len(s["logprobs"]) == len(s["text"])
        assert s["logprob"] == pytest.approx(sum(s["logprobs"]))
    r = charrnn("generate", "-m", str(trained), "--acrostic", "春花", "--seed", "2", "-p", "床", "--no-echo")
    assert r.returncode == 0 and Constraint(acrostic="春花").satisfied_by(r.stdout[:-1]), r.stdout


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--acrostic", "春夏"], 2, "'夏'"),
    (["--acrostic", "春", "--beam", "2"], 2, "--beam does not combine"),
    (["--template", "__", "--stop", "x"], 2, "--stop does not combine"),
    (["--template", "__", "--line-ends", "\\q"], 2, "unknown escape"),
    (["--template", "_", "--placeholder", "，"], 2, "is a line end"),
])
def test_cli_bad_constraints_are_one_line_errors(trained: Path, args: list[str], code: int, needle: str) -> None:
    r = CliRunner().invoke(cli, ["generate", "-m", str(trained), *args])
    r.returncode = r.exit_code
    assert r.returncode == code and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "../shared/corpora/tangshi.txt").exists(),
                    reason="needs ../shared/corpora/tangshi.txt")
def test_every_tang_character_of_a_famous_acrostic_is_in_the_corpus() -> None:
    text = (Path(__file__).resolve().parents[1] / "../shared/corpora/tangshi.txt").read_text(encoding="utf-8")
    vocab = Vocab.build(text)
    Constraint(acrostic="春夏秋冬", template=QUATRAIN).check(vocab)  # no error: the corpus can meet it


def test_serve_stdio_takes_a_form_and_names_its_fields_as_requests_do(trained: Path) -> None:
    requests = [{"op": "generate", "acrostic": "春花", "template": QUATRAIN, "seed": 1, "id": 1},
                {"op": "generate", "acrostic": "春夏", "id": 2},
                {"op": "generate", "template": "__", "stop": ["x"], "id": 3},
                {"op": "generate", "template": "__", "placeholder": "，", "id": 4},
                {"op": "generate", "template": 5, "id": 5}]
    r = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--stdio", "-m", str(trained)], capture_output=True,
                       text=True, timeout=120, input="".join(json.dumps(q) + "\n" for q in requests))
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    (sample,) = answers[0]["samples"]
    assert Constraint(acrostic="春花", template=QUATRAIN).satisfied_by(sample)
    assert len(answers[0]["logprobs"][0]) == len(sample) and answers[0]["seed"] == 1
    assert "'夏'" in answers[1]["error"]
    assert answers[2]["error"] == '"stop" does not combine with "acrostic" or "template"'
    assert answers[3]["error"].startswith('"placeholder"') and "line end" in answers[3]["error"]
    assert '"template" must be a string' in answers[4]["error"]
