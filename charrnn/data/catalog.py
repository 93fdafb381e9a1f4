"""The corpus catalog (charrnn/data/catalog.json) and verified local copies of its files.

A catalog file is found, in this order:

1. in each folder of CHARRNN_CORPORA (os.pathsep-separated), laid out like the catalog's
   `path` (for example `ptb-char/ptb.char.train.txt`); a copy there is used in place, after
   checking its size and SHA-256;
2. in the cache folder: $CHARRNN_HOME/corpora, else $XDG_CACHE_HOME/charrnn/corpora, else
   ~/.cache/charrnn/corpora (checked the same way);
3. downloaded from the catalog URL into the cache (or from $CHARRNN_CORPUS_URL_BASE/<path>
   when that mirror base is set): streamed into a temporary file beside the target while its
   SHA-256 is computed, checked for size and hash, then renamed into place. Any failure
   removes the temporary file, so the cache never holds a partial or unverified file.

CHARRNN_CATALOG names another catalog.json (private corpora, tests). Settings are read from
the environment at call time (or from an explicit mapping), never cached in module state.
Nothing here prints: progress goes through FetchCallbacks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from charrnn.errors import DataError, UsageError
from charrnn.outputs import temp_beside

CATALOG_ENV = "CHARRNN_CATALOG"
MIRRORS_ENV = "CHARRNN_CORPORA"
TEXT_FORMATS = ("plain", "spaced")
HOME_ENV = "CHARRNN_HOME"
URL_BASE_ENV = "CHARRNN_CORPUS_URL_BASE"
ROLES = ("all", "train", "valid", "test")
SPLIT_ROLES = ("train", "valid", "test")
CHUNK = 1 << 16
TIMEOUT = 60.0  # seconds without data before a download is given up
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CorpusFile:
    role: str  # "all" for a single-file corpus, else "train" / "valid" / "test"
    path: str  # relative path inside a mirror folder and inside the cache
    url: str
    bytes: int
    sha256: str | None  # None: not known, so the file cannot be verified and is never installed
    format: str = "text"  # "zip": an archive holding `member` (not unpacked yet)
    member: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    files: tuple[CorpusFile, ...]
    licence: str
    split: str
    source: str = ""
    builtin: bool = False
    # How the files spell the text. "plain": as it is. "spaced": one space after every character and
    # "_" for a space (Mikolov's PTB-char); charrnn reads such a file as the text it spells.
    format: str = "plain"

    @property
    def has_splits(self) -> bool:
        """True when the corpus comes as official train/valid/test files."""
        return any(f.role == "train" for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.bytes for f in self.files)

    def file(self, role: str) -> CorpusFile | None:
        return next((f for f in self.files if f.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        return d


class FetchCallbacks:
    """Hooks for downloads; the defaults do nothing, so the core stays silent."""

    def on_download_start(self, file: CorpusFile, url: str) -> None: ...

    def on_progress(self, bytes_done: int, bytes_total: int) -> None: ...

    def on_download_end(self, file: CorpusFile, path: Path | None) -> None:
        """`path` is the installed file, or None when the download failed (nothing was kept)."""


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


# --- the catalog -------------------------------------------------------------------------------


def _parse_file(d: Any, where: str) -> CorpusFile:
    if not isinstance(d, dict):
        raise DataError(f"{where}: a file must be a JSON object")
    for key, kind in (("role", str), ("path", str), ("url", str), ("bytes", int)):
        if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
            raise DataError(f"{where}: {key!r} is missing or not a {kind.__name__}")
    if d["role"] not in ROLES:
        raise DataError(f"{where}: role {d['role']!r} is not one of {', '.join(ROLES)}")
    sha = d.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise DataError(f"{where}: sha256 must be 64 lowercase hex digits or null")
    rel = PurePosixPath(d["path"])
    # The path is joined onto the cache folder: it must not escape it.
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in d["path"]:
        raise DataError(f"{where}: path {d['path']!r} must be relative, without '..'")
    fmt = d.get("format", "text")
    if fmt not in ("text", "zip"):
        raise DataError(f"{where}: format {fmt!r} is not 'text' or 'zip'")
    return CorpusFile(role=d["role"], path=str(rel), url=d["url"], bytes=d["bytes"], sha256=sha, format=fmt,
                      member=d.get("member"))


def _parse_entry(d: Any, where: str) -> CatalogEntry:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
        raise DataError(f"{where}: every corpus needs a 'name'")
    where = f"{where}: corpus {d['name']!r}"
    files = d.get("files", [])
    if not isinstance(files, list):
        raise DataError(f"{where}: 'files' must be a list")
    parsed = tuple(_parse_file(f, where) for f in files)
    roles = [f.role for f in parsed]
    builtin = bool(d.get("builtin", False))
    if len(set(roles)) != len(roles):
        raise DataError(f"{where}: a role appears twice")
    if not builtin and roles != ["all"] and "train" not in roles:
        raise DataError(f"{where}: needs one file with role 'all', or a 'train' file with optional 'valid'/'test'")
    if "all" in roles and len(roles) > 1:
        raise DataError(f"{where}: role 'all' cannot be combined with others")
    text_format = d.get("format", "plain")
    if text_format not in TEXT_FORMATS:
        raise DataError(f"{where}: unknown format {text_format!r} (known: {', '.join(TEXT_FORMATS)})")
    return CatalogEntry(name=d["name"], description=str(d.get("description", "")), files=parsed,
                        licence=str(d.get("licence", "")), split=str(d.get("split", "")),
                        source=str(d.get("source", "")), builtin=builtin, format=text_format)


def load_catalog(env: Mapping[str, str] | None = None) -> dict[str, CatalogEntry]:
    """The catalog, by name, in file order: the shipped one, or the file named by CHARRNN_CATALOG."""
    override = _env(env).get(CATALOG_ENV)
    where = override or "the built-in catalog"
    try:
        if override:
            raw = Path(override).read_text(encoding="utf-8")
        else:
            raw = resources.files("charrnn.data").joinpath("catalog.json").read_text(encoding="utf-8")
        data = json.loads(raw)
    except OSError as e:
        raise DataError(f"cannot read the corpus catalog {where} ({CATALOG_ENV}): {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"the corpus catalog {where} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("corpora"), list):
        raise DataError(f"the corpus catalog {where} has no 'corpora' list")
    entries: dict[str, CatalogEntry] = {}
    for d in data["corpora"]:
        entry = _parse_entry(d, f"corpus catalog {where}")
        if entry.name in entries:
            raise DataError(f"corpus catalog {where}: {entry.name!r} appears twice")
        entries[entry.name] = entry
    return entries


def get_entry(name: str, env: Mapping[str, str] | None = None) -> CatalogEntry:
    """The catalog entry `name`; a UsageError listing the known names otherwise."""
    catalog = load_catalog(env)
    if name not in catalog:
        raise UsageError(f"unknown corpus {name!r}: known corpora are {', '.join(catalog)} (charrnn corpus list)")
    return catalog[name]


# --- where files live --------------------------------------------------------------------------


def mirror_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """The folders of CHARRNN_CORPORA, in search order."""
    return [Path(p).expanduser() for p in _env(env).get(MIRRORS_ENV, "").split(os.pathsep) if p]


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """$CHARRNN_HOME, else $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn."""
    e = _env(env)
    if e.get(HOME_ENV):
        return Path(e[HOME_ENV]).expanduser()
    if e.get("XDG_CACHE_HOME"):
        return Path(e["XDG_CACHE_HOME"]).expanduser() / "charrnn"
    return Path.home() / ".cache" / "charrnn"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where fetched corpora go: the `corpora` folder of `cache_root`."""
    return cache_root(env) / "corpora"


