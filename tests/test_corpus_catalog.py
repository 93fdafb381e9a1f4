"""The corpus catalog: lookup order (mirror, cache, download), verified atomic downloads, the
`corpus` commands, official splits in train / eval. Never touches the network: downloads go to
a local http.server on 127.0.0.1 (or to a closed port there)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.data import catalog
from charrnn.data.corpora import join_parts, load_corpus, load_part, training_parts
from charrnn.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
TINY = "the time traveller smiled\nand we sat about the fire\n" * 10
SPLIT_TEXT = {"train": "abcdefgh ijk lmnop\n" * 120, "valid": "fade bag jig\n" * 20, "test": "hello world\n" * 20}


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_clean_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    # One error line, the last one (a "downloading ..." line may come before it).
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own cache folder, no mirrors, the built-in catalog, and downloads pointed at a closed local
    port, so that no test here can reach the network even by mistake."""
    for var in (catalog.MIRRORS_ENV, catalog.CATALOG_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv(catalog.HOME_ENV, str(home))
    monkeypatch.setenv(catalog.URL_BASE_ENV, f"http://127.0.0.1:{closed_port()}/corpora")
    return home / "corpora"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the `served` folder; under /cut/ it announces more bytes than it sends, then hangs up."""

    def do_GET(self) -> None:
        if self.path.startswith("/cut/"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"only the beginning")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder served over HTTP on 127.0.0.1, with CHARRNN_CORPUS_URL_BASE pointing at it."""
    folder = tmp_path / "served"
    folder.mkdir()

    def handler(*args, **kwargs):
        return Handler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(catalog.URL_BASE_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def file_entry(role: str, path: str, content: str, sha256: str | None = "auto") -> dict:
    return {"role": role, "path": path, "url": f"https://example.invalid/{path}", "bytes": len(content.encode()),
            "sha256": sha(content) if sha256 == "auto" else sha256}


@pytest.fixture
def fake_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private catalog (CHARRNN_CATALOG) of tiny corpora with known checksums."""
    entries = [
        {"name": "tiny", "description": "a tiny corpus", "licence": "test", "split": "none",
         "files": [file_entry("all", "tiny.txt", TINY)]},
        {"name": "tinysplit", "description": "with official splits", "licence": "test", "split": "official",
         "files": [file_entry(r, f"tinysplit/{r}.txt", t) for r, t in SPLIT_TEXT.items()]},
        {"name": "badsum", "description": "served text differs", "licence": "test", "split": "none",
         "files": [file_entry("all", "badsum.txt", TINY, sha256=sha("something else"))]},
        {"name": "nosum", "description": "no checksum", "licence": "test", "split": "none",
         "files": [file_entry("all", "nosum.txt", TINY, sha256=None)]},
        {"name": "cutoff", "description": "connection drops", "licence": "test", "split": "none",
         "files": [file_entry("all", "cut/cutoff.txt", TINY)]},
        {"name": "gone", "description": "not on the server", "licence": "test", "split": "none",
         "files": [file_entry("all", "gone.txt", TINY)]},
    ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"format": 1, "corpora": entries}), encoding="utf-8")
    monkeypatch.setenv(catalog.CATALOG_ENV, str(path))
    return path


def serve(folder: Path) -> None:
    (folder / "tiny.txt").write_text(TINY, encoding="utf-8")
    (folder / "badsum.txt").write_text(TINY, encoding="utf-8")
    (folder / "nosum.txt").write_text(TINY, encoding="utf-8")
    (folder / "tinysplit").mkdir()
    for role, text in SPLIT_TEXT.items():
        (folder / "tinysplit" / f"{role}.txt").write_text(text, encoding="utf-8")


# --- downloads ---------------------------------------------------------------------------------


def test_fetch_installs_verified_file_and_path_prints_it(served: Path, fake_catalog: Path, isolated: Path) -> None:
    serve(served)
    r = run("corpus", "fetch", "tiny")
    assert r.exit_code == 0, r.stderr
    target = isolated / "tiny.txt"
    assert r.stdout == f"{target}\n"
    assert target.read_text(encoding="utf-8") == TINY
    assert "downloading" in r.stderr and "verified" in r.stderr
    assert files_under(isolated) == [target]  # no temporary file left over

    (served / "tiny.txt").unlink()  # from now on only the cache can answer
    r = run("corpus", "path", "tiny")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{target}\n" and "downloading" not in r.stderr
    assert load_corpus("tiny") == TINY


def test_progress_callbacks_report_bytes(served: Path, fake_catalog: Path) -> None:
    serve(served)
    seen: list[tuple[int, int]] = []
    ended: list[Path | None] = []

    class Record(catalog.FetchCallbacks):
        def on_progress(self, bytes_done: int, bytes_total: int) -> None:
            seen.append((bytes_done, bytes_total))

        def on_download_end(self, file: catalog.CorpusFile, path: Path | None) -> None:
            ended.append(path)

    paths = catalog.fetch("tiny", callbacks=Record())
    size = len(TINY.encode())
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert ended == [paths["all"]]


def test_checksum_mismatch_leaves_nothing(served: Path, fake_catalog: Path, isolated: Path) -> None:
    serve(served)
    r = run("corpus", "fetch", "badsum")
    assert_clean_error(r, 1, "sha256", sha(TINY), sha("something else"), "nothing was installed")
    assert files_under(isolated) == []


def test_interrupted_download_leaves_nothing(served: Path, fake_catalog: Path, isolated: Path) -> None:
    r = run("corpus", "fetch", "cutoff")
    assert_clean_error(r, 1, "cut off", "nothing was installed")
    assert files_under(isolated) == []


def test_404_is_a_clear_error(served: Path, fake_catalog: Path, isolated: Path) -> None:
    r = run("corpus", "fetch", "gone")
    assert_clean_error(r, 1, "404", "gone.txt")
    assert files_under(isolated) == []


def test_unverifiable_file_is_refused(served: Path, fake_catalog: Path, isolated: Path) -> None:
    serve(served)
    r = run("corpus", "fetch", "nosum")
    assert_clean_error(r, 1, "no sha256", "cannot be verified")
    assert files_under(isolated) == []


def test_no_mirror_no_network_names_url_variable_and_cache(fake_catalog: Path, isolated: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{closed_port()}/m"
    monkeypatch.setenv(catalog.URL_BASE_ENV, base)
    r = run("corpus", "path", "tiny")
    assert_clean_error(r, 1, f"{base}/tiny.txt", "CHARRNN_CORPORA", str(isolated / "tiny.txt"))
    assert files_under(isolated) == []
    r = run("train", "tiny", "-o", str(fake_catalog.parent / "m.pt"), "--max-steps", "1", "-q")
    assert_clean_error(r, 1, "CHARRNN_CORPORA")
    assert not (fake_catalog.parent / "m.pt").exists()


def test_zip_corpora_are_not_supported_yet(isolated: Path, tmp_path: Path) -> None:
    for name in ("enwik8", "text8"):
        r = run("corpus", "fetch", name)
        assert_clean_error(r, 2, "not supported yet", f"http://mattmahoney.net/dc/{name}.zip", "no sha256")
        assert_clean_error(run("train", name, "-o", str(tmp_path / "m.pt")), 2, "not supported yet")
    assert files_under(isolated) == [] and not (tmp_path / "m.pt").exists()


def test_download_url_base_replaces_the_catalog_url(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = catalog.get_entry("ptb-char")
    train = entry.file("train")
    assert train is not None
    monkeypatch.delenv(catalog.URL_BASE_ENV)
    assert catalog.download_url(train) == train.url
    monkeypatch.setenv(catalog.URL_BASE_ENV, "http://mirror.example/corpora/")
    assert catalog.download_url(train) == "http://mirror.example/corpora/ptb-char/ptb.char.train.txt"


def test_cache_folder_rules(tmp_path: Path) -> None:
    assert catalog.cache_dir({"CHARRNN_HOME": "/h"}) == Path("/h/corpora")
    assert catalog.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/charrnn/corpora")
    assert catalog.cache_dir({"CHARRNN_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h/corpora")
    assert catalog.cache_dir({}) == Path.home() / ".cache" / "charrnn" / "corpora"


# --- mirrors (CHARRNN_CORPORA) ------------------------------------------------------------------


def test_mirror_copy_is_used_in_place(tmp_path: Path, fake_catalog: Path, isolated: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    empty, mirror = tmp_path / "empty", tmp_path / "mirror"
    empty.mkdir()
    mirror.mkdir()
    (mirror / "tiny.txt").write_text(TINY, encoding="utf-8")
    monkeypatch.setenv(catalog.MIRRORS_ENV, f"{empty}{os.pathsep}{mirror}")
    r = run("corpus", "path", "tiny")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{mirror / 'tiny.txt'}\n"
    assert files_under(isolated) == []


def test_mirror_checksum_mismatch_names_file_and_hashes(tmp_path: Path, fake_catalog: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bad = TINY.replace("fire", "FIRE")  # same size, other bytes
    (tmp_path / "tiny.txt").write_text(bad, encoding="utf-8")
    monkeypatch.setenv(catalog.MIRRORS_ENV, str(tmp_path))
    r = run("corpus", "path", "tiny")
    assert_clean_error(r, 1, str(tmp_path / "tiny.txt"), sha(bad), sha(TINY))
    with pytest.raises(DataError, match="sha256"):
        load_corpus("tiny")


def needs_shared() -> None:
    if not (SHARED / "SHA256SUMS").exists():
        pytest.skip(f"{SHARED} is absent")


def test_shared_mirror_resolves_tinyshakespeare_offline(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    needs_shared()
    monkeypatch.setenv(catalog.MIRRORS_ENV, str(SHARED))
    r = run("corpus", "path", "tinyshakespeare")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{SHARED / 'tinyshakespeare.txt'}\n"
    for command in ("path", "fetch"):
        r = run("corpus", command, "tinyshakespeare", "--json")
        assert r.exit_code == 0, r.stderr
        files = {"all": str(SHARED / "tinyshakespeare.txt")}
        assert json.loads(r.stdout) == {"name": "tinyshakespeare", "files": files}
    text = load_corpus("tinyshakespeare")
    assert len(text) == 1_115_394 and len(set(text)) == 65
    assert files_under(isolated) == []


def test_catalog_agrees_with_shared_sha256sums() -> None:
    needs_shared()
    sums = dict(reversed(line.split()) for line in (SHARED / "SHA256SUMS").read_text().splitlines() if line)
    files = {f.path: f for e in catalog.load_catalog().values() for f in e.files}
    # The shared folder also holds corpora the catalog cannot download (tangshi.txt is assembled from an npm
    # package's JSON files, MANIFEST.md): only the files the catalog names are held to its sums.
    named = [path for path in sums if path in files]
    assert named, "the catalog names none of the shared corpora"
    for path in named:
        digest = sums[path]
        assert files[path].sha256 == digest
        assert files[path].bytes == (SHARED / path).stat().st_size


# --- official splits ---------------------------------------------------------------------------


def test_splits_of_plain_sources(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text(TINY, encoding="utf-8")
    train, valid = training_parts([str(p)])
    assert join_parts(train) == TINY and valid is None
    with pytest.raises(UsageError, match="no official test split"):
        load_part(str(p), "test")
    with pytest.raises(UsageError, match="no official"):
        load_part("pydoc", "valid")


def test_train_on_official_splits_and_eval_split(served: Path, fake_catalog: Path, tmp_path: Path) -> None:
    serve(served)
    train, valid = training_parts(["tinysplit"])
    assert valid is not None
    assert (join_parts(train), join_parts(valid)) == (SPLIT_TEXT["train"], SPLIT_TEXT["valid"])
    assert load_part("tinysplit", "test") == SPLIT_TEXT["test"]
    assert load_corpus("tinysplit") == "".join(SPLIT_TEXT.values())
    out = tmp_path / "m.pt"
    r = run("train", "tinysplit", "-o", str(out), "--hidden", "16", "--layers", "1", "-b", "4", "-t", "16",
            "--max-steps", "2", "--json")
    assert r.exit_code == 0, r.stderr
    counts = re.search(r"([\d,]+) training / ([\d,]+) validation characters", r.stderr)
    assert counts is not None, r.stderr
    assert [int(c.replace(",", "")) for c in counts.groups()] == [len(SPLIT_TEXT["train"]), len(SPLIT_TEXT["valid"])]

    for split in ("test", "valid", "train"):
        r = run("eval", "perplexity", "-m", str(out), "tinysplit", "--split", split, "--json")
        assert r.exit_code == 0, r.stderr
        result = json.loads(r.stdout)
        text = SPLIT_TEXT[split]
        unknown = sum(1 for c in text[1:] if c not in SPLIT_TEXT["train"])
        assert result["unknown"] == unknown and result["chars"] == len(text) - 1 - unknown

    assert_clean_error(run("eval", "perplexity", "-m", str(out), "tinysplit"), 2, "--split")
    assert_clean_error(run("eval", "perplexity", "-m", str(out), "tiny", "--split", "test"), 2, "no official test")
    plain = tmp_path / "plain.txt"
    plain.write_text(TINY, encoding="utf-8")
    # a file's --split is the model's own split (tests/test_splits.py): this one held nothing out of its train part
    assert_clean_error(run("eval", "perplexity", "-m", str(out), str(plain), "--split", "valid"), 2,
                       "held nothing out")
    assert_clean_error(run("train", "tinysplit", "-o", str(tmp_path / "n.pt"), "--val-fraction", "0.2"), 2,
                       "--val-fraction")
    assert not (tmp_path / "n.pt").exists()


def test_ptb_char_from_shared_trains_and_scores_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_shared()
    monkeypatch.setenv(catalog.MIRRORS_ENV, str(SHARED))
    out = tmp_path / "m.pt"
    r = run("train", "ptb-char", "-o", str(out), "--hidden", "16", "--layers", "1", "-b", "4", "-t", "16",
            "--max-steps", "3", "-q")
    assert r.exit_code == 0, r.stderr
    assert out.exists()
    r = run("eval", "perplexity", "-m", str(out), "ptb-char", "--split", "test", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    test_text = (SHARED / "ptb-char" / "ptb.char.test.txt").read_text(encoding="utf-8")
    # The file spells "no it was n't" as "n o _ i t _ w a s _ n ' t": scored are the characters of the
    # text it spells (442,423, the count the PTB-char literature's bits per character divide by), not
    # the file's 884,846 bytes, half of them separators a model would learn for free.
    spelled = test_text.replace(" ", "").replace("_", " ")
    assert spelled.startswith("no it was n't black monday\nbut while")
    assert len(spelled) == 442_423
    assert result["chars"] == len(spelled) - 1 - result["unknown"]
    assert result["unknown"] == 0  # the test symbols are a subset of the train symbols


def test_spaced_format_reads_the_text_it_spells_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog corpus in the spaced format reads as the text it spells, whatever the read size, and
    its cache entry is not the one of the same bytes read plainly."""
    from charrnn.data import cache as cache_module
    from charrnn.data import corpora

    spelled = "the cat sat\non the mat\n" * 500
    spaced = "".join(" " + ("_" if c == " " else c) if c != "\n" else " \n" for c in spelled).lstrip()
    f = tmp_path / "spaced.txt"
    f.write_text(spaced, encoding="utf-8")
    read = corpora.file_chunks
    monkeypatch.setattr(corpora, "file_chunks", lambda path, size=7: read(path, 7))  # boundaries everywhere
    part = corpora.Part("spaced", path=f, spaced=True)
    assert "".join(part.texts()) == spelled
    plain = corpora.Part("spaced", path=f)
    assert "".join(plain.texts()) == spaced
    assert cache_module.corpus_key([part], "utf-8") != cache_module.corpus_key([plain], "utf-8")


def test_catalog_refuses_an_unknown_format(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"corpora": [{"name": "x", "format": "morse", "files": [
        {"role": "all", "path": "x.txt", "url": "https://example.org/x.txt", "bytes": 1, "sha256": "0" * 64}]}]}))
    with pytest.raises(DataError, match="unknown format 'morse'"):
        catalog.load_catalog({catalog.CATALOG_ENV: str(bad)})


