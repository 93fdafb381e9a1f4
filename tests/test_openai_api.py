"""`charrnn serve`'s OpenAI-compatible API (issue 30, section 1), through the real `openai` client against
the real server in a subprocess on a loopback port: the model list, completions that are what
`charrnn generate` prints, samples, streaming, log-probabilities that are what `charrnn eval score`
computes, OpenAI's error shape, and the API key."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from test_server import CHARRNN, TINY, Server, text  # noqa: E402

from charrnn.cli import cli  # noqa: E402

PROMPT = "the time traveller smiled and "


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("openai")
    (d / "c.txt").write_text(text(), encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "12",
                                 "--precision", "fp32"])
    assert r.exit_code == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("-m", f"tiny={home / 'm.pt'}", "-m", f"other={home / 'm.pt'}", "--max-num-samples", "8",
               "--max-n", "5000")
    yield s
    code, out = s.stop()
    assert code == 0 and out == b"", "".join(s.lines)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="any key will do", max_retries=0, timeout=60) as c:
        yield c


def generate(home: Path, *args: str) -> str:
    r = subprocess.run([*CHARRNN, "generate", "-m", str(home / "m.pt"), "--device", "cpu", "--no-echo", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_model_list_is_openais_with_charrnns_details(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "other"]
    first = models.data[0]
    assert first.object == "model" and first.owned_by == "charrnn" and first.created > 1_700_000_000
    assert first.model_extra["charrnn"]["hidden"] == 16 and first.model_extra["charrnn"]["training"]["step"] == 12
    assert client.models.retrieve("other").id == "other"
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        client.models.retrieve("nope")


def test_a_greedy_completion_is_charrnn_generate_greedy(client: openai.OpenAI, home: Path) -> None:
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=60, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    (choice,) = r.choices
    assert choice.text + "\n" == generate(home, "-p", PROMPT, "-n", "60", "--greedy")
    assert choice.finish_reason == "length" and choice.index == 0 and choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(PROMPT), 60,
                                                                                       len(PROMPT) + 60)


def test_n_samples_are_charrnn_generate_with_the_seed(client: openai.OpenAI, home: Path) -> None:
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 120
    texts = [c.text for c in r.choices]
    assert json.loads(generate(home, "-p", PROMPT, "-n", "40", "--seed", "7", "--num-samples", "3",
                               "--json"))["samples"] == texts
    assert len(set(texts)) == 3
    again = client.completions.create(model="tiny", prompt=[PROMPT, "we sat"], max_tokens=40, n=3, seed=7)
    assert [c.index for c in again.choices] == list(range(6)) and [c.text for c in again.choices[:3]] == texts
    assert again.usage.prompt_tokens == len(PROMPT) + len("we sat")


def test_a_stream_concatenates_to_the_same_text(client: openai.OpenAI) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 300, "n": 2, "seed": 3, "stop": ["fire"]}
    whole = client.completions.create(**body)
    parts: dict[int, list[str]] = {0: [], 1: []}
    finish, usage = {}, None
    for chunk in client.completions.create(**body, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "text_completion" and chunk.model == "tiny"
        for c in chunk.choices:
            parts[c.index].append(c.text)
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert ["".join(parts[i]) for i in (0, 1)] == [c.text for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_before_them(client: openai.OpenAI) -> None:
    free = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=80, temperature=0).choices[0].text
    stop = free[20:23]
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=80, temperature=0, stop=[stop, "QQ"])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == free.index(stop) + len(stop)  # the stop string was generated
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=80, temperature=0, stop=stop, stream=True))
    assert streamed == cut.choices[0].text


def test_logprobs_give_the_likeliest_characters(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 30
    assert lp.text_offset == list(range(30))
    for token, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and all(v <= 0 for v in top.values())
        assert top[token] == chosen == max(top.values())  # greedy: the likeliest
    assert sum(math.exp(v) for v in lp.top_logprobs[0].values()) < 1


def test_echo_with_no_tokens_scores_the_prompt_as_eval_score(client: openai.OpenAI, home: Path) -> None:
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    (choice,) = r.choices
    assert choice.text == PROMPT and choice.logprobs.tokens == list(PROMPT)
    assert choice.logprobs.text_offset == list(range(len(PROMPT)))
    (home / "p.txt").write_text(PROMPT + "\n", encoding="utf-8")
    score = subprocess.run([*CHARRNN, "eval", "score", "-m", str(home / "m.pt"), str(home / "p.txt"), "--no-end",
                            "--json"], capture_output=True, text=True, timeout=120)
    assert score.returncode == 0, score.stderr
    nats = json.loads(score.stdout)["nats"]
    assert sum(choice.logprobs.token_logprobs) == pytest.approx(-nats, rel=1e-5)
    # as lm-evaluation-harness asks for a loglikelihood: one token more, its log-probabilities after the prompt's
    lm_eval = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1,
                                        temperature=0).choices[0]
    assert lm_eval.text.startswith(PROMPT) and len(lm_eval.logprobs.tokens) == len(PROMPT) + 1
    assert lm_eval.logprobs.token_logprobs[: len(PROMPT)] == choice.logprobs.token_logprobs


def raw(server: Server, body: object, path: str = "/v1/completions") -> httpx.Response:
    return server.client.post(path, content=body if isinstance(body, str) else json.dumps(body))


def openai_error(r: httpx.Response, status: int, needle: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and needle in error["message"], error
    assert error["param"] == param and "\n" not in error["message"]


@pytest.mark.parametrize(("body", "status", "needle", "param"), [
    ({"model": "tiny", "prompt": "the", "max_tokens": "5"}, 400, '"max_tokens" must be an integer', "max_tokens"),
    ({"model": "tiny", "prompt": "the", "max_tokens": 5001}, 400, "--max-n", "max_tokens"),
    ({"model": "tiny", "prompt": "the", "temperature": 2.5}, 400, '"temperature" must be in [0, 2]', "temperature"),
    ({"model": "tiny", "prompt": "the", "n": 9}, 400, "--max-num-samples", "n"),
    ({"model": "tiny", "prompt": "the", "logprobs": 6}, 400, '"logprobs" must be an integer from 0 to 5', "logprobs"),
    ({"model": "tiny", "prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 400, "limit of 4", "stop"),
    ({"model": "tiny", "prompt": "the", "stop": [""]}, 400, "empty string", "stop"),
    ({"model": "tiny", "prompt": [[1, 2, 3]]}, 400, "token ids", "prompt"),
    ({"model": "tiny"}, 400, '"prompt" is missing', "prompt"),
    ({"model": "tiny", "prompt": "the", "logit_bias": {"5": 10}}, 400, "not supported", "logit_bias"),
    ({"model": "tiny", "prompt": "the", "stream": False, "stream_options": {"include_usage": True}}, 400,
     '"stream_options" is only', "stream_options"),
    ({"model": "nope", "prompt": "the"}, 404, "unknown model 'nope'", "model"),
])
def test_wrong_fields_get_openais_error_shape(server: Server, body: dict, status: int, needle: str,
                                              param: str) -> None:
    openai_error(raw(server, body), status, needle, param)


def test_unknown_fields_are_ignored_and_other_errors_have_the_shape_too(server: Server,
                                                                        client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="the", max_tokens=3, user="u1", presence_penalty=0,
                                  best_of=1, extra_body={"frobnicate": [1, 2], "top_k": None})
    assert len(r.choices[0].text) == 3
    assert raw(server, {"prompt": "the", "max_tokens": 2}).json()["model"] == "tiny"  # no model: the default
    unknown = client.completions.create(model="tiny", prompt="QQthe", max_tokens=0, echo=True, logprobs=1)
    assert unknown.choices[0].logprobs.token_logprobs[:2] == [None, None]  # read as <unk>, not scored
    openai_error(raw(server, '{"prompt": "the'), 400, "malformed JSON")
    openai_error(server.client.get("/v1/nothing"), 404, "no such path")
    openai_error(server.client.get("/v1/completions"), 405, "GET is not allowed")
    openai_error(raw(server, {"prefix": "the"}, "/v1/generate"), 404, "/v1/generate has moved to /charrnn/v1/generate")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="the", max_tokens=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"


def test_an_api_key_turns_other_keys_away(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_API_KEY", "s3cret-key")
    s = Server("-m", str(home / "m.pt"))
    try:
        with openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as e:
                bad.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        with openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret-key", max_retries=0) as good:
            assert good.completions.create(model="m", prompt="the", max_tokens=4).choices[0].text
        native = s.client.post("/charrnn/v1/next", json={"prefix": "the"})
        assert native.status_code == 401 and "no API key" in native.json()["error"]
        assert s.client.post("/charrnn/v1/next", json={"prefix": "the"},
                             headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert s.client.get("/healthz").status_code == 200  # probes need no key
    finally:
        code, _ = s.stop()
    assert code == 0


def test_api_key_is_refused_with_stdio_and_must_be_sane(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_API_KEY"}
    for args, needle in ((["--stdio", "--api-key", "k"], "--api-key is for HTTP"),
                         (["--api-key", "two words"], "printable ASCII without spaces")):
        r = subprocess.run([*CHARRNN, "serve", "-m", str(home / "m.pt"), *args], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, env=env)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("Error: ") and needle in r.stderr


def openai_doc_blocks() -> list[str]:
    page = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    part = page.split("\n## OpenAI-compatible API\n")[1].split("\n## ")[0]
    return re.findall(r"^```python\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL)


def test_the_openai_client_examples_of_the_docs_and_readme_run(server: Server, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = openai_doc_blocks() + [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
                                    if "openai" in b]
    assert len(blocks) >= 3
    for block in blocks:
        code = block.replace("http://127.0.0.1:8000", server.url).replace('"model"', '"tiny"').replace("The ", "the ")\
            .replace("the Time Traveller", "the time traveller")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip(), (block, r.stderr[-2000:])


def scrape(s: Server) -> dict[str, float]:
    """/metrics as {"name{labels}": value} (Prometheus's text format, comments left out)."""
    r = s.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_metrics_count_requests_latency_characters_queues_and_models(server: Server,
                                                                     client: openai.OpenAI) -> None:
    before = scrape(server)
    client.completions.create(model="tiny", prompt="the", max_tokens=25, n=2)
    assert raw(server, {"model": "tiny", "prompt": "the", "temperature": -1}).status_code == 400
    native = server.client.post("/charrnn/v1/generate", json={"prefix": "the", "n": 30, "model": "other"})
    assert native.status_code == 200
    assert server.client.post("/charrnn/v1/generate", json={"prefix": "the", "n": 7, "stop": ["QQ"], "echo": True,
                                                            "model": "other"}).status_code == 200
    server.client.get("/no/such/path/" + "x" * 50)
    server.access("GET /no/such/path/" + "x" * 50)  # counted when its log line is written
    after = scrape(server)

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew('charrnn_requests_total{method="POST",route="/v1/completions",status="200"}') == 1
    assert grew('charrnn_requests_total{method="POST",route="/v1/completions",status="400"}') == 1
    assert grew('charrnn_requests_total{method="POST",route="/charrnn/v1/generate",status="200"}') == 2
    assert grew('charrnn_requests_total{method="GET",route="other",status="404"}') == 1
    assert grew('charrnn_request_duration_seconds_count{route="/v1/completions"}') == 2
    assert grew('charrnn_request_duration_seconds_bucket{le="+Inf",route="/charrnn/v1/generate"}') == 2
    assert grew('charrnn_generated_characters_total{model="tiny"}') == 50
    assert grew('charrnn_generated_characters_total{model="other"}') == 37  # the engine's 30, the pool's 7
    assert after['charrnn_models_loaded'] == 2
    assert after['charrnn_queue_depth{model="tiny"}'] == 0 and 'charrnn_generating_streams{model="other"}' in after
