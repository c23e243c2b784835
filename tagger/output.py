"""Listing formats: rich tables and bar charts for people; JSON, CSV and M3U for programs.

Machine formats go to stdout as bytes so that file names that are not valid UTF-8 survive:
JSON escapes them (\\udcXX, which Python's json and os.fsencode turn back into the bytes),
CSV and M3U write the raw bytes.

Every write to stdout (these, the rich consoles', click's) raises OutputError when it fails
(a closed pipe, a full disk), once the CLI has called guard_stdout: tagger.cli.main ends on it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tagger.errors import OutputError, TagError
from tagger.genres import DISPLAY_NAMES

JSON_KEYS = ("path", "genre", "confidence", "probabilities", "model_id", "error", "uncertain",
             "match")
_SURROGATE = re.compile("[\udc80-\udcff]")
UNWRAPPED = 1 << 16         # the width of a console that is not a terminal: nothing wraps


def display(path: str) -> str:
    """A file name fit for a terminal and for one line: undecodable bytes shown as U+FFFD,
    a line break in a name as \\n (the machine formats keep the exact name)."""
    return (path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            .replace("\n", "\\n").replace("\r", "\\r"))


def genre_name(genre: str | None) -> str:
    return DISPLAY_NAMES.get(genre, genre) if genre else ""


def glyph(console: Console, fancy: str, plain: str) -> str:
    """`fancy` where the console's encoding has it (UTF-8), else `plain` (LC_ALL=C, latin-1)."""
    try:
        fancy.encode(console.encoding)
    except (UnicodeError, LookupError):
        return plain
    return fancy


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise OutputError(exc) from None


class _Guarded:
    """A text stream whose failed writes raise OutputError (which neither rich nor click
    takes for theirs: on a closed pipe they would end the process with exit code 1)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        with _stdout_errors():
            return self._stream.write(text)

    def flush(self) -> None:
        with _stdout_errors():
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Make every failed write to sys.stdout an OutputError."""
    if not isinstance(sys.stdout, _Guarded):
        sys.stdout = _Guarded(sys.stdout)


def discard_stdout() -> None:
    """Once stdout has failed: what is still buffered for it goes to /dev/null, so that
    Python's flush at exit cannot fail again ("Exception ignored ... BrokenPipeError"; see
    the note on SIGPIPE in the docs of Python's signal module)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):          # not a file (CliRunner's)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _write(text: str) -> None:
    with _stdout_errors():
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.flush()


def record(row: dict) -> dict:
    """The public JSON object of one track."""
    return {key: row.get(key) for key in JSON_KEYS}


def write_json(rows: Iterable[dict]) -> None:
    """A JSON array, streamed one object per line."""
    chunk, empty = ["["], True
    for row in rows:
        text = json.dumps(record(row), ensure_ascii=False)
        chunk.append(("\n  " if empty else ",\n  ") + _SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text))
        empty = False
        if len(chunk) >= 256:
            _write("".join(chunk))
            chunk = []
    chunk.append("]\n" if empty else "\n]\n")
    _write("".join(chunk))


def write_json_object(value: dict) -> None:
    """One JSON object (a summary, not a listing of tracks), indented."""
    text = json.dumps(value, ensure_ascii=False, indent=2)
    _write(_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n")


def write_csv(rows: Iterable[dict], genres: Sequence[str]) -> None:
    """Columns: path, genre, confidence, model_id, error, one per genre, then uncertain
    (true or false) and match (the probability of the genre asked for, empty without one),
    added last, so that the others keep their places."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "genre", "confidence", "model_id", "error", *genres, "uncertain", "match"])
    for row in rows:
        probs = row.get("probabilities") or {}
        writer.writerow([row["path"], row.get("genre") or "", _num(row.get("confidence")),
                         row.get("model_id") or "", row.get("error") or "",
                         *(_num(probs.get(g)) for g in genres),
                         "true" if row.get("uncertain") else "false", _num(row.get("match"))])
        if buf.tell() > 1 << 16:
            _write(buf.getvalue())
            buf.seek(0)
            buf.truncate()
    _write(buf.getvalue())


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_m3u(rows: Iterable[dict], relative_to: str | None = None) -> int:
    """An extended M3U playlist of the classified tracks (failed and silent ones have no
    place in it): for each, `#EXTINF:<seconds>,<artist> - <title>` (seconds from the index,
    -1 if unknown; artist and title from the file's tags, else the file's name without its
    extension as the title) and its path, absolute or relative to `relative_to`. A path with
    a line break cannot be one of its lines (it would be two entries, the second a relative
    path to another file), so it is left out. Returns how many were."""
    from tagger import tags
    base = relative_to and os.path.abspath(relative_to)
    chunk, left_out = ["#EXTM3U"], 0
    for row in rows:
        path = row["path"]
        if row.get("status", "ok") != "ok":
            continue
        if "\n" in path or "\r" in path:
            left_out += 1
            continue
        try:
            artist, title = tags.artist_title(path)
        except TagError:                    # damaged or gone: the name says enough
            artist = title = None
        title = title or os.path.splitext(os.path.basename(path))[0]
        name = " ".join(f"{artist} - {title}".split() if artist else title.split())   # one line
        seconds = -1 if row.get("duration") is None else round(row["duration"])
        chunk += [f"#EXTINF:{seconds},{name}", _relative(path, base) if base else path]
        if len(chunk) >= 512:
            _write("".join(line + "\n" for line in chunk))
            chunk = []
    _write("".join(line + "\n" for line in chunk))
    return left_out


