"""Text from a root, made safe to print: control characters are shown escaped, never sent raw.

Names in a root come from users (hyperparameter keys, metric names, state-change kinds, data
change kinds) or from whoever wrote the files, and any of them may hold control characters. Sent
raw to a terminal, an ESC starts an escape sequence that can recolour, move the cursor or rewrite
what was printed before; a CR or a newline splits one event into several lines, so a script that
reads one line per event breaks. Every text (non-JSON) output of the command line therefore
passes data from a root through :func:`printable`: C0 and C1 control characters, DEL, line and
paragraph separators and the bidirectional overrides ("Trojan source") are written as Python
escapes (``\\x1b``, ``\\n``, ``\\u202e``); everything else, Unicode included, is kept.
``--json`` output needs none of this: JSON escapes control characters itself.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: DEL, C1 controls (0x9b starts a sequence on some terminals), separators, bidirectional overrides.
_OTHERS = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHERS}]")
_UNSAFE_KEEPING_NEWLINES = re.compile(f"[\x00-\x09\x0b-\x1f{_OTHERS}]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every unsafe character escaped; ``keep_newlines`` for multi-line text."""
    pattern = _UNSAFE_KEEPING_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, str(text))
