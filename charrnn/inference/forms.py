"""Constrained sampling: acrostics (藏头诗) and templates (fixed forms).

A Constraint says, for the text generated so far, what may come next: one forced character, any
character, any character but a line end, or nothing (the text is complete). The sampler
(charrnn.inference.constrained) turns that into a mask over the vocabulary and renormalises the model's
distribution over what the mask allows: a forced step has probability 1, a masked one the
model's probabilities of the allowed characters divided by their sum.

- An acrostic: the k-th line begins with the k-th character of `acrostic`. A line ends at any
  character of `line_ends` (default: newline and the Chinese clause marks, so that a poem stored
  on one line has its clauses as lines). Alone, generation ends when the acrostic's last line ends.
- A template: every character is forced except the placeholder, which may be any character but a
  line end; generation ends when the template is filled. With an acrostic too, the k-th
  character of the acrostic takes the first placeholder of the template's k-th line.

The constraint applies to the generated text; a prefix is context only. A constraint the
vocabulary cannot meet (a forced character it lacks) is an error before anything is sampled.
This module imports no torch: the CLI takes its defaults, the server parses requests with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from charrnn.errors import UsageError

if TYPE_CHECKING:
    from charrnn.data.vocab import Vocab

DEFAULT_LINE_ENDS_TYPED = "\\n，。！？；"  # as --line-ends takes it (backslash escapes)
DEFAULT_LINE_ENDS = DEFAULT_LINE_ENDS_TYPED.replace("\\n", "\n")
DEFAULT_PLACEHOLDER = "_"
# What may come next (besides a forced character, given as itself):
ANY = "any"  # any character (but <unk>)
NOT_LINE_END = "not-line-end"  # any character but a line end (a template's placeholder)
DONE = "done"  # the constraint is met: the sample ends here


@dataclass(frozen=True)
class Constraint:
    acrostic: str = ""
    template: str | None = None
    placeholder: str = DEFAULT_PLACEHOLDER
    line_ends: str = DEFAULT_LINE_ENDS
    plan: tuple[str | None, ...] | None = field(init=False, default=None, repr=False)  # per template position

    def __post_init__(self) -> None:
        if not self.acrostic and self.template is None:
            raise UsageError("a constraint needs --acrostic or --template")
        if not self.line_ends:
            raise UsageError("--line-ends must not be empty")
        if len(self.placeholder) != 1:
            raise UsageError(f"--placeholder must be one character, got {_q(self.placeholder)}")
        if self.placeholder in self.line_ends:
            raise UsageError(f"--placeholder {_q(self.placeholder)} is a line end: it could never be filled")
        ends = [c for c in self.acrostic if c in self.line_ends]
        if ends:
            raise UsageError(f"--acrostic contains a line end ({_q(ends[0])}): each of its characters "
                             "begins a line")
        if self.template is not None:
            object.__setattr__(self, "plan", self._compile(self.template))

    def _compile(self, template: str) -> tuple[str | None, ...]:
        """The template as one entry per position: the forced character, or None for a placeholder;
        the acrostic's characters put on the first placeholder of their lines."""
        if not template:
            raise UsageError("--template must not be empty")
        plan: list[str | None] = [None if c == self.placeholder else c for c in template]
        line, head_free = 0, True  # the line we are in; whether its first placeholder is still to come
        for p, c in enumerate(template):
            if c in self.line_ends:
                if head_free and line < len(self.acrostic):
                    raise UsageError(f"line {line + 1} of --template has no placeholder ({_q(self.placeholder)}) "
                                     f"for the acrostic's character {_q(self.acrostic[line])}")
                line, head_free = line + 1, True
            elif c == self.placeholder and head_free:
                head_free = False
                if line < len(self.acrostic):
                    plan[p] = self.acrostic[line]
        lines = line + (0 if template[-1] in self.line_ends else 1)
        if len(self.acrostic) > lines:
            raise UsageError(f"--acrostic has {len(self.acrostic)} characters but --template only {lines} line(s)")
        if head_free and line < len(self.acrostic):
            raise UsageError(f"line {line + 1} of --template has no placeholder ({_q(self.placeholder)}) "
                             f"for the acrostic's character {_q(self.acrostic[line])}")
        return tuple(plan)

    def forced_chars(self) -> str:
        """Every character the constraint may force, in order of first appearance."""
        chars = self.acrostic + "".join(c for c in (self.plan or ()) if c is not None)
        return "".join(dict.fromkeys(chars))

    def check(self, vocab: Vocab) -> None:
        """A UsageError, before sampling, if the vocabulary cannot meet the constraint."""
        known = set(vocab.chars)
        missing = [c for c in self.forced_chars() if c not in known]
        if missing:
            shown = ", ".join(_q(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UsageError(f"the model's vocabulary lacks {len(missing)} character(s) the constraint needs: "
                             f"{shown}{more}")
        if self.plan is not None and None in self.plan and not known - set(self.line_ends):
            raise UsageError("the model's vocabulary has only line ends: a placeholder cannot be filled")

    def next(self, text: str) -> str:
        """What may follow `text` (the generated text so far): a forced character, ANY, NOT_LINE_END or DONE."""
        if self.plan is not None:
            if len(text) >= len(self.plan):
                return DONE
            c = self.plan[len(text)]
            return NOT_LINE_END if c is None else c
        if text and text[-1] not in self.line_ends:
            return ANY
        line = sum(text.count(c) for c in self.line_ends)  # lines ended so far
        return self.acrostic[line] if line < len(self.acrostic) else DONE

    def max_length(self) -> int | None:
        """The length of every sample (a template's), or None (an acrostic ends when its lines do)."""
        return len(self.plan) if self.plan is not None else None

    def satisfied_by(self, text: str, complete: bool = True) -> bool:
        """Whether a sample meets the constraint at every character, and, if `complete`, is finished
        (what the tests hold the sampler to; a sample cut by --length is not complete)."""
        for p in range(len(text)):
            allowed = self.next(text[:p])
            if allowed == DONE or (allowed == NOT_LINE_END and text[p] in self.line_ends) or \
                    (allowed not in (ANY, NOT_LINE_END) and text[p] != allowed):
                return False
        return not complete or self.next(text) == DONE


def _q(text: str) -> str:
    """`text` quoted for a message, on one line."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"
