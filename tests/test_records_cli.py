"""End-to-end tests of records through the command line: train --partition records, eval score,
generate --stop / --novel / --beam, bad input, streaming and closed pipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

TINY = ["--hidden", "16", "--layers", "1", "--embed-dim", "8", "-b", "8", "-t", "16", "--max-steps", "6",
        "--val-every", "3", "-q"]
NAMES = ["anna", "bob", "carol", "dave", "eve", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "rupert", "sybil", "trent", "victor", "walter"] * 3
LINES = ["the time traveller smiled", "and we sat about the fire", "in the room while he spoke"] * 10


def run(*args: str, input: str | bytes | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def assert_clean_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("records")
    (d / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    (d / "lines.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    r = run("train", str(d / "names.txt"), "-o", str(d / "names.pt"), "--partition", "records", *TINY)
    assert r.exit_code == 0, r.stderr
    r = run("train", str(d / "lines.txt"), "-o", str(d / "lines.pt"), *TINY)
    assert r.exit_code == 0, r.stderr
    return {"names": d / "names.pt", "lines": d / "lines.pt", "dir": d}


def test_records_model_records_its_mode(models: dict[str, Path]) -> None:
    info = json.loads(run("info", "-m", str(models["names"]), "--json").stdout)
    assert info["train"]["partition"] == "records" and info["train"]["delimiter"] == "\n"
    assert info["record_hashes"] == len(set(NAMES))  # distinct records only (each name occurs three times)
    text = run("info", "-m", str(models["names"])).stdout
    assert "records model: delimiter '\\n', hashes of" in text
    assert "records model" not in run("info", "-m", str(models["lines"])).stdout


def test_score_text_output(models: dict[str, Path]) -> None:
    r = run("eval", "score", "-m", str(models["lines"]), "--header", input="the fire\n\nzzz\u00e9\ttab\nthe fire")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[0] == ["nats_per_char", "bits_per_char", "nats", "chars", "unknown", "text"]
    assert [row[-1] for row in rows[1:]] == ["the fire", "", "zzz\u00e9\\ttab", "the fire"]  # order kept, escaped
    assert all(len(row) == 6 for row in rows)
    assert rows[1][:5] == rows[4][:5]  # the same record, the same score (with or without a last newline)
    assert rows[1][3] == "9" and rows[2][3] == "1"  # 8 characters and the end; the empty record: its end
    assert int(rows[3][4]) >= 1  # unknown characters counted
    assert float(rows[1][1]) == pytest.approx(float(rows[1][0]) / 0.6931471805599453, rel=1e-3)
    # the one record the model mostly cannot read is named on stderr, once
    assert r.stderr.startswith("warning: ") and "of record 3 (not scored" in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_score_json_lines_and_no_end(models: dict[str, Path]) -> None:
    r = run("eval", "score", "-m", str(models["lines"]), "--json", "--no-end", input="the\n\n\u00e9\u00e9\n")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["text"] for o in objs] == ["the", "", "\u00e9\u00e9"]
    assert set(objs[0]) == {"text", "chars", "unknown", "nats", "nats_per_char", "bits_per_char"}
    assert objs[0]["chars"] == 3
    for empty in objs[1:]:  # nothing scored: documented nulls
        assert empty["chars"] == 0 and empty["nats_per_char"] is None and empty["bits_per_char"] is None
    assert objs[2]["unknown"] == 2
    with_end = json.loads(run("eval", "score", "-m", str(models["lines"]), "--json", input="the\n").stdout)
    assert with_end["chars"] == 4 and with_end["nats"] > objs[0]["nats"]


def test_score_several_models(models: dict[str, Path]) -> None:
    a, b = str(models["lines"]), str(models["names"])
    r = run("eval", "score", "-m", a, "-m", b, "--json", input="the fire\nbob\n")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    for o in objs:
        assert set(o["scores"]) == {a, b}
        assert o["best"] == min(o["scores"], key=o["scores"].get)
        assert o["nats_per_char"] == o["scores"][o["best"]]
    text = run("eval", "score", "-m", a, "-m", b, "--header", input="the fire\nbob\n").stdout.splitlines()
    assert text[0].split("\t") == [a, b, "best", "text"]
    row = text[1].split("\t")
    assert row[3] == "the fire" and row[2] in (a, b)


def test_score_delimiters(models: dict[str, Path]) -> None:
    m = str(models["lines"])
    r = run("eval", "score", "-m", m, "--delimiter", "\\0", input=b"the fire\0in the\nroom\0")
    assert r.exit_code == 0, r.stderr
    assert [line.split("\t")[-1] for line in r.stdout.splitlines()] == ["the fire", "in the\\nroom"]
    r = run("eval", "score", "-m", m, "--delimiter", "\\n\\n", input="a b\nc\n\nd e\n")
    assert [line.split("\t")[-1] for line in r.stdout.splitlines()] == ["a b\\nc", "d e\\n"]
    r = run("eval", "score", "-m", m, "--delimiter", "|", input="no bar here\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1
    assert "never occurs" in r.stderr  # documented: the whole input is one record, with a note
    assert run("eval", "score", "-m", m, input="").stdout == ""  # no records, no output


def test_score_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    m = str(models["lines"])
    assert_clean_error(run("eval", "score", "-m", m, "--delimiter", ""), 2, "--delimiter must not be empty")
    assert_clean_error(run("eval", "score", "-m", m, "--delimiter", "\\q"), 2, "unknown escape")
    assert_clean_error(run("eval", "score", "-m", m, str(tmp_path / "nope.txt")), 2, "does not exist")
    assert_clean_error(run("eval", "score", "-m", str(tmp_path / "x.pt"), input="a\n"), 2, "does not exist")
    assert_clean_error(run("eval", "score", "-m", m, input=b"\0binary"), 1, "binary")


def test_score_streams_and_stops_quietly_at_head(models: dict[str, Path]) -> None:
    cmd = f"yes 'the time traveller' | '{sys.executable}' -m charrnn eval score -m '{models['lines']}' | head -3"
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, executable="/bin/bash", timeout=120)
    assert len(p.stdout.splitlines()) == 3 and p.stdout.splitlines()[0].endswith("\tthe time traveller")
    assert p.stderr == "", p.stderr
    # A slow stream is answered record by record, before the input ends.
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", "score", "-m", str(models["lines"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("the fire\n")
        proc.stdin.flush()
        assert proc.stdout.readline().endswith("\tthe fire\n")
        proc.stdin.write("spoke\n")
        proc.stdin.flush()
        assert proc.stdout.readline().endswith("\tspoke\n")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_generate_records_by_default(models: dict[str, Path]) -> None:
    r = run("generate", "-m", str(models["names"]), "--num-samples", "10", "--seed", "1", "-n", "12")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.split("\n")
    assert len(lines) == 11 and lines[-1] == ""  # ten records, one per line
    assert all(1 <= len(s) <= 12 for s in lines[:-1])  # never an empty record by default
    again = run("generate", "-m", str(models["names"]), "--num-samples", "10", "--seed", "1", "-n", "12")
    assert again.stdout == r.stdout
    j = json.loads(run("generate", "-m", str(models["names"]), "--num-samples", "3", "--seed", "1", "--json").stdout)
    assert len(j["samples"]) == 3 and j["seed"] == 1


def test_generate_stop_and_min_length(models: dict[str, Path]) -> None:
    r = run("generate", "-m", str(models["lines"]), "--stop", " ", "--stop", "\\n", "--num-samples", "6", "--seed", "2",
            "--min-length", "3", "-n", "20", "--prefix", "th")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and all(s.startswith("th") and " " not in s and len(s) >= 5 for s in lines)
    r = run("generate", "-m", str(models["lines"]), "--stop", "e", "--stop", "\\n", "--num-samples", "4",
            "--seed", "2", "-n", "30", "--no-echo")
    assert len(r.stdout.splitlines()) == 4 and all("e" not in s for s in r.stdout.splitlines())


def test_generate_novel(models: dict[str, Path]) -> None:
    r = run("generate", "-m", str(models["names"]), "--novel", "--num-samples", "5", "--seed", "3", "-n", "10")
    assert r.exit_code == 0, r.stderr
    samples = r.stdout.splitlines()
    assert len(samples) == 5 and not set(samples) & set(NAMES)
    assert "dropped" in r.stderr
    assert_clean_error(run("generate", "-m", str(models["lines"]), "--novel", "--stop", "\\n", "--seed", "1"), 2,
                       "--partition records")
    assert_clean_error(run("generate", "-m", str(models["lines"]), "--novel", "--seed", "1"), 2, "--novel needs")


def test_generate_beam(models: dict[str, Path]) -> None:
    args = ["generate", "-m", str(models["names"]), "--beam", "4", "--num-samples", "3", "-n", "10", "--json"]
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["beam"] == 4 and len(out["results"]) == 3
    assert all(res["logprob"] < 0 and res["score"] == pytest.approx(res["logprob"] / (len(res["text"]) + 1))
               for res in out["results"] if res["stopped"])
    assert [res["score"] for res in out["results"]] == sorted((res["score"] for res in out["results"]), reverse=True)
    assert run(*args).stdout == r.stdout  # deterministic
    text = run("generate", "-m", str(models["lines"]), "--beam", "2", "--prefix", "the", "-n", "8")
    assert text.exit_code == 0 and text.stdout.startswith("the")


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--beam", "0"], 2, "--beam must be >= 1"),
    (["--stop", ""], 2, "--stop must not be empty"),
    (["--stop", "\\n", "--min-length", "50", "-n", "10"], 2, "--min-length"),
    (["--beam", "2", "--num-samples", "3"], 2, "--num-samples"),
    (["--beam", "2", "--temperature", "0.5"], 2, "deterministic"),
    (["--min-length", "3"], 2, "--min-length needs --stop"),
])
def test_generate_bad_input(models: dict[str, Path], args: list[str], code: int, needle: str) -> None:
    assert_clean_error(run("generate", "-m", str(models["lines"]), "--seed", "1", *args), code, needle)


def test_train_records_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    names = str(models["dir"] / "names.txt")
    out = str(tmp_path / "m.pt")
    assert_clean_error(run("train", names, "-o", out, "--delimiter", "|", *TINY), 2, "--partition records")
    assert_clean_error(run("train", names, "-o", out, "--partition", "records", "--delimiter", "|", *TINY), 1,
                       "never occurs")
    assert_clean_error(run("train", names, "-o", out, "--partition", "records", "--delimiter", "", *TINY), 2,
                       "--delimiter must not be empty")
    assert not (tmp_path / "m.pt").exists()


def test_train_records_paragraphs_and_resume(tmp_path: Path) -> None:
    text = "\n\n".join(f"para {i}\nline two of {i}" for i in range(30)) + "\n\n"
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    out = str(tmp_path / "p.pt")
    args = ["train", str(tmp_path / "p.txt"), "-o", out, "--partition", "records", "--delimiter", "\\n\\n", *TINY]
    assert run(*args).exit_code == 0
    r = run("train", str(tmp_path / "p.txt"), "-o", out, "--resume", out, "--max-steps", "8", "-q")
    assert r.exit_code == 0, r.stderr
    info = json.loads(run("info", "-m", out, "--json").stdout)
    assert info["step"] == 8 and info["train"]["delimiter"] == "\n\n"
    # eval score reads the records model's own delimiter by default: paragraphs
    r = run("eval", "score", "-m", out, input="para 1\nline two of 1\n\npara 2\nline two of 2\n\n")
    assert len(r.stdout.splitlines()) == 2


def test_language_identification_with_tiny_models(tmp_path: Path) -> None:
    """Two tiny models on two made-up languages (same alphabet, other letter frequencies and
    words): every held-out line goes to the right one (the benchmark row does this on real text)."""
    import random

    rng = random.Random(0)
    words = {"ana": ["la", "na", "ma", "ana", "tala"], "oto": ["to", "ko", "oto", "lok", "tok"]}

    def line(lang: str) -> str:
        return " ".join(rng.choice(words[lang]) for _ in range(12))

    models = {}
    for lang in words:
        (tmp_path / f"{lang}.txt").write_text("\n".join(line(lang) for _ in range(150)) + "\n", encoding="utf-8")
        models[lang] = str(tmp_path / f"{lang}.pt")
        r = run("train", str(tmp_path / f"{lang}.txt"), "-o", models[lang], "--hidden", "24", "--layers", "1",
                "-b", "16", "-t", "32", "--max-steps", "40", "--val-fraction", "0", "-q", "--seed", "1")
        assert r.exit_code == 0, r.stderr
    held_out = [(line(lang), lang) for lang in words for _ in range(20)]
    (tmp_path / "mixed.txt").write_text("\n".join(t for t, _ in held_out) + "\n", encoding="utf-8")
    r = run("eval", "score", "-m", models["ana"], "-m", models["oto"], "--json", str(tmp_path / "mixed.txt"))
    best = [json.loads(obj)["best"] for obj in r.stdout.splitlines()]
    right = sum(b == models[lang] for b, (_, lang) in zip(best, held_out, strict=True))
    assert right / len(held_out) >= 0.9


def test_score_closed_stdin_is_a_usage_error(models: dict[str, Path]) -> None:
    p = subprocess.run(f"'{sys.executable}' -m charrnn eval score -m '{models['lines']}' <&-", shell=True,
                       capture_output=True, text=True, executable="/bin/bash", timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "Error: standard input is closed: pipe records in or give a file"


def test_beam_novel_skips_training_records(models: dict[str, Path], tmp_path: Path) -> None:
    """--novel applies to beam search: a checkpoint whose training records are the likeliest
    continuations gets the next likeliest ones instead (a tiny model need not have learned its
    records, so the records are made to be the beam's answers)."""
    import numpy as np
    import torch

    from charrnn.data.records import record_hash
    from charrnn.model.checkpoint import save

    args = ["generate", "--beam", "3", "--num-samples", "3", "-n", "8", "--json"]
    plain = json.loads(run(*args, "-m", str(models["names"])).stdout)["results"]
    ckpt = torch.load(models["names"], weights_only=True)
    ckpt["record_hashes"] = torch.from_numpy(np.array(sorted(record_hash(r["text"]) for r in plain[:2]),
                                                      dtype=np.int64))
    save(ckpt, tmp_path / "copied.pt")
    r = run(*args, "--novel", "-m", str(tmp_path / "copied.pt"))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    texts = [res["text"] for res in out["results"]]
    assert len(texts) == 3 and not set(texts) & {plain[0]["text"], plain[1]["text"]}
    assert plain[2]["text"] in texts and out["dropped"] >= 2
    assert "dropped" in r.stderr


def test_beam_accepts_the_default_sampling_values(models: dict[str, Path]) -> None:
    base = ["generate", "-m", str(models["names"]), "--beam", "3", "-n", "8"]
    plain = run(*base)
    assert plain.exit_code == 0, plain.stderr
    for same in (["--temperature", "1"], ["--temperature", "1.0", "--top-p", "1"]):
        r = run(*base, *same)
        assert r.exit_code == 0 and r.stdout == plain.stdout, r.stderr
    for other in (["--temperature", "0.7"], ["--top-k", "3"], ["--top-p", "0.9"], ["--greedy"]):
        assert_clean_error(run(*base, *other), 2, "deterministic")


def test_zero_length_on_a_records_model_names_the_model(models: dict[str, Path]) -> None:
    r = run("generate", "-m", str(models["names"]), "-n", "0", "--seed", "1")
    assert_clean_error(r, 2, "--partition records", "-n")
    assert "--stop" not in r.stderr
    r = run("generate", "-m", str(models["lines"]), "-n", "0", "--stop", "\\n", "--seed", "1")
    assert_clean_error(r, 2, "with --stop")  # there the option is the user's
    r = run("generate", "-m", str(models["lines"]), "-n", "0", "--prefix", "the", "--seed", "1")
    assert r.exit_code == 0 and r.stdout == "the\n"  # a plain model: the prefix alone


@pytest.mark.parametrize("option", ["--stop", "--delimiter"])
def test_escape_errors_quote_one_backslash(models: dict[str, Path], option: str) -> None:
    args = ["generate", "-m", str(models["lines"]), "--seed", "1"] if option == "--stop" else \
        ["eval", "score", "-m", str(models["lines"])]
    r = run(*args, option, "\\q", input="a\n")
    assert_clean_error(r, 2)
    assert r.stderr.startswith(f"Error: {option} '\\q': unknown escape \\q ("), r.stderr


def test_language_identification_across_alphabets(tmp_path: Path) -> None:
    """Two languages that share no letter: the model that cannot read a line must not win it by
    scoring only its spaces (each character it cannot read is charged the documented cost)."""
    import random

    rng = random.Random(0)
    words = {"latin": ["la", "na", "ma", "ana", "tala", "sol"], "greek": ["λα", "να", "μα", "ανα", "ταλα", "σολ"]}

    def line(lang: str) -> str:
        return " ".join(rng.choice(words[lang]) for _ in range(10))

    models = {}
    for lang in words:
        (tmp_path / f"{lang}.txt").write_text("\n".join(line(lang) for _ in range(100)) + "\n", encoding="utf-8")
        models[lang] = str(tmp_path / f"{lang}.pt")
        r = run("train", str(tmp_path / f"{lang}.txt"), "-o", models[lang], "--hidden", "16", "--layers", "1",
                "-b", "8", "-t", "32", "--max-steps", "10", "--val-fraction", "0", "-q", "--seed", "1")
        assert r.exit_code == 0, r.stderr
    held_out = [(line(lang), lang) for lang in words for _ in range(6)]
    mixed = "\n".join(t for t, _ in held_out) + "\n"
    r = run("eval", "score", "-m", models["latin"], "-m", models["greek"], "--json", input=mixed)
    assert r.exit_code == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["best"] for o in objs] == [models[lang] for _, lang in held_out]
    for o, (text, _) in zip(objs, held_out, strict=True):
        assert o["chars"] + o["unknown"] == len(text) + 1  # the best model reads its own line
        assert max(o["scores"].values()) > 13.9 * 0.5  # the other pays for the letters it cannot read
    # each model is named once on stderr, then counted: a few lines, not one per record
    lines = r.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("warning: ") for line in lines)
    assert sum("of record 1 " in line for line in lines) == 1 and "of 6 of the 12 records" in lines[-1]


