"""The command-line shell around the core: one module per command group, assembled here.

The CLI package is the only part of charrnn that imports click; torch is imported inside the
commands, so `charrnn --help` is instant.
"""

from __future__ import annotations

import click

from charrnn import __version__
from charrnn.cli.bptt_cmd import inspect_bptt
from charrnn.cli.classify_cmd import eval_classify
from charrnn.cli.common import ARCH_DEFAULTS, CharrnnGroup
from charrnn.cli.complete_cmd import complete
from charrnn.cli.context_cmd import eval_context
from charrnn.cli.corpus_cmd import corpus_group
from charrnn.cli.eval_cmd import eval_group
from charrnn.cli.export_cmd import export_cmd
from charrnn.cli.generate_cmd import generate
from charrnn.cli.info_cmd import info_cmd
from charrnn.cli.inspect_cmd import inspect_group
from charrnn.cli.plot_cmd import plot_cmd
from charrnn.cli.serve_cmd import serve
from charrnn.cli.train_cmd import train

__all__ = ["ARCH_DEFAULTS", "cli", "main"]


@click.group(cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="charrnn")
def cli() -> None:
    """Character-level language models with recurrent networks.

    \b
    charrnn train corpus.txt -o model.pt        train (or: cat *.txt | charrnn train - -o model.pt)
    charrnn eval perplexity -m model.pt FILE    perplexity and bits per character of held-out text
    charrnn generate -m model.pt --prefix TEXT  sample text, streamed to stdout
    charrnn complete -m model.pt --prefix TEXT  the likeliest next characters (--words: next words)
    charrnn serve --stdio -m model.pt           keep a model loaded: JSON requests in, answers out
    charrnn info -m model.pt                    what a checkpoint holds
    charrnn plot model.pt [other.pt ...]        loss curves, in the terminal or -o curves.png
    charrnn eval score -m model.pt FILE         a score per line (record), streamed: sort -n, awk, --json
    charrnn eval show -m model.pt FILE          the text coloured by the model's surprise
    charrnn eval context -m model.pt FILE       how much context the model uses (loss by context length)
    charrnn eval classify -m model.pt FILE      a model trained with --labels as a classifier
    charrnn corpus list                         corpora known by name (fetched and verified on first use)
    charrnn inspect cells -m model.pt FILE      what the hidden units track (also: gates, bptt)
    charrnn export -m model.pt -o model.onnx    the model for onnxruntime (or .safetensors: weights, no pickle)

    stdout carries only data; progress and messages go to stderr. `-` means stdin.
    """


for command in (train, eval_group, generate, complete, serve, info_cmd, plot_cmd, corpus_group, inspect_group,
                export_cmd):
    cli.add_command(command)
eval_group.add_command(eval_context)
eval_group.add_command(eval_classify)
inspect_group.add_command(inspect_bptt)


def main() -> None:
    cli(prog_name="charrnn")
