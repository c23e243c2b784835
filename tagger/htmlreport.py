"""The library report (`tagger report`): what the index holds as one self-contained HTML
page, to open in a browser, mail, or copy to a phone. No network: CSS, SVG charts and the
small script that sorts and filters the table are inline, and the page reads the same
without the script (the table is plain HTML, in path order).

Two passes over the index's rows, in one read transaction: summarise() counts and keeps the
few tracks shown above the table (examples, uncertain, failed), then write_html() streams
the table, a row at a time, into a file that replaces the old one whole or not at all.
Memory stays bounded and the page small whatever the library's size: no SVG per track,
the probability bars are CSS widths. Every path, reason and name is HTML-escaped."""

from __future__ import annotations

import heapq
import html
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tagger import __version__
from tagger.atomic import atomic_file, check_target
from tagger.errors import UserError
from tagger.genres import DISPLAY_NAMES, GENRES
from tagger.index import existing_index
from tagger.output import display

DEFAULT_OUT = Path("report.html")
EXAMPLES = 5        # the most confident tracks shown for each genre
LISTED = 1000       # uncertain (and failed) tracks listed in their section at most
BINS = 10           # of the confidence histogram
SHOWN_FROM = 0.01   # a track's probabilities below this get no bar
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
HISTOGRAM = "#5b6b82"
STATES = {"silent": "silent", "failed": "failed", "error": "failed"}


@dataclass
class Summary:
    """What a report shows above its table. Tracks are classified (some uncertain), failed
    or silent, as `tagger stats` counts them; genres counts the certain ones by top genre."""
    tracks: int = 0
    classified: int = 0
    uncertain: int = 0
    failed: int = 0
    silent: int = 0
    genres: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)            # model id -> tracks
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)    # classified tracks
    examples: dict[str, list] = field(default_factory=dict)     # genre -> [(confidence, path)]
    unsure: list[dict] = field(default_factory=list)            # the first LISTED rows
    failures: list[dict] = field(default_factory=list)          # failed and silent, LISTED
    vocabulary: set[str] = field(default_factory=set)           # genres with a probability
    root: str | None = None                                     # the folder of every track

    def add(self, row: dict) -> None:
        self.tracks += 1
        self.models[row["model_id"]] += 1
        folder = os.path.dirname(row["path"])
        self.root = folder if self.root is None else os.path.commonpath([self.root, folder])
        self.vocabulary.update(row["probabilities"])
        if row["genre"] is None:
            self.silent += row["status"] == "silent"
            self.failed += row["status"] != "silent"
            if len(self.failures) < LISTED:
                self.failures.append(row)
            return
        self.classified += 1
        self.histogram[min(int(row["confidence"] * BINS), BINS - 1)] += 1
        if row["uncertain"]:
            self.uncertain += 1
            if len(self.unsure) < LISTED:
                self.unsure.append(row)
            return
        self.genres[row["genre"]] += 1
        best = self.examples.setdefault(row["genre"], [])
        (heapq.heappush if len(best) < EXAMPLES else heapq.heappushpop)(
            best, (row["confidence"], row["path"]))

    def colours(self) -> dict[str, int]:
        """Each genre's colour (an index into PALETTE): the vocabulary's order, then others."""
        order = [g for g in GENRES if g in self.vocabulary] + sorted(self.vocabulary - set(GENRES))
        return {g: i % len(PALETTE) for i, g in enumerate(order)}


def summarise(rows: Iterable[dict]) -> Summary:
    """A Summary of Index.tracks() rows."""
    summary = Summary()
    for row in rows:
        summary.add(row)
    return summary


def write_report(out: str | os.PathLike = DEFAULT_OUT, db: str | os.PathLike | None = None,
                 paths: Sequence[str | os.PathLike] = (), *,
                 names: Mapping[str, str] | None = None) -> Summary:
    """Write the report of the index `db` (see Index) to the HTML file `out`, as `tagger
    report` does: the tracks under `paths` (as `tagger query` takes them; none: every track),
    genres by their `names` (default: tagger's display names). Returns what it counted. No
    tracks, or an `out` that is a folder, lies in no folder or is another kind of file (not
    .html), is a UserError; the file is replaced whole or left as it was."""
    out = Path(out)
    check_out(out)
    with existing_index(db, read_only=True) as index:
        index.db.execute("BEGIN")       # both passes see the same index, a scan or not
        summary = summarise(index.query(paths=paths))
        if not summary.tracks:
            where = (f"under {', '.join(map(os.fspath, paths))}; run `tagger scan "
                     f"{os.fspath(paths[0])}` first" if paths else
                     "yet; run `tagger scan FOLDER` first")
            raise UserError(f"no tracks in the index {where}")
        try:
            write_html(out, summary, index.query(paths=paths), names)
        except OSError as exc:
            raise UserError(f"cannot write the report ({exc.strerror or exc}); pass another "
                            "--out", str(out)) from None
    return summary


