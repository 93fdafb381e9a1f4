"""Simple properties of a text, one number per character, computed from the text alone: what a
hidden unit might track (Karpathy, Johnson and Fei-Fei 2015).

The value at position t describes the text as it stands after character t has been read, which is
what the model's state after character t can know:

- quote: 1 inside a quoted string, ' or ", from the opening quote up to (not including) the
  closing one. A triple quote (''' or \"\"\") opens a string that only the same triple quote
  closes; a single-quoted string also ends at the end of its line (so an apostrophe in prose
  costs at most one line); a backslash escapes the next character; quotes inside a comment do not
  count.
- bracket: the depth of (), [] and {} outside strings and comments; a closer with nothing open is
  ignored (the depth is never negative).
- line_position: characters since the last newline (the newline itself is 0, the character after
  it 1; the text begins as if after a newline).
- indent: the indentation of the current line (its leading spaces and tabs, one column each), the
  same for every character of the line; a newline belongs to the line it ends.
- comment: 1 from a `#` outside a string to the end of its line (the newline is 0).
- in_word: 1 on a word character: a letter, a digit (str.isalnum) or "_".
- word_position: position in the current word, 1 for its first character; 0 outside words.
- upper: 1 on an upper-case letter (str.isupper).
- digit: 1 on a digit (str.isdigit).
"""

from __future__ import annotations

import re

import numpy as np

from charrnn.errors import UsageError

PROPERTIES = ("quote", "bracket", "line_position", "indent", "comment", "in_word", "word_position", "upper",
              "digit")
OPENERS, CLOSERS = "([{", ")]}"


def check_property(name: str, own: tuple[str, ...] = ()) -> str:
    """`name` if it is a property (built in, or one of the user's `own`), else a UsageError."""
    if name not in PROPERTIES and name not in own:
        raise UsageError(f"unknown property {name!r}: choose one of {', '.join((*PROPERTIES, *own))}")
    return name


def regex_property(spec: str) -> tuple[str, re.Pattern]:
    """`NAME=REGEX` (--property-regex) -> (NAME, the compiled REGEX); a UsageError for a bad one."""
    name, sep, pattern = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not pattern:
        raise UsageError(f"bad --property-regex {spec!r}: write it NAME=REGEX, e.g. vowel=[aeiou]")
    if name in PROPERTIES:
        raise UsageError(f"--property-regex {name}: {name!r} is a built-in property; choose another name")
    try:
        return name, re.compile(pattern)
    except re.error as e:
        raise UsageError(f"bad --property-regex {spec!r}: {e}") from None


def regex_values(text: str, pattern: re.Pattern) -> np.ndarray:
    """(len(text),) float64: 1 on every character inside a match of `pattern`, else 0 (matches found left
    to right without overlap, as re.finditer finds them; an empty match marks nothing)."""
    values = np.zeros(len(text))
    for m in pattern.finditer(text):
        values[m.start() : m.end()] = 1
    return values


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def properties(text: str) -> dict[str, np.ndarray]:
    """Every property of `text`: name -> (len(text),) float64, in PROPERTIES order."""
    quote, bracket, comment = _syntax(text)
    n = len(text)
    line_position, indent = np.zeros(n), np.zeros(n)
    in_word, word_position = np.zeros(n), np.zeros(n)
    upper, digit = np.zeros(n), np.zeros(n)
    column, run, line_start = 1, 0, 0
    for i, c in enumerate(text):
        line_position[i] = 0 if c == "\n" else column
        column = 1 if c == "\n" else column + 1
        run = run + 1 if is_word_char(c) else 0
        in_word[i], word_position[i] = run > 0, run
        upper[i], digit[i] = c.isupper(), c.isdigit()
        if c == "\n" or i == n - 1:
            line = text[line_start : i + 1]
            indent[line_start : i + 1] = len(line) - len(line.lstrip(" \t"))
            line_start = i + 1
    values = {"quote": quote, "bracket": bracket, "line_position": line_position, "indent": indent,
              "comment": comment, "in_word": in_word, "word_position": word_position, "upper": upper, "digit": digit}
    return {name: values[name] for name in PROPERTIES}


def _syntax(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quote, bracket and comment: one left-to-right scan, since each hides the others."""
    n = len(text)
    quote, bracket, comment = np.zeros(n), np.zeros(n), np.zeros(n)
    closing = ""  # what ends the string we are in: ' " ''' or \"\"\"; "" outside strings
    in_comment, escaped, depth = False, False, 0
    i = 0
    while i < n:
        c = text[i]
        width = 1  # characters consumed in this iteration (a triple quote takes 3)
        if in_comment:
            in_comment = c != "\n"
        elif closing:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif text.startswith(closing, i):
                closing, width = "", len(closing)
            elif c == "\n" and len(closing) == 1:
                closing = ""
        elif c == "#":
            in_comment = True
        elif c in "'\"":
            closing = c * 3 if text.startswith(c * 3, i) else c
            width = len(closing)
        elif c in OPENERS:
            depth += 1
        elif c in CLOSERS:
            depth = max(depth - 1, 0)
        end = min(i + width, n)
        quote[i:end] = bool(closing)
        comment[i:end] = in_comment
        bracket[i:end] = depth
        i = end
    return quote, bracket, comment
