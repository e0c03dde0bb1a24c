"""How the CLI shows things: `rich` on a terminal, plain text when piped.

A person at a terminal gets tables with borders and colour, a live progress
bar, and errors in red; a pipe or a file gets the plain, column-aligned text
that scripts and the tests parse (and `--json` is untouched by either). The
choice is made once per stream (`Output.for_stream`) from whether it is a
terminal; `NO_COLOR` and `TERM=dumb` are honoured by rich itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Words that a cell may hold and that deserve a colour on a terminal.
_STYLES = {
    "live": "green",
    "yes": "green",
    "DEAD": "bold red",
    "NO": "bold red",
    "(no lease)": "yellow",
}


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool] = ()
) -> str:
    """Plain text: columns separated by two spaces, headers first, no trailing blanks."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    flags = [bool(right[i]) if i < len(right) else False for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, flags, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _cell(text: str) -> Text:
    for word, style in _STYLES.items():
        if text == word or text.endswith(word):
            out = Text(text)
            out.stylize(style, len(text) - len(word))
            return out
    return Text(text)


@dataclass(frozen=True)
class Output:
    """Where one kind of output goes, and whether it is a terminal (rich) or not (plain)."""

    stream: TextIO
    rich: bool

    @staticmethod
    def for_stream(stream: TextIO | None = None) -> Output:
        s = stream if stream is not None else sys.stdout
        return Output(s, _isatty(s))

    def console(self) -> Console:
        return Console(file=self.stream, highlight=False, soft_wrap=False)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str = "",
        right: Sequence[bool] = (),
    ) -> None:
        """Print a table: bordered and coloured on a terminal, `table()` text otherwise."""
        if not self.rich:
            if title:
                self.stream.write(title + "\n\n")
            self.stream.write(table(headers, rows, right=right) + "\n")
            self.stream.flush()
            return
        t = Table(title=title or None, title_justify="left", header_style="bold")
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if i < len(right) and right[i] else "left")
        for row in rows:
            t.add_row(*(_cell(c) for c in row))
        self.console().print(t)

    def line(self, text: str, *, style: str = "") -> None:
        """One line of prose (a note under a table, a result)."""
        if self.rich and style:
            self.console().print(Text(text, style=style))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def error_line(message: str, stream: TextIO | None = None) -> None:
    """The one stderr line every failure prints (`rangekv: ...`), red on a terminal."""
    s = stream if stream is not None else sys.stderr
    text = f"rangekv: {' '.join(message.split())}"
    if _isatty(s):
        Console(file=s, highlight=False, soft_wrap=True).print(Text(text, style="red"))
    else:
        s.write(text + "\n")
        s.flush()


__all__ = ["Output", "error_line", "table"]