def check_out(out: Path) -> None:
    """A UserError if the report cannot, or must not, be written at out."""
    check_target(out, "--out", str(DEFAULT_OUT))
    if out.exists() and out.suffix.lower() not in (".html", ".htm"):
        raise UserError("exists and is not an .html file, which a report would replace; pass "
                        "another --out", str(out))


def esc(text: str) -> str:
    """Text fit for HTML: undecodable bytes as U+FFFD, a line break in a name as \\n."""
    return html.escape(display(text))


def write_html(out: Path, summary: Summary, rows: Iterable[dict],
               names: Mapping[str, str] | None = None) -> None:
    """The page of summary and its table of rows (Index.tracks() rows, the ones summarised),
    written through atomic_file: an exception (a Ctrl-C) leaves out as it was."""
    page = Page(summary, {**DISPLAY_NAMES, **(names or {})})
    with atomic_file(out, "wb") as f:
        for part in page.top():
            f.write(part.encode("utf-8"))
        for row in rows:
            f.write(page.row(row).encode("utf-8"))
        f.write(page.bottom().encode("utf-8"))


class Page:
    def __init__(self, summary: Summary, names: Mapping[str, str]):
        self.s = summary
        self.names = names
        self.colour = summary.colours()

    def name(self, genre: str) -> str:
        return html.escape(self.names.get(genre, genre))

    def path(self, path: str) -> str:
        """The path below the folder common to every track (given in the header)."""
        root = self.s.root or ""
        return esc(path[len(root):].lstrip(os.sep) if path.startswith(root) else path)

    def top(self) -> Iterable[str]:
        s = self.s
        yield HEAD
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        yield (f'<h1>Music library report</h1><p class="mute">{esc(s.root or "")} &middot; '
               f"{when} &middot; tagger {__version__}</p>")
        counts = (("tracks", s.tracks), ("classified", s.classified), ("uncertain", s.uncertain),
                  ("failed", s.failed), ("silent", s.silent))
        models = ", ".join(f"{esc(m)} ({n} track{'s' * (n != 1)})" for m, n in s.models.most_common())
        yield ('<section id="summary"><ul class="counts">'
               + "".join(f"<li><b>{n}</b> {label}</li>" for label, n in counts)
               + f"</ul><p>Model{'s' * (len(s.models) != 1)}: {models}</p></section>")
        yield ('<div class="charts"><section id="genres"><h2>Genres</h2>' + self.genre_chart()
               + '</section><section id="confidence"><h2>Confidence</h2>' + self.histogram()
               + "</section></div>")
        yield '<section id="examples"><h2>The most confident tracks of each genre</h2>'
        yield self.examples() + "</section>"
        yield '<section id="uncertain"><h2>Uncertain</h2>' + self.uncertain() + "</section>"
        yield '<section id="failed"><h2>Failed and silent</h2>' + self.failed() + "</section>"
        yield ('<section id="all"><h2>Every track</h2><p class="legend">'
               + "".join(f'<span><i class="c{self.colour[g]}"></i>{self.name(g)}</span> '
                         for g in self.colour)
               + '</p><p id="tools" hidden><input id="q" type="search" aria-label="Filter the '
               'tracks" placeholder="Filter: a name, a genre, uncertain, failed"> '
               '<span id="shown"></span></p><div class="scroll"><table id="tracks"><thead><tr>'
               '<th>Track</th><th>Genre</th><th class="n">Confidence</th><th>Probabilities</th>'
               "</tr></thead><tbody>\n")

    def row(self, row: dict) -> str:
        """A <tr> of the table, kept short (a library may have 100,000 of them): attribute
        values unquoted where they are tagger's own, a bar a probability of SHOWN_FROM or
        more, and one title that gives their numbers."""
        path = f"<tr><td class=p>{self.path(row['path'])}</td>"
        if row["genre"] is None:
            return (f"{path}<td><em>{STATES.get(row['status'], row['status'])}</em></td>"
                    f"<td class=n></td><td>{esc(row['error'] or '')}</td></tr>\n")
        unsure = " <em class=u>uncertain</em>" if row["uncertain"] else ""
        shown = [(g, p) for g, p in row["probabilities"].items() if p >= SHOWN_FROM]
        bars = "".join(f"<i class=c{self.colour.get(g, 0)} style=width:{p * 100:.0f}%></i>"
                       for g, p in shown)
        title = ", ".join(f"{self.name(g)} {p:.0%}" for g, p in shown)
        return (f"{path}<td>{self.name(row['genre'])}{unsure}</td><td class=n>"
                f'{row["confidence"]:.1%}</td><td><div class=pb title="{title}">{bars}</div>'
                "</td></tr>\n")

    def bottom(self) -> str:
        return f"</tbody></table></div></section><script>{SCRIPT}</script></body></html>\n"

    def genre_chart(self) -> str:
        """Horizontal bars: the certain tracks of each genre, most first, then the uncertain."""
        bars = [(self.name(g), n, f"bar c{self.colour[g]}")
                for g, n in sorted(self.s.genres.items(), key=lambda kv: (-kv[1], kv[0]))]
        bars += [("(uncertain)", self.s.uncertain, "unsure")] if self.s.uncertain else []
        if not bars:
            return "<p>No classified tracks.</p>"
        top, step, left, width = max(n for _, n, _ in bars), 28, 130, 380
        parts = [f'<svg viewBox="0 0 600 {step * len(bars)}" role="img" '
                 'aria-label="Tracks by genre">']
        for i, (name, n, cls) in enumerate(bars):
            y, w = i * step, max(1, round(width * n / top))
            genre = f' data-genre="{name}"' if cls.startswith("bar") else ""
            parts.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end">{name}</text>'
                         f'<rect class="{cls}"{genre} data-n="{n}" x="{left}" y="{y + 4}" '
                         f'width="{w}" height="{step - 8}"><title>{name}: {n}</title></rect>'
                         f'<text x="{left + w + 6}" y="{y + 19}">{n}</text>')
        return "".join(parts) + "</svg>"

    def histogram(self) -> str:
        """Columns: classified tracks by their top probability, in BINS steps."""
        counts = self.s.histogram
        if not sum(counts):
            return "<p>No classified tracks.</p>"
        top, base, col = max(counts), 190, 56
        parts = ['<svg viewBox="0 0 600 230" role="img" aria-label="Tracks by the '
                 'probability of their top genre">']
        for i, n in enumerate(counts):
            h, x = round(160 * n / top), 20 + i * col
            low, high = i * 100 // BINS, (i + 1) * 100 // BINS
            parts.append(f'<rect class="bar hist" data-n="{n}" x="{x + 3}" y="{base - h}" '
                         f'width="{col - 6}" height="{h}"><title>{low}-{high}%: {n}</title></rect>'
                         + (f'<text x="{x + col // 2}" y="{base - h - 6}" text-anchor="middle">'
                            f"{n}</text>" if n else "")
                         + f'<text x="{x}" y="{base + 20}" text-anchor="middle">{low}</text>')
        parts.append(f'<text x="{20 + BINS * col}" y="{base + 20}" text-anchor="middle">100%</text>'
                     f'<line x1="20" x2="{20 + BINS * col}" y1="{base}" y2="{base}"/>')
        return "".join(parts) + "</svg>"

    def examples(self) -> str:
        if not self.s.genres:
            return "<p>None.</p>"
        cards = []
        for g, _ in sorted(self.s.genres.items(), key=lambda kv: (-kv[1], kv[0])):
            best = sorted(self.s.examples[g], reverse=True)
            cards.append(f'<div><h3><i class="c{self.colour[g]}"></i>{self.name(g)}</h3><ol>'
                         + "".join(f'<li><span class="p">{self.path(p)}</span> '
                                   f"<small>{c:.1%}</small></li>" for c, p in best)
                         + "</ol></div>")
        return '<div class="ex">' + "".join(cards) + "</div>"

    def listing(self, rows: list[dict], total: int, head: str, cells, more: str) -> str:
        if not rows:
            return "<p>None.</p>"
        body = "".join(f'<tr><td class="p">{self.path(r["path"])}</td>{cells(r)}</tr>'
                       for r in rows)
        rest = (f"<p>And {total - len(rows)} more: the table below lists them all ({more}).</p>"
                if total > len(rows) else "")
        return (f'<div class="scroll"><table><thead><tr><th>Track</th>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>{rest}")

    def uncertain(self) -> str:
        def cells(r: dict) -> str:
            (_, p), *others = r["probabilities"].items()
            runner_up = f"; next: {self.name(others[0][0])} {others[0][1]:.1%}" if others else ""
            return (f'<td>{self.name(r["genre"])}</td><td class="n">{p:.1%}</td>'
                    f"<td>top genre below its model's threshold{runner_up}</td>")
        return ("<p>Tracks whose top genre is less probable than their model's threshold: "
                "<code>tagger write-tags</code> leaves them alone.</p>" if self.s.uncertain
                else "") + self.listing(self.s.unsure, self.s.uncertain,
                                        '<th>Genre</th><th class="n">Confidence</th><th>Why</th>',
                                        cells, "filter it with “uncertain”")

    def failed(self) -> str:
        def cells(r: dict) -> str:
            return f'<td>{STATES.get(r["status"], r["status"])}</td><td>{esc(r["error"] or "")}</td>'
        return self.listing(self.s.failures, self.s.failed + self.s.silent,
                            "<th>State</th><th>Reason</th>", cells, "filter it with “failed”")


CSS = (":root{color-scheme:light dark;--fg:#1d1d1d;--bg:#fff;--mute:#666;--line:#ddd;"
       "--track:#eee}@media(prefers-color-scheme:dark){:root{--fg:#ddd;--bg:#161616;"
       "--mute:#999;--line:#333;--track:#2b2b2b}}*{box-sizing:border-box}"
       "body{font:15px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg);"
       "max-width:72rem;margin:0 auto;padding:0 1rem 2rem}h1{font-size:1.5rem;margin-bottom:0}"
       "h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid var(--line)}"
       "h3{font-size:1rem;margin:.5rem 0 0}.mute,small,.u{color:var(--mute)}"
       ".counts{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;padding:0;list-style:none}"
       ".counts b{display:block;font-size:1.4rem}"
       ".charts{display:grid;gap:0 2rem;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr))}"
       "svg{width:100%;height:auto;font:15px system-ui,sans-serif;fill:var(--fg)}"
       f"line{{stroke:var(--mute)}}rect.unsure{{fill:var(--mute)}}rect.hist{{fill:{HISTOGRAM}}}"
       ".ex{display:grid;gap:.5rem 2rem;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr))}"
       ".ex ol{margin:.2rem 0;padding-left:1.4rem}.p{overflow-wrap:anywhere}"
       ".scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}"
       "th,td{text-align:left;vertical-align:top;padding:.25rem .5rem;"
       "border-bottom:1px solid var(--line)}td.p{min-width:14rem}.n{text-align:right;"
       "white-space:nowrap}.pb{display:flex;width:10rem;height:.75rem;margin-top:.3rem;"
       "background:var(--track)}.pb i{display:block;height:100%}"
       "h3 i,.legend i{display:inline-block;width:.75rem;height:.75rem;margin-right:.3rem}"
       ".legend span{white-space:nowrap}#q{font:inherit;padding:.3rem .5rem;width:min(100%,24rem)}"
       "th[tabindex]{cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:' ▲'}"
       "th[aria-sort=descending]::after{content:' ▼'}"
       + "".join(f".c{i}{{background:{c};fill:{c}}}" for i, c in enumerate(PALETTE)))

HEAD = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>Music library report</title><style>{CSS}</style></head><body>\n")

# Sorting (click or Enter on a column's head; again to reverse) and filtering of the table.
SCRIPT = """
(function () {
  var table = document.getElementById("tracks"), body = table.tBodies[0];
  var rows = [].slice.call(body.rows), q = document.getElementById("q");
  var shown = document.getElementById("shown"), timer;
  function count(n) { shown.textContent = n + " of " + rows.length + " tracks"; }
  function filter() {
    var s = q.value.trim().toLowerCase(), n = 0;
    rows.forEach(function (r) {
      if (r.text === undefined) r.text = r.textContent.toLowerCase();
      r.hidden = s !== "" && r.text.indexOf(s) < 0;
      n += !r.hidden;
    });
    count(n);
  }
  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(filter, 150); });
  var heads = [].slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, c) {
    var numeric = th.className === "n";
    function sort() {
      var was = th.getAttribute("aria-sort");
      var up = was ? was === "descending" : !numeric;
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var keyed = rows.map(function (r, i) {
        var v = r.cells[c].textContent;
        return [numeric ? (v === "" ? -1 : parseFloat(v)) : v.toLowerCase(), i, r];
      });
      keyed.sort(function (a, b) {
        var d = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
        return d ? (up ? d : -d) : a[1] - b[1];
      });
      rows = keyed.map(function (k) { return k[2]; });
      var f = document.createDocumentFragment();
      rows.forEach(function (r) { f.appendChild(r); });
      body.appendChild(f);
    }
    th.tabIndex = 0;
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
    });
  });
  document.getElementById("tools").hidden = false;
  count(rows.length);
  document.documentElement.setAttribute("data-ready", "1");
})();
"""
