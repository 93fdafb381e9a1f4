"""Label-conditioned models: records LABEL<TAB>TEXT (charrnn.data.labels), the label as an input of the model
(charrnn.model.network: LabelView, both label modes, the Stepper), training, checkpoints, generate/complete/serve
--label, and `eval classify`, with bad input covered."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data import labels
from charrnn.data.labels import LabelSet, labelled_records, read_labelled
from charrnn.data.partition import RecordBatches
from charrnn.errors import CheckpointError, DataError, UsageError
from charrnn.model import checkpoint
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.model.stepper import Stepper

FIVE, SEVEN = "床前明月光疑是地上霜举头望思故乡春", "眠不觉晓处闻啼鸟夜来风雨声花落知多少"


def poems(n: int, seed: int) -> str:
    """n records 五言<TAB>... or 七言<TAB>...: each label its own line length and characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        five = rng.random() < 0.5
        width, pool = (5, FIVE) if five else (7, SEVEN)
        clauses = ["".join(rng.choice(pool) for _ in range(width)) for _ in range(4)]
        out.append(f"{'五言' if five else '七言'}\t{clauses[0]}，{clauses[1]}。{clauses[2]}，{clauses[3]}。")
    return "\n".join(out) + "\n"


def test_labelled_records_strip_labels_and_skip_empty_records() -> None:
    body, names = labelled_records("a\tx y\n\nb\tz\tw\n", "\n")
    assert body == "x y\nz\tw\n" and names == ["a", "b"]  # the label is what precedes the first tab


@pytest.mark.parametrize(("text", "needle"), [
    ("a\tx\nno tab here\n", "record 2 has no tab"),
    ("a\tx\n\ty\n", "record 2 has an empty label"),
    ("\n\n", "no labelled record"),
    ("x" * 300 + "\ty\n", "label of 300 characters"),
])
def test_bad_labelled_records(text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        labelled_records(text, "\n")


def test_too_many_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels, "MAX_LABELS", 2)
    with pytest.raises(DataError, match="3 distinct labels, more than the limit of 2"):
        labelled_records("a\tx\nb\tx\nc\tx\n", "\n")


def test_label_set_names_close_labels_and_validates() -> None:
    s = LabelSet.of(["五言", "七言", "五言"])
    assert s.names == ("七言", "五言") and s.counts == (1, 2) and s.id_of("五言") == 1
    assert np.allclose(np.exp(s.log_prior()).sum(), 1.0)
    with pytest.raises(UsageError, match="did you mean '五言'"):
        s.id_of("五")
    with pytest.raises(UsageError, match="the model's labels are '七言', '五言'"):
        s.id_of("sonnet")
    for bad in ({"names": ["b", "a"], "counts": [1, 1]}, {"names": ["a"], "counts": [1, 2]}, {"names": []},
                {"names": ["a", "a"], "counts": [1, 1]}, {"names": [""], "counts": [1]}, "x"):
        with pytest.raises(ValueError):
            LabelSet.from_dict(bad)


@pytest.mark.parametrize("mode", ["add", "state"])
@pytest.mark.parametrize(("cell", "input_"), [("lstm", "embedding"), ("gru", "onehot"), ("rnn", "embedding")])
def test_a_label_view_steps_as_the_model_reads(mode: str, cell: str, input_: str) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, hidden=8, layers=2, input=input_, embed_dim=4, labels=3,
                                label_mode=mode)).eval()
    with torch.no_grad():
        model.label_embed.weight.normal_()  # "state" starts at zero: make the labels differ
        x = torch.randint(0, 11, (2, 6))
        full, _ = model(x, None, torch.tensor([2, 2]))
        view = model.for_label(2)
        assert torch.allclose(view(x)[0], full)
        other, _ = model(x, None, torch.tensor([0, 0]))
        assert not torch.allclose(other, full)  # the label changes what the model predicts
        step, state = Stepper(view), view.begin_state(2)
        for t in range(6):
            logits, state = step(x[:, t], state)
            assert torch.allclose(logits, full[:, t], atol=1e-5)
    assert not view.training and not model.training


def test_record_batches_carry_each_rows_label() -> None:
    data = read_labelled("a\txy\nb\tzzz\na\t\nb\ty\n", "\n")
    d = data.vocab.encode("\n").astype(np.int64)
    batches = RecordBatches(d, data.record_labels)
    for b in batches(data.ids, 2, 8, np.random.default_rng(0)):
        for row, label in zip(b.x, b.labels, strict=True):
            text = data.vocab.decode(row[1:]).split("\n")[0]
            assert {"xy": 0, "zzz": 1, "y": 1}[text] == label  # the empty record of 'a' is skipped


