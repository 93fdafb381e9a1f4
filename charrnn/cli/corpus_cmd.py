"""`charrnn corpus`: the catalog of corpora known by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from charrnn.cli.common import json_option, json_out


@click.group(name="corpus")
def corpus_group() -> None:
    """Corpora known by name: list them, show their facts, fetch verified copies.

    \b
    Local copies are looked for in the folders of CHARRNN_CORPORA, then in the cache
    ($CHARRNN_HOME/corpora, else $XDG_CACHE_HOME/charrnn/corpora, else ~/.cache/charrnn/corpora);
    otherwise they are downloaded (from $CHARRNN_CORPUS_URL_BASE/<path> when that is set)
    and checked against the catalog's size and SHA-256 before use.
    """


def _size(entry: Any) -> str:
    if entry.builtin:
        return "built in"
    n = entry.size
    human = f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
    return human + (" zip" if any(f.format == "zip" for f in entry.files) else "")


@corpus_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog entries as one JSON list.")
def corpus_list(as_json: bool) -> None:
    """The corpora known by name: name, size, description."""
    from charrnn.data.catalog import load_catalog

    entries = list(load_catalog().values())
    if as_json:
        json_out([e.to_dict() for e in entries])
        return
    width = max([len("name"), *(len(e.name) for e in entries)])
    click.echo(f"{'name':<{width}}  {'size':>11}  description")
    for e in entries:
        click.echo(f"{e.name:<{width}}  {_size(e):>11}  {e.description}")


@corpus_group.command(name="info")
@click.argument("name")
@json_option
def corpus_info(name: str, as_json: bool) -> None:
    """Facts of corpus NAME: description, files (URL, bytes, SHA-256), licence, split."""
    from charrnn.data.catalog import get_entry

    entry = get_entry(name)
    if as_json:
        json_out(entry.to_dict())
        return
    click.echo(f"{entry.name}: {entry.description}")
    click.echo(f"size: {_size(entry)}" + ("" if entry.builtin else f" ({entry.size:,} bytes)"))
    click.echo(f"licence: {entry.licence}")
    click.echo(f"split: {entry.split}")
    if entry.source:
        click.echo(f"source: {entry.source}")
    for f in entry.files:
        click.echo(f"file {f.role}: {f.path}, {f.bytes:,} bytes, sha256 {f.sha256 or 'unknown (cannot be verified)'}"
                   + (f", {f.format} archive of {f.member}" if f.format != "text" else ""))
        click.echo(f"  url: {f.url}")


def _fetch_paths(name: str) -> dict[str, Path]:
    from charrnn.data.catalog import fetch
    from charrnn.display import console as con

    return fetch(name, callbacks=con.DownloadConsole(con.make_console()))


def _print_paths(name: str, as_json: bool) -> None:
    paths = _fetch_paths(name)
    if as_json:
        json_out({"name": name, "files": {role: str(path) for role, path in paths.items()}})
        return
    for path in paths.values():
        click.echo(str(path))


@corpus_group.command(name="fetch")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object instead: {"name": ..., "files": {"train": path, ...}}.')
def corpus_fetch(name: str, as_json: bool) -> None:
    """Download corpus NAME into the cache (unless a verified copy exists) and print its path(s).

    Every file is checked against the catalog's size and SHA-256; a failed or corrupt download
    leaves nothing behind. Progress goes to stderr, the path(s) to stdout, one per line.
    """
    _print_paths(name, as_json)


@corpus_group.command(name="path")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object instead: {"name": ..., "files": {"train": path, ...}}.')
def corpus_path(name: str, as_json: bool) -> None:
    """Print the local path(s) of corpus NAME, one per line (train, valid, test order), fetching
    it first if needed: `wc -c $(charrnn corpus path tinyshakespeare)`."""
    _print_paths(name, as_json)
