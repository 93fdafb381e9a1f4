"""Every example in README.md and docs/*.md runs, shortened, and ends the way it says.

The convention (docs/index.md): a fenced block whose info string is `sh` is an example that runs; any
other info string (`text`, `console`, `json`, ...) is shown only. Each `sh` block is one bash script,
run with `set -o pipefail` in a fresh copy of a folder holding the files the examples name (FILES
and a tiny trained `model.pt`), so that the lines of a block may build on each other (train, then
resume) and blocks never do. Each command line must exit 0, or the code its comment states
(`charrnn train corpus.txt -o -    # exit 2`). `charrnn` is a bash function that shortens `train`
(tests/examples_runner.py `shorten`: at most a few steps, a tiny model) and runs the command in a
fresh process forked from one that imported torch once. A block that names a catalog corpus reads
it from ../shared/corpora (skipped when that folder is absent); nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from examples_runner import EPOCH_CAP, MAX_STEPS, shorten

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "examples_runner.py"
SHARED = ROOT.parent / "shared" / "corpora"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CATALOG_NAMES = re.compile(r"\b(tinyshakespeare|timemachine|ptb-char|enwik8|text8)\b")
EXPECTED_EXIT = re.compile(r"\s#.*\bexits? (\d+)\b")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([^`\s]*)")
OPTIONAL_TOOLS = ("jq",)  # used by examples, not always installed (coreutils, awk and find are assumed)
BLOCK_TIMEOUT = 120  # seconds; a block takes about one second per command

_ENGLISH = [
    "The Time Traveller smiled round at us.",
    "Then he began to speak of the four dimensions of space and time.",
    "We sat about the fire in the old room, and the lamp burned low.",
    "Clearly any real body must have extension in four directions.",
    "There is no difference between time and space except that our consciousness moves along it.",
    "The psychologist looked at the little machine on the table.",
    "It was a glittering metallic framework, scarcely larger than a small clock.",
    "Nobody believed him, and he laughed at our faces in the firelight.",
]
_FRENCH = [
    "Le voyageur du temps nous regarda en souriant.",
    "Puis il se mit a parler des quatre dimensions de l'espace et du temps.",
    "Nous etions assis autour du feu dans la vieille salle.",
    "La petite machine brillait sur la table comme une horloge.",
]
_NAMES = ("Anna Arthur Beatrice Benedict Clara Cedric Diana Dorian Edith Edmund Flora Felix Grace Gideon Helen "
          "Hugo Irene Isaac Julia Jasper Laura Lionel Marian Martin Mary Marcus Nora Oliver Olive Percy Rose "
          "Rupert Sylvia Simon Thea Tobias Una Victor Violet Walter").split()
# The files the examples name, in the folder every block starts from (with model.pt, trained on corpus.txt).
FILES = {
    "corpus.txt": "\n".join(_ENGLISH[(i * 3) % 8] for i in range(9)) + "\n",  # a few steps an epoch
    "held_out.txt": "\n".join(_ENGLISH[(i * 5 + 1) % 8] for i in range(8)) + "\n",
    "notes.txt": "The machine stood in the laboratory.\nWe looked at it for a long time.\n",
    "start.txt": "The Time Traveller",
    "names.txt": "\n".join(_NAMES * 3) + "\n",
    "english.txt": "\n".join(_ENGLISH * 6) + "\n",
    "french.txt": "\n".join(_FRENCH * 12) + "\n",
    "mixed.txt": "\n".join(s for pair in zip(_ENGLISH[:4], _FRENCH, strict=True) for s in pair) + "\n",
    "extra.txt": "And then the lamp went out.\n",
    "letters/1.txt": "\n".join(_ENGLISH[:4]) + "\n",
    "letters/2.txt": "\n".join(_ENGLISH[4:]) + "\n",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str
    lines: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.where}:{self.line}"

    @property
    def where(self) -> str:
        return str(self.page.relative_to(ROOT)) if self.page.is_relative_to(ROOT) else str(self.page)


def fenced_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append(Block(page, i + 1, info, tuple(body)))
        i = j + 1
    return blocks


def examples() -> list[Block]:
    return [b for page in PAGES for b in fenced_blocks(page) if b.info in ("sh", "py")]


def script(block: Block) -> str:
    """The block as a bash script that stops at the first command ending otherwise than it says (a `py`
    block: one Python program, run whole)."""
    if block.info == "py":
        code = "\n".join(block.lines) + "\n"
        failed = f'echo "EXAMPLE FAILED: {block.id}" >&2; exit 97'
        return f'"$EXAMPLES_PYTHON" -c {shlex.quote(code)} || {{ {failed}; }}\n'
    out = ["set -o pipefail", 'charrnn() { "$EXAMPLES_PYTHON" -S "$EXAMPLES_RUNNER" client "$@"; }',
           "less() { cat; }  # a pager shows its input"]
    pending, start = "", 0
    for n, line in enumerate(block.lines):
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command, pending = pending + line, ""
        out.append(command)
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        m = EXPECTED_EXIT.search(command)
        expected = int(m.group(1)) if m else 0
        where = f"{block.where}:{block.line + 1 + start}"
        out.append(f'__rc=$?; if [ "$__rc" != {expected} ]; then echo "EXAMPLE FAILED: {where} exited $__rc, '
                   f'expected {expected}" >&2; exit 97; fi')
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("examples")
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        "EXAMPLES_PYTHON": sys.executable, "EXAMPLES_RUNNER": str(RUNNER),
        "OMP_NUM_THREADS": "1",  # 2 threads on a busy 2-core machine make each step wait for the other
        "CHARRNN_CORPORA": str(SHARED),
        "CHARRNN_CORPUS_URL_BASE": "http://127.0.0.1:9/no-network-in-tests",
        "COLUMNS": "100", "LINES": "30",
    })
    socket_dir = Path(tempfile.mkdtemp(prefix="charrnn-examples-"))  # short: a socket path has 108 bytes at most
    socket_path = socket_dir / "s.sock"
    server = subprocess.Popen([sys.executable, str(RUNNER), "serve", str(socket_path)], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", "the fork server did not start"
        env["CHARRNN_EXAMPLES_SOCKET"] = str(socket_path)
        base = tmp / "base"
        base.mkdir()
        for name, text in FILES.items():
            (base / name).parent.mkdir(exist_ok=True)
            (base / name).write_text(text, encoding="utf-8")
        fixture = Block(base / "fixture", 0, "sh", ("charrnn train corpus.txt -o model.pt --max-steps 3 -q",))
        made = run_script(script(fixture), base, env)
        assert made.returncode == 0, made.stderr
        env["EXAMPLES_BASE"] = str(base)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(socket_dir, ignore_errors=True)


def run_script(text: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text],
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT)


def skip_reason(block: Block) -> str | None:
    text = "\n".join(block.lines)
    if CATALOG_NAMES.search(text) and not SHARED.is_dir():
        return f"names a catalog corpus and {SHARED} is absent (nothing is downloaded in tests)"
    for tool in OPTIONAL_TOOLS:
        if re.search(rf"\b{tool}\b", text) and shutil.which(tool) is None:
            return f"uses {tool}, which this machine lacks"
    return None


def run_block(block: Block, env: dict[str, str], work: Path) -> tuple[subprocess.CompletedProcess, float]:
    shutil.copytree(env["EXAMPLES_BASE"], work)
    started = time.monotonic()
    return run_script(script(block), work, env), time.monotonic() - started


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.id)
def test_example_runs(block: Block, example_env: dict[str, str], tmp_path: Path) -> None:
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    r, seconds = run_block(block, example_env, tmp_path / "work")
    context = f"{block.id} ({seconds:.1f} s)\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert r.returncode == 0, context
    assert "Traceback" not in r.stderr, context
    # An example that trains nothing shows nothing: a resumed run must raise the rule that stopped it.
    assert "stopping rule is already reached" not in r.stderr, context


def test_the_pages_have_examples_to_run() -> None:
    blocks = examples()
    assert len(blocks) >= 20
    assert any(b.page.name == "README.md" for b in blocks)


def test_every_fence_says_whether_it_runs() -> None:
    """A fence without an info string would be neither run nor marked as shown only: decide."""
    unmarked = [b.id for page in PAGES for b in fenced_blocks(page) if not b.info]
    assert unmarked == []


def test_script_checks_each_command_and_its_stated_exit_code() -> None:
    block = Block(ROOT / "README.md", 10, "sh", ("# a comment", "charrnn info -m model.pt \\", "    --json",
                                                 "charrnn train corpus.txt -o -   # refused: exit 2"))
    text = script(block)
    assert "charrnn info -m model.pt      --json\n__rc=$?" in text
    assert 'expected 0" >&2' in text and "README.md:12 " in text
    assert 'if [ "$__rc" != 2 ]' in text and "README.md:14 " in text
    assert "# a comment\n__rc" not in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "c.txt", "-o", "m.pt", "--time-budget", "300"], ["train", "c.txt", "-o", "m.pt", "--max-steps", "2"]),
    (["train", "c.txt", "-o", "m.pt", "--max-steps=20000"], ["train", "c.txt", "-o", "m.pt", "--max-steps",
                                                             str(MAX_STEPS)]),
    (["train", "c.txt", "-o", "m.pt", "--epochs", "10"], ["train", "c.txt", "-o", "m.pt", "--epochs", "10",
                                                          "--max-steps", str(EPOCH_CAP)]),
    (["train", "c.txt", "-o", "m.pt"], ["train", "c.txt", "-o", "m.pt", "--max-steps", "2"]),
])
def test_shorten_turns_stopping_rules_into_a_few_steps(argv: list[str], expected: list[str]) -> None:
    out = shorten(argv)
    assert out[:len(expected)] == expected
    assert out[len(expected):len(expected) + 2] == ["--hidden", "16"]


def test_shorten_keeps_a_resumed_runs_rule_and_architecture() -> None:
    resume = ["train", "c.txt", "-o", "m.pt", "--resume", "m.pt"]
    assert shorten(resume) == resume
    assert shorten([*resume, "--epochs", "20"]) == [*resume, "--epochs", "20"]
    assert shorten(["train", "c.txt", "-o", "t.pt", "--init-from", "b.pt", "--time-budget", "60"]) == [
        "train", "c.txt", "-o", "t.pt", "--init-from", "b.pt", "--max-steps", "2"]
    assert shorten(["info", "-m", "m.pt"]) == ["info", "-m", "m.pt"]


def test_a_resume_that_does_not_raise_the_rule_that_stopped_the_run_is_caught(example_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """The README's old resume example: after --epochs 10, --max-steps 20000 trains nothing."""
    work = tmp_path / "work"
    shutil.copytree(example_env["EXAMPLES_BASE"], work)
    wrong = Block(ROOT / "README.md", 1, "sh", (
        "charrnn train corpus.txt -o model.pt --epochs 10",
        "charrnn train corpus.txt -o model.pt --resume model.pt --max-steps 20000"))
    r = run_script(script(wrong), work, example_env)
    assert r.returncode == 0 and "stopping rule is already reached" in r.stderr, r.stderr