# The command line, as a user runs it.

def charrnn(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True, timeout=120,
                          input=input)


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(r, code: int, needle: str) -> None:
    assert r.exit_code == code and r.stdout == "", (r.exit_code, r.stdout, r.stderr)
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("labels")
    (d / "poems.txt").write_text(poems(240, 0), encoding="utf-8")
    (d / "held_out.txt").write_text(poems(40, 1), encoding="utf-8")
    r = charrnn("train", str(d / "poems.txt"), "-o", str(d / "m.pt"), "--partition", "records", "--labels",
                "--hidden", "32", "--embed-dim", "16", "-b", "16", "--max-steps", "40", "--lr", "0.02", "-q",
                "--threads", "1", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    return d / "m.pt"


def test_info_generate_complete_and_classify(trained: Path) -> None:
    info = charrnn("info", "-m", str(trained))
    assert "labels: 2, added to the input at every step" in info.stdout and "七言 (" in info.stdout, info.stdout
    assert set(json.loads(charrnn("info", "-m", str(trained), "--json").stdout)["labels"]) == {"五言", "七言"}
    r = charrnn("generate", "-m", str(trained), "--label", "五言", "--num-samples", "8", "--seed", "1", "-n", "60")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.splitlines()
    assert len(samples) == 8
    # Conditioned on 五言, the samples are mostly of its characters.
    chars = "".join(samples).replace("，", "").replace("。", "")
    assert sum(c in FIVE for c in chars) > 0.7 * len(chars), samples
    r = charrnn("complete", "-m", str(trained), "--label", "七言", "-k", "3", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["next"]) == 3, r.stderr
    held_out = trained.parent / "held_out.txt"
    r = charrnn("eval", "classify", "-m", str(trained), str(held_out), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 40 and all(set(row["scores"]) == {"五言", "七言"} for row in rows)
    assert all(row["label"] == max(row["scores"], key=row["scores"].get) for row in rows)
    accuracy = np.mean([row["correct"] for row in rows])
    assert accuracy >= 0.9 and f"accuracy {accuracy:.4f} ({int(accuracy * 40)} of 40 labelled records)" in r.stderr
    text = charrnn("eval", "classify", "-m", str(trained), "-", input="床前明月光，疑是地上霜。\n")
    best, match, ranked, record = text.stdout.rstrip("\n").split("\t")
    assert match == "-" and record == "床前明月光，疑是地上霜。" and ranked.startswith(best + ":"), text.stdout
    assert "accuracy" not in text.stderr


def test_serve_takes_a_label(trained: Path) -> None:
    requests = [{"op": "generate", "label": "七言", "n": 30, "seed": 1, "id": 1},
                {"op": "next", "label": "五言", "prefix": "床", "k": 2, "id": 2},
                {"op": "generate", "label": "七", "id": 3},
                {"op": "generate", "n": 5, "id": 4},
                {"op": "generate", "label": "五言", "template": "_____。", "seed": 2, "id": 5}]
    r = charrnn("serve", "--stdio", "-m", str(trained), input="".join(json.dumps(q) + "\n" for q in requests))
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(answers[0]["samples"]) == 1 and len(answers[1]["next"]) == 2
    assert answers[2]["error"].startswith('"label" \'七\' is not one of the model\'s labels: did you mean')
    assert answers[3]["error"] == 'this model is conditioned on labels: give "label" (one of \'七言\', \'五言\')'
    assert len(answers[4]["samples"][0]) == 6 and answers[4]["samples"][0][-1] == "。"


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["generate", "--label", "七"], 2, "did you mean '七言'"),
    (["generate"], 2, "this model is conditioned on labels: give --label"),
    (["complete", "--label", "sonnet"], 2, "the model's labels are '七言', '五言'"),
])
def test_label_errors_are_one_line(trained: Path, args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(run(args[0], "-m", str(trained), *args[1:]), code, needle)


def test_bad_training_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("五言\t床前明月光\n没有标签\n", encoding="utf-8")
    out = str(tmp_path / "m.pt")
    assert_one_line_error(run("train", str(tmp_path / "bad.txt"), "-o", out, "--partition", "records", "--labels",
                              "--max-steps", "1", "-q", "--precision", "fp32"), 1, "record 2 has no tab")
    assert_one_line_error(run("train", str(tmp_path / "bad.txt"), "-o", out, "--labels", "--max-steps", "1"), 2,
                          "--labels needs --partition records")
    assert_one_line_error(run("train", str(tmp_path / "bad.txt"), "-o", out, "--partition", "records",
                              "--label-mode", "state", "--max-steps", "1"), 2, "--label-mode applies to --labels")


def test_classify_and_label_need_a_labelled_model(tmp_path: Path, trained: Path) -> None:
    plain = tmp_path / "plain.pt"
    (tmp_path / "t.txt").write_text(poems(30, 2).replace("五言\t", "").replace("七言\t", ""), encoding="utf-8")
    assert run("train", str(tmp_path / "t.txt"), "-o", str(plain), "--hidden", "8", "--max-steps", "1", "-q",
               "-b", "4", "-t", "8").exit_code == 0
    assert_one_line_error(run("eval", "classify", "-m", str(plain), str(tmp_path / "t.txt")), 2, "has no labels")
    assert_one_line_error(run("generate", "-m", str(plain), "--label", "五言"), 2,
                          "--label applies to a model trained with --labels")


def test_checkpoints_keep_their_labels_and_refuse_damaged_ones(tmp_path: Path, trained: Path) -> None:
    ckpt = checkpoint.load(trained)
    assert checkpoint.label_set(ckpt).names == ("七言", "五言") and ckpt["model_config"]["labels"] == 2
    for damage in ({"names": ["七言"], "counts": [3]}, {"names": ["五言", "七言"], "counts": [1, 1]}, None):
        bad = dict(ckpt, labels=damage)
        checkpoint.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="is damaged: .*label"):
            checkpoint.load(tmp_path / "bad.pt")
    # An older checkpoint (no label fields in its model config, no labels) still loads, unlabelled.
    old = dict(ckpt, model_config={k: v for k, v in ckpt["model_config"].items() if k not in ("labels", "label_mode")})
    old.pop("labels")
    old["weights"] = {k: v for k, v in ckpt["weights"].items() if not k.startswith("label_embed")}
    checkpoint.save(old, tmp_path / "old.pt")
    model, _ = checkpoint.build_model(checkpoint.load(tmp_path / "old.pt"), "old")
    assert model.label_embed is None and checkpoint.label_set(checkpoint.load(tmp_path / "old.pt")) is None