# --- the corpus commands -----------------------------------------------------------------------


def test_corpus_list_table_and_json() -> None:
    names = ["pydoc", "stdlib", "timemachine", "tinyshakespeare", "ptb-char", "enwik8", "text8"]
    r = run("corpus", "list")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "size", "description"]
    assert [line.split()[0] for line in lines[1:]] == names
    assert "1.1 MB" in r.stdout and "built in" in r.stdout and r.stderr == ""

    r = run("corpus", "list", "--json")
    assert r.exit_code == 0, r.stderr
    entries = json.loads(r.stdout)
    assert [e["name"] for e in entries] == names
    by_name = {e["name"]: e for e in entries}
    ptb = by_name["ptb-char"]
    assert [f["role"] for f in ptb["files"]] == ["train", "valid", "test"]
    assert {"description", "licence", "split", "files"} <= set(ptb)
    assert ptb["files"][0]["bytes"] == 10_034_964
    enwik8, text8 = by_name["enwik8"]["files"][0], by_name["text8"]["files"][0]
    assert enwik8["sha256"] is None and enwik8["bytes"] == 36_445_475
    assert text8["bytes"] == 31_344_016
    assert by_name["stdlib"]["builtin"] is True and by_name["stdlib"]["files"] == []


def test_corpus_info() -> None:
    r = run("corpus", "info", "ptb-char")
    assert r.exit_code == 0, r.stderr
    for f in catalog.get_entry("ptb-char").files:
        assert f.sha256 is not None and f.sha256 in r.stdout and f.url in r.stdout
    assert "research" in r.stdout
    r = run("corpus", "info", "tinyshakespeare", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["name"] == "tinyshakespeare" and info["files"][0]["sha256"].startswith("86c4e6aa")


def test_corpus_bad_names(tmp_path: Path) -> None:
    for sub in ("info", "fetch", "path"):
        assert_clean_error(run("corpus", sub, "shakespear"), 2, "unknown corpus 'shakespear'", "tinyshakespeare",
                           "ptb-char")
    assert_clean_error(run("corpus", "path", "pydoc"), 2, "built in")
    assert_clean_error(run("train", "shakespear", "-o", str(tmp_path / "m.pt")), 2, "not a corpus name",
                       "tinyshakespeare")


def test_bad_catalog_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "catalog.json"
    monkeypatch.setenv(catalog.CATALOG_ENV, str(bad))
    assert_clean_error(run("corpus", "list"), 1, "cannot read the corpus catalog", str(bad))
    bad.write_text("{not json", encoding="utf-8")
    assert_clean_error(run("corpus", "list"), 1, "not valid JSON")
    escape = {"name": "x", "files": [{"role": "all", "path": "../../etc/x", "url": "http://h/x", "bytes": 1,
                                      "sha256": None}]}
    bad.write_text(json.dumps({"corpora": [escape]}), encoding="utf-8")
    assert_clean_error(run("corpus", "list"), 1, "must be relative")


def test_readme_renders_the_catalog() -> None:
    readme = (ROOT / "corpora" / "README.md").read_text(encoding="utf-8")
    for entry in catalog.load_catalog().values():
        assert f"`{entry.name}`" in readme, entry.name
        for f in entry.files:
            if f.sha256 is not None:
                assert f.sha256 in readme, (entry.name, f.path)
            assert f"{f.bytes:,}" in readme, (entry.name, f.path)


def test_corpus_list_does_not_import_torch() -> None:
    code = ("import sys; from charrnn.cli import cli; cli(['corpus', 'list'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tinyshakespeare" in result.stdout
