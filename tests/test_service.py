"""charrnn.serving.protocol and charrnn.serving.service: the requests a served model answers, checked and run
(issue 20, 2-3).

The answers are compared with what the commands they mirror print with --json (complete, generate,
eval score), run on the same tiny checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import cli
from charrnn.errors import RequestError, UsageError
from charrnn.serving.protocol import Limits, decode_json, parse_generate, parse_next, parse_score
from charrnn.serving.service import (
    error_status,
    handle,
    load_models,
    model_spec,
    pick_model,
    run_generate,
    stream_generate,
)

TINY = ["--hidden", "16", "-b", "4", "-t", "16", "--val-every", "20", "-q", "--precision", "fp32"]


def run(*args: Any, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("service")
    (d / "c.txt").write_text("the time traveller smiled and we sat about the fire\n" * 20, encoding="utf-8")
    (d / "names.txt").write_text("\n".join(["alice", "bob", "carol", "dave"] * 15) + "\n", encoding="utf-8")
    assert run("train", d / "c.txt", "-o", d / "m.pt", *TINY, "--max-steps", "20").exit_code == 0
    r = run("train", d / "names.txt", "-o", d / "r.pt", "--partition", "records", *TINY, "--max-steps", "10")
    assert r.exit_code == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def models(home: Path) -> dict:
    return load_models([("m", str(home / "m.pt")), ("r", str(home / "r.pt"))])


def cli_json(*args: Any, input: str | None = None) -> Any:
    r = run(*args, input=input)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    return json.loads(lines[0]) if len(lines) == 1 else [json.loads(line) for line in lines]


# Every op answers what its command prints ---------------------------------------------------------------------

def test_next_is_complete_json(home: Path, models: dict) -> None:
    got = handle({"op": "next", "prefix": "the ti", "k": 4}, models)
    assert got == cli_json("complete", "-m", home / "m.pt", "--prefix", "the ti", "-k", "4", "--json")
    got = handle({"op": "next", "prefix": "the ", "words": 3}, models)
    assert got == cli_json("complete", "-m", home / "m.pt", "--prefix", "the ", "--words", "3", "--json")
    got = handle({"op": "next", "model": "r", "k": 3}, models)  # a records model: the start of a record
    assert got == cli_json("complete", "-m", home / "r.pt", "-k", "3", "--json")


@pytest.mark.parametrize(("body", "args"), [
    ({"prefix": "the ", "n": 30, "seed": 3, "num_samples": 2}, ["--prefix", "the ", "-n", "30", "--num-samples", "2"]),
    ({"n": 25, "seed": 4, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
     ["-n", "25", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9"]),
    ({"prefix": "the", "n": 20, "seed": 5, "stop": [" "], "min_length": 2, "num_samples": 3},
     ["--prefix", "the", "-n", "20", "--stop", " ", "--min-length", "2", "--num-samples", "3"]),
    ({"n": 10, "seed": 6, "greedy": True}, ["-n", "10", "--greedy"]),
])
def test_generate_is_generate_json(home: Path, models: dict, body: dict, args: list[str]) -> None:
    got = handle({"op": "generate", **body}, models)
    expected = cli_json("generate", "-m", home / "m.pt", "--seed", body["seed"], "--no-echo", "--json", *args)
    assert got["seed"] == body["seed"]
    assert got["samples"] == expected.get("samples", [expected.get("text")])


def test_generate_records_novel_and_beam_are_generate_json(home: Path, models: dict) -> None:
    got = handle({"op": "generate", "model": "r", "n": 12, "seed": 2, "num_samples": 4, "novel": True}, models)
    expected = cli_json("generate", "-m", home / "r.pt", "-n", "12", "--seed", "2", "--num-samples", "4", "--novel",
                        "--json")
    assert got["samples"] == expected["samples"] and len(got["samples"]) == 4
    got = handle({"op": "generate", "model": "r", "n": 12, "beam": 3, "num_samples": 2}, models)
    expected = cli_json("generate", "-m", home / "r.pt", "-n", "12", "--beam", "3", "--num-samples", "2", "--json")
    assert got == {"samples": [x["text"] for x in expected["results"]]}


def test_echo_puts_the_prefix_in_front(models: dict) -> None:
    plain = handle({"op": "generate", "prefix": "the ", "n": 8, "seed": 1, "num_samples": 2}, models)
    echoed = handle({"op": "generate", "prefix": "the ", "n": 8, "seed": 1, "num_samples": 2, "echo": True}, models)
    assert echoed["samples"] == ["the " + s for s in plain["samples"]]
    assert handle({"op": "generate", "prefix": "ab", "n": 0, "echo": True}, models)["samples"] == ["ab"]
    assert handle({"op": "generate", "n": 0, "num_samples": 3}, models)["samples"] == ["", "", ""]


def test_a_missing_seed_is_drawn_and_reported(models: dict) -> None:
    got = handle({"op": "generate", "n": 15}, models)
    again = handle({"op": "generate", "n": 15, "seed": got["seed"]}, models)
    assert isinstance(got["seed"], int) and again["samples"] == got["samples"]


def test_score_is_eval_score_json(home: Path, models: dict) -> None:
    records = ["the time", "zzz", "", "fire and"]
    got = handle({"op": "score", "records": records}, models)
    assert got == {"scores": cli_json("eval", "score", "-m", home / "m.pt", "--json", input="\n".join(records) + "\n")}
    got = handle({"op": "score", "records": ["alice", "bo"], "end": False, "model": "r"}, models)
    assert got == {"scores": cli_json("eval", "score", "-m", home / "r.pt", "--json", "--no-end", input="alice\nbo\n")}
    got = handle({"op": "score", "records": ["the", "time"], "delimiter": " "}, models)
    assert got == {"scores": cli_json("eval", "score", "-m", home / "m.pt", "--json", "--delimiter", " ",
                                      input="the time ")}


def test_models_lists_every_model_and_the_default(home: Path, models: dict) -> None:
    got = handle({"op": "models", "id": "x"}, models)
    assert got["id"] == "x" and got["default"] == "m"
    assert [m["name"] for m in got["models"]] == ["m", "r"]
    info = cli_json("info", "-m", home / "r.pt", "--json")
    r = got["models"][1]
    assert (r["cell"], r["hidden"], r["layers"]) == (info["model"]["cell"], info["model"]["hidden"],
                                                     info["model"]["layers"])
    assert (r["vocab_size"], r["parameters"], r["training"]["step"]) == (info["vocab_size"], info["parameters"],
                                                                         info["step"])
    assert r["records_delimiter"] == "\n" and got["models"][0]["records_delimiter"] is None
    json.dumps(got, allow_nan=False)  # plain JSON


# Streaming ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"prefix": "the", "n": 12, "seed": 1, "num_samples": 3, "echo": True},
    {"model": "r", "n": 10, "seed": 2, "num_samples": 3},
])
def test_stream_pieces_join_to_the_samples(models: dict, body: dict) -> None:
    req = parse_generate(body, Limits())
    lm = pick_model(models, req.model)
    pieces = list(stream_generate(lm, req))
    joined = ["".join(p for i, p in pieces if i == k) for k in range(req.num_samples)]
    samples = run_generate(lm, req)["samples"]
    if req.model is None:  # no stop string: one character at a time, in sample order
        assert joined == samples and len(pieces) == req.num_samples * (req.n + 1)
    else:  # told as they grow, listed in the order they end
        assert sorted(joined) == sorted(samples) and len(pieces) > req.num_samples


def test_a_stream_is_checked_before_its_first_piece_and_can_be_closed(models: dict) -> None:
    with pytest.raises(RequestError) as e:
        stream_generate(models["m"], parse_generate({"prefix": "QQ"}, Limits()))  # no iteration needed
    assert e.value.status == 422 and '"prefix"' in str(e.value)
    it = stream_generate(models["m"], parse_generate({"n": 10_000}, Limits()))
    assert len([next(it) for _ in range(5)]) == 5
    it.close()  # type: ignore[attr-defined]
    assert next(it, None) is None


# Ids, models, errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rid", [1, "a", None, [1, {"x": 2}], {"k": "v"}, 2.5, True])
def test_an_id_is_copied_into_answers_and_errors(models: dict, rid: Any) -> None:
    assert handle({"op": "next", "prefix": "t", "k": 1, "id": rid}, models)["id"] == rid
    answer = handle({"op": "next", "k": 0, "id": rid}, models)
    assert answer["id"] == rid and "error" in answer
    assert "id" not in handle({"op": "next", "k": 1}, models)


def test_a_request_names_its_model(models: dict) -> None:
    m = handle({"op": "next", "k": 50}, models)
    r = handle({"op": "next", "k": 50, "model": "r"}, models)
    assert {x["char"] for x in r["next"]} != {x["char"] for x in m["next"]}  # different vocabularies
    assert handle({"op": "next", "k": 50, "model": "m"}, models) == m  # the first is the default
    assert handle({"op": "next", "model": "nope"}, models) == {"error": "unknown model 'nope': loaded are m, r"}
    with pytest.raises(RequestError) as e:
        pick_model(models, "nope")
    assert e.value.status == 404


LIMITS = Limits(max_prefix_chars=10, max_n=50, max_num_samples=4, max_beam=3, max_k=5, max_stops=2, max_records=3,
                max_record_chars=8)


@pytest.mark.parametrize(("parse", "body", "status", "needle"), [
    (parse_next, [], 400, "JSON object"),
    (parse_next, {"k": True}, 422, '"k" must be an integer, got true'),
    (parse_next, {"k": 2.0}, 422, '"k" must be an integer'),
    (parse_next, {"k": 0}, 422, '"k" must be an integer from 1 to 5'),
    (parse_next, {"k": 6}, 422, "--max-k"),
    (parse_next, {"k": None}, 422, "got null"),
    (parse_next, {"words": "3"}, 422, '"words" must be an integer'),
    (parse_next, {"prefix": 3}, 422, '"prefix" must be a string'),
    (parse_next, {"prefix": "x" * 11}, 413, '"prefix" has 11 characters'),
    (parse_next, {"unk": "drop"}, 422, '"unk" must be one of error, map'),
    (parse_next, {"model": 1}, 422, '"model" must be a string'),
    (parse_next, {"temprature": 1}, 422, "unknown field 'temprature'"),
    (parse_generate, {"n": -1}, 422, '"n" must be an integer from 0'),
    (parse_generate, {"n": 51}, 422, "--max-n"),
    (parse_generate, {"temperature": 0}, 422, '"temperature" must be in (0, inf]'),
    (parse_generate, {"temperature": math.inf}, 422, "finite number"),
    (parse_generate, {"temperature": math.nan}, 422, "finite number"),
    (parse_generate, {"temperature": "hot"}, 422, '"temperature" must be a finite number'),
    (parse_generate, {"top_p": 1.5}, 422, '"top_p" must be in (0, 1]'),
    (parse_generate, {"top_k": 0}, 422, '"top_k"'),
    (parse_generate, {"seed": -1}, 422, '"seed"'),
    (parse_generate, {"seed": 2**63}, 422, '"seed"'),
    (parse_generate, {"num_samples": 5}, 422, "--max-num-samples"),
    (parse_generate, {"stop": ""}, 422, "empty string"),
    (parse_generate, {"stop": ["a", 1]}, 422, '"stop" must be a string or an array of strings, got 1 at [1]'),
    (parse_generate, {"stop": ["a", "b", "c"]}, 413, '"stop" has 3 items'),
    (parse_generate, {"n": 5, "min_length": 6}, 422, '"min_length" must be an integer from 0 to 5'),
    (parse_generate, {"greedy": 1}, 422, '"greedy" must be true or false'),
    (parse_generate, {"beam": 4}, 422, "--max-beam"),
    (parse_generate, {"beam": 2, "top_k": 3}, 422, "deterministic"),
    (parse_generate, {"beam": 2, "num_samples": 3}, 422, "at most \"beam\""),
    (parse_generate, {"beam": 2, "stream": True}, 422, '"stream" does not apply'),
    (parse_generate, {"stop": "x", "n": 0}, 422, '"n" must be >= 1'),
    (parse_score, {}, 422, '"records" is missing'),
    (parse_score, {"records": "abc"}, 422, '"records" must be an array of strings'),
    (parse_score, {"records": ["a", None]}, 422, '"records" must be an array of strings, got null at [1]'),
    (parse_score, {"records": [["a"]]}, 422, '"records" must be an array of strings, got an array at [0]'),
    (parse_next, [1], 400, "a next request must be a JSON object, got an array"),
    (parse_score, {"records": ["a"] * 4}, 413, '"records" has 4 items'),
    (parse_score, {"records": ["a", "x" * 9]}, 413, '"records"[1] has 9 characters'),
    (parse_score, {"records": [], "end": "no"}, 422, '"end" must be true or false'),
    (parse_score, {"records": [], "delimiter": ""}, 422, '"delimiter" must not be empty'),
])
def test_every_bad_field_is_refused_by_name(parse: Any, body: Any, status: int, needle: str) -> None:
    with pytest.raises(RequestError) as e:
        parse(body, LIMITS)
    assert e.value.status == status and needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("request_", "needle"), [
    ("next", "a request must be a JSON object, got the string 'next'"),
    ([], "a request must be a JSON object, got an array"),
    (None, "a request must be a JSON object, got null"),
    ({}, '"op" is missing'),
    ({"op": 3}, '"op" is not a string'),
    ({"op": "Next"}, "\"op\" is 'Next': one of next, generate, score, models"),
    ({"op": "models", "x": 1}, "unknown field 'x' in a models request (it takes no field but \"op\" and \"id\")"),
    ({"op": "next", "x": 1},
     "unknown field 'x' in a next request (its fields are prefix, k, words, unk, label, model)"),
    ({"op": "generate", "stream": True}, '"stream" is for HTTP'),
    ({"op": "generate", "prefix": "Z\nQ"}, "not in the model's vocabulary"),
    ({"op": "generate", "min_length": 2, "n": 5}, '"min_length" needs "stop"'),
    ({"op": "generate", "novel": True, "stop": "e"}, '"novel" needs a model trained with --partition records'),
])
def test_handle_answers_errors_in_one_line(models: dict, request_: Any, needle: str) -> None:
    answer = handle(request_, models, LIMITS)
    assert list(answer) == ["error"] and needle in answer["error"] and "\n" not in answer["error"]


def test_a_records_model_refuses_n_0_and_an_unknown_prefix_may_be_mapped(models: dict) -> None:
    assert '"n" must be >= 1' in handle({"op": "generate", "model": "r", "n": 0}, models)["error"]
    assert "samples" in handle({"op": "generate", "prefix": "tQe", "n": 3, "unk": "map"}, models)
    assert handle({"op": "next", "prefix": "tQe", "k": 2, "unk": "error"}, models)["error"].startswith('"prefix"')


def test_error_status_of_anything_a_request_raises() -> None:
    assert error_status(RequestError(413, "too\nbig")) == (413, "too big")
    assert error_status(UsageError("no")) == (422, "no")
    assert error_status(RuntimeError("DefaultCPUAllocator: can't allocate memory"))[0] == 503
    status, message = error_status(KeyError("x"))
    assert status == 500 and message == "internal error: KeyError: 'x'"


def test_limits_must_be_positive_integers() -> None:
    with pytest.raises(RequestError, match="--max-n must be an integer >= 1"):
        Limits(max_n=0)
    with pytest.raises(RequestError, match="--max-k"):
        Limits(max_k=True)


# Loading ------------------------------------------------------------------------------------------------------

def test_model_names(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_spec("a/b/model.pt") == ("model", "a/b/model.pt")
    assert model_spec("big=x/m.pt") == ("big", "x/m.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k=v.pt").write_bytes(b"")
    with pytest.raises(UsageError, match="NAME=PATH"):  # an existing file is a path, not NAME=PATH ...
        model_spec("k=v.pt")
    assert model_spec("kv=k=v.pt") == ("kv", "k=v.pt")  # ... and gets its name this way
    with pytest.raises(UsageError, match="NAME=PATH"):
        model_spec("dir/ spaced name.pt")
    with pytest.raises(UsageError, match="two models are named 'm'"):
        load_models([("m", str(home / "m.pt")), ("m", str(home / "r.pt"))])
    with pytest.raises(UsageError, match="does not exist"):
        load_models([("x", str(home / "missing.pt"))])


# Anything at all ----------------------------------------------------------------------------------------------

SMALL = Limits(max_prefix_chars=20, max_n=12, max_num_samples=3, max_beam=3, max_k=8, max_records=4,
               max_record_chars=20)
scalars = st.none() | st.booleans() | st.integers(-3, 15) | st.floats(allow_nan=True) | st.text("ab e\nQ", max_size=6)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                            max_size=2), max_leaves=6)
text = st.text("ab e\n", max_size=6)
GOOD = {"id": values, "model": st.sampled_from(["m", "r"]), "prefix": text, "k": st.integers(1, 8),
        "words": st.integers(1, 3), "unk": st.sampled_from(["map", "error"]), "n": st.integers(0, 12),
        "temperature": st.floats(0.1, 3), "top_k": st.integers(1, 5), "top_p": st.floats(0.1, 1),
        "greedy": st.booleans(), "seed": st.integers(0, 9), "num_samples": st.integers(1, 3),
        "stop": text | st.lists(text, max_size=2),
        "min_length": st.integers(0, 3), "beam": st.integers(1, 3), "novel": st.booleans(), "echo": st.booleans(),
        "records": st.lists(text, max_size=4), "end": st.booleans(), "delimiter": text, "stream": st.just(False)}
OPS = {"next": ["prefix", "k", "words", "unk"],
       "generate": ["prefix", "n", "temperature", "top_k", "top_p", "greedy", "seed", "num_samples", "stop",
                    "min_length", "beam", "novel", "echo", "unk", "stream"],
       "score": ["records", "end", "delimiter"], "models": []}


def op_request(op: str) -> st.SearchStrategy:
    """Mostly plausible fields of `op` (each sometimes anything at all), now and then a foreign one."""
    names = ["id", "model", *OPS[op]]
    optional = {f: st.one_of(*[GOOD[f]] * 5, values) for f in names if f != "records"}
    required = {"op": st.just(op)} if op != "score" else {"op": st.just(op), "records": GOOD["records"]}
    foreign = st.builds(lambda key, value: {"op": op, key: value}, st.sampled_from(list(GOOD)), values)
    plausible = st.fixed_dictionaries(required, optional=optional)
    return st.one_of(plausible, plausible, plausible, foreign)


requests = st.one_of(*[op_request(op) for op in OPS], values)
KEYS = {"next": ({"prefix", "next"}, {"prefix", "words"}), "generate": ({"samples", "seed"}, {"samples"}),
        "score": ({"scores"},), "models": ({"models", "default"},)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(requests)
def test_any_request_gets_an_answer_or_one_error_line(models: dict, request_: Any) -> None:
    answer = handle(request_, models, SMALL)
    assert isinstance(answer, dict)
    body = {k: v for k, v in answer.items() if k != "id"}
    if "error" in body:
        assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]
        assert not body["error"].startswith("internal error"), body["error"]
    else:
        assert set(body) in [set(k) for k in KEYS[request_["op"]]]
    assert ("id" in answer) == (isinstance(request_, dict) and "id" in request_)
    json.dumps(body, allow_nan=False)


@pytest.mark.parametrize(("line", "needle"), [
    ('{"op": "next", "prefix": "a\\ud800"}', '"prefix" holds \\ud800 alone'),
    ('{"op": "score", "records": ["ok", "\\udc00b"]}', '"records"[1] holds \\udc00 alone'),
    ('{"op": "models", "id": {"a": ["\\ud800"]}}', '"id"["a"][0] holds \\ud800 alone'),
    ('{"op": "models", "\\ud800": 1}', "the key '\\ud800' holds \\ud800 alone"),
    ('{"op": "next", "k": 1' + "0" * 200 + "}", "a number of 201 digits (no field takes more than 100)"),
    ('{"op": "next", "k": 1' + "0" * 5000 + "}", "a number of 5,001 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bodies_that_no_answer_could_carry_are_refused_in_plain_words(line: str, needle: str) -> None:
    """A lone surrogate is valid JSON but no character (the HTTP answer could not be encoded: a 500), and
    Python's own words ("Exceeds the limit", "maximum recursion depth") are not the client's."""
    with pytest.raises(RequestError) as e:
        decode_json(line.encode(), Limits())
    assert e.value.status == 400 and needle in str(e.value), str(e.value)
    assert "sys." not in str(e.value) and "recursion" not in str(e.value)
    assert decode_json(b'{"prefix": "\\ud83d\\ude00"}', Limits()) == {"prefix": "\U0001f600"}  # a pair is fine