def test_score_comparison_charges_what_a_model_cannot_read(models: dict[str, Path], tmp_path: Path) -> None:
    """The issue's case: a model that knows 1 of 17 characters of a line must not be best on it."""
    (tmp_path / "upper.txt").write_text("THE TIME MACHINE\n" * 30, encoding="utf-8")
    upper = str(tmp_path / "upper.pt")
    assert run("train", str(tmp_path / "upper.txt"), "-o", upper, *TINY).exit_code == 0
    r = run("eval", "score", "-m", upper, "-m", str(models["lines"]), "--json", input="THE TIME MACHINE\n")
    obj = json.loads(r.stdout)
    assert obj["best"] == upper and obj["unknown"] == 0
    lines_cost = obj["scores"][str(models["lines"])]
    assert lines_cost > 14 * 13.92 / 17  # 14 of its 17 characters cost ln(1114112) = 13.92 nats each
    assert "cannot read 14 of 17 characters" in r.stderr


def test_score_model_given_twice_is_refused(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    lines = str(models["lines"])
    assert_clean_error(run("eval", "score", "-m", lines, "-m", lines, input="a\n"), 2, "given twice")
    monkeypatch.chdir(models["dir"])
    r = run("eval", "score", "-m", "lines.pt", "-m", "./lines.pt", input="a\n")
    assert_clean_error(r, 2, "'./lines.pt' is given twice", "are the same file")


def test_score_paths_with_tabs_and_newlines_are_escaped(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    odd = tmp_path / "a\tb\nc.pt"
    shutil.copy(models["lines"], odd)
    r = run("eval", "score", "-m", str(odd), "-m", str(models["names"]), "--header", input="the fire\n")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(len(row) == 4 for row in rows)
    assert rows[0][0] == str(odd).replace("\t", "\\t").replace("\n", "\\n")
    assert rows[1][2] in (rows[0][0], rows[0][1])
    js = json.loads(run("eval", "score", "-m", str(odd), "-m", str(models["names"]), "--json", input="x\n").stdout)
    assert str(odd) in js["scores"]  # JSON keeps the path as it is (JSON escapes it)