def download_url(file: CorpusFile, env: Mapping[str, str] | None = None) -> str:
    """The catalog URL, or $CHARRNN_CORPUS_URL_BASE/<path> when a mirror base is set."""
    base = _env(env).get(URL_BASE_ENV)
    return f"{base.rstrip('/')}/{file.path}" if base else file.url


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, file: CorpusFile) -> None:
    """DataError naming the file and both hashes unless `path` has the catalog's size and SHA-256."""
    try:
        size = path.stat().st_size
        actual = sha256_of(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if actual != file.sha256 or size != file.bytes:
        raise DataError(f"{path} has sha256 {actual} ({size:,} bytes), but the catalog expects {file.sha256} "
                        f"({file.bytes:,} bytes) for {file.path}: a damaged or different file; delete or replace it")


def _check_supported(entry: CatalogEntry, file: CorpusFile) -> None:
    if file.format != "text":
        raise UsageError(
            f"not supported yet: {entry.name} comes as a {file.format} archive ({file.url}) that charrnn does not "
            "unpack" + (", and the catalog records no sha256 for it, so a download could not be verified"
                        if file.sha256 is None else "")
            + f"; download and unpack it yourself and pass the path of {file.member or 'the text file'}")
    if file.sha256 is None:
        raise DataError(f"refusing to install {file.path} of {entry.name}: the catalog records no sha256 for it, "
                        "so the file cannot be verified")


def find_local(entry: CatalogEntry, file: CorpusFile, env: Mapping[str, str] | None = None) -> Path | None:
    """A verified local copy of `file` (mirror folders first, then the cache), or None."""
    _check_supported(entry, file)
    for folder in [*mirror_dirs(env), cache_dir(env)]:
        candidate = folder / file.path
        if candidate.is_file():
            verify(candidate, file)
            return candidate
    return None


def download(url: str, dest: Path, file: CorpusFile, callbacks: FetchCallbacks | None = None) -> Path:
    """Download `url` to `dest`, verified against `file`'s size and SHA-256; atomic, all or nothing."""
    cb = callbacks or FetchCallbacks()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = temp_beside(dest, ".part")
    except OSError as e:
        raise DataError(f"cannot write to the cache folder {dest.parent}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    installed = False
    done = 0
    cb.on_download_start(file, url)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                header = response.headers.get("Content-Length")
                announced = int(header) if header and header.isdigit() else None
                total = announced if announced is not None else file.bytes
                cb.on_progress(0, total)
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if done > file.bytes:  # not the file we expect: stop before filling the disk
                        raise DataError(f"download of {url} is larger than the {file.bytes:,} bytes the catalog "
                                        "expects; nothing was installed")
                    cb.on_progress(done, total)
            # http.client returns a short body without complaint when the connection drops early,
            # so the length is checked here.
            if done != file.bytes or (announced is not None and done != announced):
                expected = announced if announced is not None else file.bytes
                raise DataError(f"download of {url} was cut off after {done:,} of {expected:,} bytes; "
                                "nothing was installed (try again)")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != file.sha256:
            raise DataError(f"download of {url} has sha256 {digest.hexdigest()}, but the catalog expects "
                            f"{file.sha256}; nothing was installed")
        os.replace(tmp, dest)
        installed = True
    except http.client.IncompleteRead:  # how some Python versions report a short body
        raise DataError(f"download of {url} was cut off after about {done:,} bytes; nothing was installed "
                        "(try again)") from None
    except urllib.error.HTTPError as e:
        raise DataError(_offline_message(url, dest, file, f"HTTP {e.code} {e.reason}")) from None
    except urllib.error.URLError as e:
        raise DataError(_offline_message(url, dest, file, str(e.reason))) from None
    except (http.client.HTTPException, OSError) as e:  # reset, timeout, disk full, ...
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DataError(f"download of {url} failed: {reason}; nothing was installed") from None
    finally:
        if not installed:
            tmp.unlink(missing_ok=True)
        cb.on_download_end(file, dest if installed else None)
    return dest


def _offline_message(url: str, dest: Path, file: CorpusFile, reason: str) -> str:
    return (f"cannot download {url} ({reason}) and there is no local copy of {file.path}: set {MIRRORS_ENV} to a "
            f"folder that holds {file.path}, or put the file at {dest}")


def fetch_file(entry: CatalogEntry, file: CorpusFile, env: Mapping[str, str] | None = None,
               callbacks: FetchCallbacks | None = None) -> Path:
    """A verified local path of `file`, downloading it into the cache when there is no copy."""
    local = find_local(entry, file, env)
    if local is not None:
        return local
    return download(download_url(file, env), cache_dir(env) / file.path, file, callbacks)


def fetch(name: str, env: Mapping[str, str] | None = None,
          callbacks: FetchCallbacks | None = None) -> dict[str, Path]:
    """Verified local paths of corpus `name` by role ("all", or "train"/"valid"/"test"), fetched if needed."""
    entry = get_entry(name, env)
    if entry.builtin:
        raise UsageError(f"{name} is built in: it has no file to fetch (use it by name: charrnn train {name})")
    return {f.role: fetch_file(entry, f, env, callbacks) for f in entry.files}
