"""Help text as the terminal and the man pages show it: docstrings reflowed, brackets kept.

Docstrings are written with hard line breaks; Typer keeps single line breaks in every
paragraph but the first, so the help would show ragged lines. `reflow` joins the lines of
each paragraph (list items, lines starting with "- " or "* ", stay on lines of their own).
Typer reads help text as rich markup, which would eat a bracketed term such as
"[eps_rgb, eps_depth]"; `for_rich` escapes it, and `plain` gives back the text itself.
"""

from __future__ import annotations

import inspect
import re

LIST_ITEM = re.compile(r"^\s*[-*] ")


def reflow(text: str | None) -> str:
    """Paragraphs (blank-line separated) on one line each; list items one per line."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        if para.startswith("\b"):  # click's mark for a paragraph kept as written
            paragraphs.append(para)
            continue
        lines: list[str] = []
        for line in para.splitlines():
            if lines and not LIST_ITEM.match(line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(p for p in paragraphs if p)


def for_rich(text: str | None) -> str | None:
    """Reflowed and escaped for Typer's rich markup (None stays None)."""
    from rich.markup import escape

    return None if text is None else escape(reflow(text))


def plain(text: str | None) -> str:
    """What rich markup text shows, without markup: the inverse of `for_rich`'s escaping."""
    from rich.text import Text

    return Text.from_markup(text or "").plain


def first_sentence(text: str | None) -> str:
    """The first sentence of the first paragraph, whole ("eq. (5)" does not end it), without its final period."""
    first = " ".join(reflow(text).split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", first)[0].rstrip(".")