def _relative(path: str, base: str) -> str:
    """path from the folder base (its real path too, if path is under that one instead)."""
    real = os.path.realpath(base)
    for folder in (base, real):
        if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, folder)
    try:
        return os.path.relpath(path, real)      # ".." is followed from where the folder is
    except ValueError:                          # on another drive (Windows)
        return path


def print_table(console: Console, rows: Iterable[dict], genre: str | None = None) -> int:
    """The listing, one row a track; with `genre` (a --min-confidence filter), its
    probability comes first and the top genre after it."""
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    if genre:
        table.add_column(genre_name(genre), justify="right", no_wrap=True)
    table.add_column("Top genre" if genre else "Genre", no_wrap=True)
    if not genre:
        table.add_column("Conf.", justify="right", no_wrap=True)
    table.add_column("Path", overflow="fold")
    count, dash = 0, glyph(console, "—", "-")
    for row in rows:
        count += 1
        path = escape(display(row["path"]))
        if row.get("error"):
            cells = [f"[red]{dash}[/red]", "", f"{path}  [red]({escape(row['error'])})[/red]"]
        elif row.get("uncertain"):          # below its model's threshold: a guess, not a genre
            cells = [f"[yellow]{genre_name(row['genre'])} (uncertain)[/yellow]",
                     f"{row['confidence']:.0%}", path]
        else:
            cells = [genre_name(row["genre"]), f"{row['confidence']:.0%}", path]
        table.add_row(*([f"{row['match']:.0%}", cells[0], cells[2]] if genre else cells))
    if count:
        print_lines(console, table)
    return count


def print_lines(console: Console, renderable) -> None:
    """A table on the console; where that is not a terminal (a pipe, a file), each row on
    one line whatever its length, without the padding at its end, for grep and cut."""
    if console.is_terminal:
        console.print(renderable)
        return
    wide = Console(file=io.StringIO(), width=UNWRAPPED, color_system=None, soft_wrap=True)
    wide.print(renderable)
    text = wide.file.getvalue()
    console.out("".join(line.rstrip() + "\n" for line in text.split("\n")[:-1]), end="",
                highlight=False)


def bar_chart(console: Console, row: dict, width: int = 30) -> None:
    """One file's probabilities, best first, as horizontal bars."""
    console.print(f"[bold]{escape(display(row['path']))}[/bold]", highlight=False)
    if row.get("error"):
        console.print(f"  [red]{escape(row['error'])}[/red]", highlight=False)
        return
    if row.get("uncertain"):
        console.print("  [yellow]uncertain: its top genre is below the model's threshold[/yellow]",
                      highlight=False)
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 1))
    full, half = glyph(console, "█", "#"), glyph(console, "▌", "")
    for genre, p in sorted(row["probabilities"].items(), key=lambda kv: -kv[1]):
        filled = p * width
        bar = full * int(filled) + (half if filled - int(filled) >= 0.5 else "")
        style = "cyan" if genre != row["genre"] else "yellow" if row.get("uncertain") else "green"
        table.add_row(f"  {genre_name(genre)}", f"[{style}]{bar:<{width}}[/{style}]", f"{p:6.1%}")
    console.print(table)


_SHADES = (0.1, 0.25, 0.5, 0.75)  # where the heat strip's next shade begins


def heat_strip(console: Console, timeline) -> None:
    """A timeline (tagger.timeline.Timeline) as one row per genre, best overall first, one
    cell per window (or per group of windows, to fit the terminal) shaded by probability,
    with the genre's mean at the end of its row and a time axis in m:ss below."""
    from tagger.timeline import clock, grid
    overall = timeline.overall
    console.print(f"[bold]{escape(display(timeline.path))}[/bold]", highlight=False)
    if not overall:
        console.print("  silent (no sound above -80 dBFS)", highlight=False)
        return
    order = list(overall)
    label = max(len(genre_name(g)) for g in order) + 2
    cells, starts = grid(timeline, max(10, min(console.width, 200) - label - 8))
    shades = [glyph(console, s, p) for s, p in ((" ", " "), ("░", "."), ("▒", ":"),
                                                  ("▓", "+"), ("█", "#"))]
    silent = glyph(console, "·", " ")
    rows = {g: cells[i] for i, g in enumerate(timeline.genres)}
    for genre in order:
        line = Text(f"{genre_name(genre):<{label}}",
                    style="bold green" if genre == order[0] else "")
        for p in rows[genre]:
            line.append(silent if math.isnan(p) else shades[sum(p >= s for s in _SHADES)],
                        style="dim" if math.isnan(p) else "cyan")
        line.append(f" {overall[genre]:6.1%}")
        console.print(line, highlight=False)
    step = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                if k >= len(clock(starts[-1])) + 1 or k >= len(starts))
    axis = "".join(f"{clock(starts[c]):<{step}}" for c in range(0, len(starts), step))
    console.print(Text(" " * label + axis[:len(starts) + 8], style="dim"), highlight=False)
    every = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else timeline.hop_seconds
    console.print(f"Overall: [bold]{escape(genre_name(order[0]))}[/bold] {overall[order[0]]:.1%} "
                  f"(the mean of {len(timeline.windows)} windows of {timeline.window_seconds:g} s "
                  f"every {timeline.hop_seconds:g} s; a cell every "
                  f"{f'{every:.3g} s' if every < 60 else clock(every)}"
                  f"{'; ' + silent + ' silent' if any(map(math.isnan, cells.flat)) else ''})",
                  highlight=False)
    console.print("  ".join(f"{shade} {p:.0%}" for shade, p in zip(shades[1:], _SHADES)) + " and up",
                  highlight=False, markup=False)