def test_export_refuses_a_labelled_model_in_one_line(tmp_path: Path, trained: Path) -> None:
    assert_one_line_error(run("export", "-m", str(trained), "-o", str(tmp_path / "m.safetensors")), 2,
                          "conditioned on labels (--labels), which export does not carry yet")


CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"


def test_bench_derives_five_and_seven_character_labels(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "tangshi_labels.py"
    poems_ = "床前明月光，疑是地上霜。\n朝辭白帝彩雲間，千里江陵一日還。\n長短，不一樣的句子。\n"
    (tmp_path / "t.txt").write_text(poems_, encoding="utf-8")
    r = subprocess.run([sys.executable, str(bench), str(tmp_path / "t.txt"), str(tmp_path / "train.txt"),
                        str(tmp_path / "test.txt"), "--test-fraction", "0.5"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "train.txt").read_text(encoding="utf-8") == "五言\t床前明月光，疑是地上霜。\n"
    assert (tmp_path / "test.txt").read_text(encoding="utf-8") == "七言\t朝辭白帝彩雲間，千里江陵一日還。\n"


@pytest.mark.skipif(not (CORPORA / "tangshi.txt").exists(), reason="needs ../shared/corpora/tangshi.txt")
def test_tangshi_gives_labelled_records_that_train_reads() -> None:
    text = (CORPORA / "tangshi.txt").read_text(encoding="utf-8").splitlines()[:2000]
    import importlib.util

    spec = importlib.util.spec_from_file_location("tangshi_labels", Path(__file__).resolve().parents[1] / "bench"
                                                  / "tangshi_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = [f"{label}\t{poem}" for poem in text if (label := module.label_of(poem)) is not None]
    data = read_labelled("\n".join(records) + "\n", "\n")
    assert set(data.names.names) == {"五言", "七言"} and sum(data.names.counts) == len(records) > 1000


def test_classify_without_the_end_scores_one_boundary_less(trained: Path) -> None:
    records = ["五言\t床前明月", "七言\t眠不覺曉處"]
    a = CliRunner().invoke(cli, ["eval", "classify", "-m", str(trained), "-", "--json"], input="\n".join(records))
    b = CliRunner().invoke(cli, ["eval", "classify", "-m", str(trained), "-", "--json", "--no-end"],
                           input="\n".join(records))
    full, begun = ([json.loads(line) for line in r.stdout.splitlines()] for r in (a, b))
    for x, y in zip(full, begun, strict=True):
        assert set(x["scores"]) == set(y["scores"]) and all(x["scores"][k] < y["scores"][k] for k in x["scores"])


def test_the_python_api_takes_labels_forms_and_classifies(trained: Path) -> None:
    import charrnn
    from charrnn.inference.forms import Constraint

    model = charrnn.load(str(trained))
    (form,) = model.generate_form(template="_____，_____。", acrostic="床眠", label="五言", seed=3)
    assert Constraint(acrostic="床眠", template="_____，_____。").satisfied_by(form["text"])
    assert form["logprob"] == pytest.approx(sum(form["logprobs"]))
    assert model.generate(n=20, label="七言", seed=1) == model.generate(n=20, label="七言", seed=1)
    assert [c for c, _ in model.complete("床", k=3, label="五言")] == \
        [g["char"] for g in json.loads(charrnn_cli_json("complete", "-m", str(trained), "-p", "床", "-k", "3",
                                                        "--label", "五言"))["next"]]
    held_out = (trained.parent / "held_out.txt").read_text(encoding="utf-8").splitlines()[:5]
    cli_rows = [json.loads(line) for line in run("eval", "classify", "-m", str(trained), str(trained.parent /
                                                                                              "held_out.txt"),
                                                 "--json").stdout.splitlines()[:5]]
    assert [r["label"] for r in model.classify(held_out)] == [r["label"] for r in cli_rows]
    with pytest.raises(UsageError, match="did you mean"):
        model.generate(label="五")


def charrnn_cli_json(*args: str) -> str:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return r.stdout


def test_http_generate_and_next_take_labels_and_forms(trained: Path) -> None:
    pytest.importorskip("httpx")
    from serverproc import Server

    from charrnn.inference.forms import Constraint

    s = Server("-m", f"tang={trained}")
    try:
        r = s.client.post("/charrnn/v1/generate", json={"label": "五言", "acrostic": "床眠",
                                                        "template": "_____，_____。", "seed": 1})
        assert r.status_code == 200, r.text
        (sample,) = r.json()["samples"]
        assert Constraint(acrostic="床眠", template="_____，_____。").satisfied_by(sample)
        assert len(r.json()["logprobs"][0]) == len(sample)
        lines = [json.loads(line) for line in s.client.post("/charrnn/v1/generate", json={
            "label": "七言", "template": "_______。", "seed": 2, "stream": True}).text.splitlines()]
        assert len(lines[0]["text"]) == 8 and lines[0]["text"][-1] == "。" and lines[-1]["done"]
        r = s.client.post("/charrnn/v1/next", json={"label": "五言", "prefix": "床", "k": 2})
        assert r.status_code == 200 and len(r.json()["next"]) == 2, r.text
        r = s.client.post("/charrnn/v1/generate", json={"n": 5})
        assert r.status_code == 422 and "give \"label\"" in r.json()["error"], r.text
        r = s.client.post("/v1/completions", json={"prompt": "床", "max_tokens": 2})
        assert r.status_code == 400 and "conditioned on labels" in r.json()["error"]["message"], r.text
    finally:
        code, _ = s.stop()
    assert code == 0


@pytest.mark.parametrize("args", [["eval", "perplexity"], ["eval", "score"], ["inspect", "gates"]])
def test_commands_without_a_label_refuse_a_labelled_model_in_one_line(tmp_path: Path, trained: Path,
                                                                      args: list[str]) -> None:
    (tmp_path / "t.txt").write_text(poems(20, 4).replace("五言\t", "").replace("七言\t", ""), encoding="utf-8")
    assert_one_line_error(run(*args, "-m", str(trained), str(tmp_path / "t.txt")), 2, "conditioned on labels")


def test_init_from_a_labelled_model_is_refused(tmp_path: Path, trained: Path) -> None:
    (tmp_path / "t.txt").write_text(poems(20, 3), encoding="utf-8")
    assert_one_line_error(run("train", str(tmp_path / "t.txt"), "-o", str(tmp_path / "f.pt"), "--init-from",
                              str(trained), "--max-steps", "1", "-q"), 2, "--init-from a model trained with --labels")
