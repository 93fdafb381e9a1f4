"""`charrnn info`: what a checkpoint holds."""

from __future__ import annotations

import click

from charrnn.cli.common import json_option, json_out, model_option, num


@click.command(name="info")
@model_option
@json_option
def info_cmd(model_path: str, as_json: bool) -> None:
    """What a checkpoint holds: architecture, vocabulary, training progress and history in brief."""
    from charrnn.data.records import escape
    from charrnn.model.checkpoint import load, record_delimiter
    from charrnn.model.history import History

    ckpt = load(model_path)
    vocab = ckpt["vocab"]
    summary = {
        "format_version": ckpt["version"], "charrnn_version": ckpt.get("charrnn_version"),
        "model": ckpt["model_config"], "parameters": sum(t.numel() for t in ckpt["weights"].values()),
        "vocab_size": len(vocab["chars"]) + int(vocab["unk"]), "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"), "val_loss": ckpt.get("val_loss"), "best_val_loss": ckpt.get("best_val_loss"),
        "train": ckpt.get("train_config"), "training_chars": (ckpt.get("data") or {}).get("chars"),
        "init_from": ckpt.get("init_from"),
        # "raw", or "ema"/"tail": the weights are the average kept during training (--average).
        "weights_from": ckpt.get("weights_from", "raw"),
        # "safetensors" for a model read from an exported file (charrnn.model.safetensors_read), else None.
        "exported_as": ckpt.get("exported_as"),
        "history": History.from_checkpoint(ckpt.get("history")).summary() if "history" in ckpt else None,
        "record_hashes": None if ckpt.get("record_hashes") is None else len(ckpt["record_hashes"]),
        # False when the training records outnumbered the cap (records.MAX_RECORD_HASHES): --novel
        # then knows only some of them. None for a model not trained on records.
        "record_hashes_complete": ckpt.get("record_hashes_complete", True) if ckpt.get("record_hashes") is not None
        else None,
        # A label-conditioned model (--labels): each label with its training records; else None.
        "labels": None if ckpt.get("labels") is None else dict(zip(ckpt["labels"]["names"], ckpt["labels"]["counts"],
                                                                   strict=True)),
    }
    if as_json:
        json_out(summary)
        return
    m = summary["model"]
    head = (f", adaptive softmax (shortlist {m['cutoffs'][0]:,}, {len(m['cutoffs'])} tail clusters)"
            if m.get("output") == "adaptive" else "")  # older checkpoints lack the field: a full softmax
    click.echo(f"{m['cell']} {m['layers']}x{m['hidden']}, {m['input']} input, {summary['parameters']:,} parameters, "
               f"vocabulary {summary['vocab_size']}{head}")
    precision = (summary["train"] or {}).get("precision", "fp32") if isinstance(summary["train"], dict) else "fp32"
    click.echo(f"step {summary['step']}, validation loss {num(summary['val_loss'])} nats/char "
               f"(best {num(summary['best_val_loss'])}), trained on {summary['training_chars']} characters "
               f"in {precision}")
    if summary["init_from"]:
        click.echo(f"fine-tuned from {summary['init_from']}")
    if summary["weights_from"] != "raw":
        click.echo(f"weights: the {summary['weights_from']} average of the training weights (--average), which "
                   "validated better than the raw ones")
    delimiter = record_delimiter(ckpt)
    if delimiter is not None:
        kept = summary["record_hashes"]
        click.echo(f"records model: delimiter '{escape(delimiter)}', hashes of {kept or 0:,} training records kept"
                   + ("" if summary["record_hashes_complete"] is not False else " (not all: the cap was reached)"))
    if summary["labels"] is not None:
        labels = summary["labels"]
        shown = ", ".join(f"{name} ({count:,})" for name, count in list(labels.items())[:50])
        more = f" and {len(labels) - 50} more (--json lists them all)" if len(labels) > 50 else ""
        click.echo(f"labels: {len(labels)}, added to the input at every step" if m.get("label_mode") == "add" else
                   f"labels: {len(labels)}, each an initial state")
        click.echo(f"  {shown}{more} (training records)")
    h = summary["history"]
    if summary["exported_as"]:
        click.echo(f"history: not kept in an exported model ({summary['exported_as']}); its checkpoint has it")
        return
    if h is None or not (h["train_records"] or h["val_records"]):
        click.echo("history: none recorded")
        return
    best = (f"best validation {num(h['best_val_loss'])} at step {h['best_val_step']}, "
            f"last {num(h['last_val_loss'])} at step {h['last_val_step']}") if h["val_records"] else "no validation"
    click.echo(f"history: {h['steps']} steps in {h['seconds']:.1f} s ({h['chars']:,} characters), {best}; "
               f"last training loss {num(h['last_train_loss'])} ({h['train_records']} reports, "
               f"{h['val_records']} validations: charrnn plot {model_path})")
    if h["last_grad_norm"] is not None or h["clipped"] is not None:
        clip = (summary["train"] or {}).get("clip") if isinstance(summary["train"], dict) else None
        share = "n/a" if h["clipped"] is None else f"{h['clipped']:.1%}"
        click.echo(f"gradient norm before clipping: last {num(h['last_grad_norm'], '.4g')}, largest "
                   f"{num(h['max_grad_norm'], '.4g')}; {share} of steps clipped"
                   + (f" (--clip {clip:g})" if isinstance(clip, (int, float)) and clip > 0 else " (no clipping)")
                   + f": charrnn plot {model_path} --y grad-norm")