def _options(command: click.Command, path: str) -> Iterator[tuple[str, str]]:
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("--") and opt != "--help":
                    yield path, opt
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")


def test_every_option_of_every_command_is_documented() -> None:
    from charrnn.cli import cli

    docs = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    missing = [f"{path} {opt}" for path, opt in _options(cli, "charrnn")
               if not re.search(r"(?<![\w-])" + re.escape(opt) + r"(?![\w-])", docs)]
    assert missing == []


def test_parameter_counts_in_the_docs_are_the_models() -> None:
    """The presets' parameter counts the docs quote (on tinyshakespeare: 65 characters and <unk>) are the models'."""
    import torch

    from charrnn.config import PRESETS
    from charrnn.model.network import CharRNN, ModelConfig

    counts = {}
    with torch.device("meta"):  # shapes only: the large preset would allocate 86 MB
        for name, preset in PRESETS.items():
            arch = {k: preset[k] for k in ("cell", "layers", "hidden", "embed_dim", "dropout")}
            counts[name] = sum(p.numel() for p in CharRNN(ModelConfig(vocab_size=66, **arch)).parameters())
    table = re.findall(r"^\| (tiny|small|medium|large) \([^)]*\) \| ([\d,]+) \|",
                       (ROOT / "docs" / "parallel.md").read_text(encoding="utf-8"), re.M)
    assert {name: int(n.replace(",", "")) for name, n in table} == counts
    # "1x384 ... N parameters" (not info's example line, which names another vocabulary)
    quoted = [int(n.replace(",", "")) for page in PAGES for n in
              re.findall(r"1x384[^.|]*?([\d,]{6,}) parameters(?!, vocabulary)", page.read_text(encoding="utf-8"))]
    assert len(quoted) >= 2 and set(quoted) == {counts["small"]}
