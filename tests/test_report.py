"""`tagger report`: the library as one self-contained HTML page. Checked by parsing the page
with the standard library's html.parser, and (marked browser) in a headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tagger
from conftest import make_checkpoint, run, write_track
from tagger.genres import DISPLAY_NAMES
from tagger.output import display

ODD = "<b>&\"odd' name"                                 # HTML's special characters
NOT_UTF8 = os.fsdecode(b"caf\xe9 latin-1")              # a name that is not valid UTF-8
VOID = {"meta", "input", "br", "link", "img", "hr", "col", "wbr", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None = None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None, **attrs) -> list[Node]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and all(
                        v in (c.attrs.get(k.rstrip("_")) or "").split() for k, v in attrs.items()):
                    found.append(c)
                found += c.all(tag, **attrs)
        return found

    def by_id(self, id_: str) -> Node:
        [node] = [n for n in self.all() if n.attrs.get("id") == id_]
        return node


class Tree(HTMLParser):
    """The page as a tree of Nodes (html.parser gives only events)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {})
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        node = self.node
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.node = node.parent

    def handle_data(self, data):
        self.node.children.append(data)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, model_path) -> tuple[Path, Path]:
    """A library scanned by a model, then a/ and b/ again by one whose every track is
    uncertain; with a silent track, an undecodable one, a name full of HTML's
    special characters and one that is not UTF-8."""
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "Music"
    for i, name in enumerate(["a/one.mp3", "a/two.flac", "b/three.ogg", "c/four.wav",
                              f"c/{ODD}.wav", f"d/{NOT_UTF8}.wav", "d/five.wav"]):
        write_track(root / name, seconds=2.5, kind=("tone", "noise", "clicks")[i % 3],
                    channels=2, freq=220.0 * (i + 1), seed=i)
    write_track(root / "e" / "quiet.wav", kind="silence")
    (root / "e" / "broken.mp3").write_bytes(b"not audio at all" * 100)
    unsure = make_checkpoint(tmp / "unsure.pt", uncertain_below=0.99)
    db = tmp / "index.db"
    run("scan", root, "--db", db, "--model", model_path, "--workers", "0")
    run("scan", root / "a", root / "b", "--db", db, "--model", unsure, "--workers", "0")
    return root, db


def query(db: Path, **kwargs) -> list[dict]:
    """Index.query's rows (which have the status the JSON leaves out)."""
    with tagger.Index(db, read_only=True) as index:
        return list(index.query(**kwargs))


def report(db: Path, out: Path, *args) -> Node:
    result = run("report", *args, "--db", db, "--out", out)
    assert f"Wrote {out}" in result.stdout
    return Tree(out.read_text(encoding="utf-8")).root         # strict UTF-8: it must be


def shown(path: str, root: Path) -> str:
    return display(os.path.relpath(path, root))


def test_the_table_has_every_track_with_its_genre_confidence_and_probabilities(scanned, tmp_path):
    root, db = scanned
    page = report(db, tmp_path / "report.html")
    table = page.by_id("tracks")
    colours = {span.all("i")[0].attrs["class"]: span.text() for span in
               page.by_id("all").all("p", class_="legend")[0].all("span")}
    assert sorted(colours.values()) == sorted(DISPLAY_NAMES.values())
    rows = {}
    for tr in table.all("tbody")[0].all("tr"):
        cells = tr.all("td")
        rows[cells[0].text()] = (tr, cells)
    expected = query(db)
    assert len(rows) == len(expected) == 9
    for track in expected:
        tr, (_, genre, confidence, probabilities) = rows[shown(track["path"], root)]
        if track["genre"] is None:
            assert genre.text() == ("silent" if track["status"] == "silent" else "failed")
            assert probabilities.text() == track["error"] and confidence.text() == ""
            continue
        name = DISPLAY_NAMES[track["genre"]]
        assert genre.text() == (f"{name} uncertain" if track["uncertain"] else name)
        assert confidence.text() == f"{track['confidence']:.1%}"
        [bar] = probabilities.all("div", class_="pb")
        listed = [(DISPLAY_NAMES[g], p) for g, p in track["probabilities"].items() if p >= 0.01]
        assert bar.attrs["title"] == ", ".join(f"{name} {p:.0%}" for name, p in listed)
        assert [(colours[i.attrs["class"]], i.attrs["style"]) for i in bar.all("i")] == [
            (name, f"width:{p * 100:.0f}%") for name, p in listed]
    assert "tracks" in page.by_id("summary").text()


def test_the_charts_have_a_bar_per_genre_and_a_histogram_of_confidence(scanned, tmp_path):
    root, db = scanned
    page = report(db, tmp_path / "report.html")
    stats = json.loads(run("stats", "--db", db, "--format", "json").stdout)
    bars = page.by_id("genres").all("rect", class_="bar")
    counts = {b.attrs["data-genre"]: int(b.attrs["data-n"]) for b in bars}
    assert counts == {DISPLAY_NAMES[g]: n for g, n in stats["genres"].items()}
    unsure = page.by_id("genres").all("rect", class_="unsure")
    assert [int(b.attrs["data-n"]) for b in unsure] == [stats["uncertain"]] == [3]
    histogram = page.by_id("confidence").all("rect", class_="bar")
    assert len(histogram) == 10
    assert sum(int(b.attrs["data-n"]) for b in histogram) == stats["classified"] == 7
    summary = " ".join(page.by_id("summary").text().split())
    for label in ("tracks", "classified", "uncertain", "failed", "silent"):
        assert f"{stats[label]} {label}" in summary, summary
    for model_id in stats["models"]:
        assert model_id in summary
    examples = page.by_id("examples")
    for g in stats["genres"]:
        assert DISPLAY_NAMES[g] in examples.text()


def test_uncertain_and_failed_tracks_are_listed_with_their_reasons(scanned, tmp_path):
    root, db = scanned
    page = report(db, tmp_path / "report.html")
    unsure = {r.all("td")[0].text(): r.text() for r in page.by_id("uncertain").all("tr")[1:]}
    assert set(unsure) == {shown(t["path"], root) for t in query(db, uncertain=True)} \
        == {"a/one.mp3", "a/two.flac", "b/three.ogg"}
    assert all("below its model's threshold" in text for text in unsure.values())
    failed = {r.all("td")[0].text(): [c.text() for c in r.all("td")[1:]]
              for r in page.by_id("failed").all("tr")[1:]}
    reasons = {shown(t["path"], root): [t["status"], t["error"]] for t in query(db, failed=True)}
    assert {state for state, _ in reasons.values()} == {"silent", "failed"}
    assert failed == reasons and set(failed) == {"e/quiet.wav", "e/broken.mp3"}
    assert failed["e/quiet.wav"][0] == "silent" and failed["e/broken.mp3"][0] == "failed"


def test_the_page_is_self_contained(scanned, tmp_path):
    root, db = scanned
    out = tmp_path / "report.html"
    page = report(db, out)
    text = out.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    for node in page.all():
        for attr in ("src", "href", "action", "data", "srcset"):
            assert attr not in node.attrs, (node.tag, node.attrs)
    assert not page.all("link") and not page.all("iframe") and not page.all("img")
    assert "@import" not in text and "url(" not in text
    [script] = page.all("script")
    assert "fetch" not in script.text() and "XMLHttpRequest" not in script.text()
    assert page.all("meta", name="viewport")


def test_html_special_characters_and_undecodable_names_are_escaped(scanned, tmp_path):
    root, db = scanned
    out = tmp_path / "report.html"
    page = report(db, out)
    text = out.read_text(encoding="utf-8")
    assert ODD not in text and "<b>&" not in text and "&amp;&quot;odd&#x27; name" in text
    cells = [tr.all("td")[0].text() for tr in page.by_id("tracks").all("tbody")[0].all("tr")]
    assert f"c/{ODD}.wav" in cells
    assert "d/caf\ufffd latin-1.wav" in cells


def test_paths_narrow_the_report(scanned, tmp_path, monkeypatch):
    root, db = scanned
    monkeypatch.chdir(root)
    page = report(db, tmp_path / "report.html", "c", root / "e" / "quiet.wav")
    cells = [tr.all("td")[0].text() for tr in page.by_id("tracks").all("tbody")[0].all("tr")]
    assert sorted(cells) == sorted(["c/four.wav", f"c/{ODD}.wav", "e/quiet.wav"])


def test_the_default_out_is_report_html_here(scanned, tmp_path, monkeypatch):
    root, db = scanned
    monkeypatch.chdir(tmp_path)
    result = run("report", root / "a", "--db", db)
    assert result.stdout.startswith("Wrote report.html: 2 tracks")
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!doctype html>")


def test_no_tracks_is_one_error_line_and_no_file(scanned, tmp_path):
    root, db = scanned
    out = tmp_path / "report.html"
    result = run("report", tmp_path, "--db", db, "--out", out, ok=1)
    assert result.stderr.startswith("Error: no tracks in the index under ")
    assert "tagger scan" in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()
    missing = run("report", "--db", tmp_path / "none.db", "--out", out, ok=1)
    assert missing.stderr.startswith("Error:") and missing.stderr.count("\n") == 1


def test_an_out_that_cannot_be_written_is_one_error_line(scanned, tmp_path):
    root, db = scanned
    result = run("report", "--db", db, "--out", tmp_path, ok=1)
    assert result.stderr.startswith(f"Error: {tmp_path}: is a folder") and result.stderr.count("\n") == 1
    result = run("report", "--db", db, "--out", tmp_path / "nowhere" / "r.html", ok=1)
    assert result.stderr.startswith("Error: ") and "nowhere" in result.stderr
    assert result.stderr.count("\n") == 1
    before = db.read_bytes()            # a slip of the finger must not replace the index
    result = run("report", "--db", db, "--out", db, ok=1)
    assert result.stderr.startswith(f"Error: {db}: exists and is not an .html file")
    assert db.read_bytes() == before


def test_an_interrupted_write_leaves_the_old_report_whole(scanned, tmp_path):
    from tagger.htmlreport import summarise, write_html
    root, db = scanned
    out = tmp_path / "report.html"
    out.write_text("the old report")
    with tagger.Index(db, read_only=True) as index:
        rows = list(index.query())

    def interrupted():                  # a Ctrl-C halfway through the table
        yield from rows[:4]
        raise KeyboardInterrupt

    summary = summarise(rows)
    with pytest.raises(KeyboardInterrupt):
        write_html(out, summary, interrupted())
    assert out.read_text() == "the old report" and os.listdir(tmp_path) == ["report.html"]


def test_write_report_from_python(scanned, tmp_path):
    root, db = scanned
    out = tmp_path / "r.html"
    summary = tagger.write_report(out, db=db, paths=[root / "e"])
    assert (summary.tracks, summary.failed, summary.silent) == (2, 1, 1)
    assert "broken.mp3" in out.read_text(encoding="utf-8")


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.mark.browser
def test_a_headless_browser_renders_the_table_and_the_chart(scanned, tmp_path):
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        pytest.skip("no headless chromium or chrome on PATH")
    from PIL import Image
    root, db = scanned
    out = tmp_path / "report.html"
    report(db, out)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=390,1600"]
    dom = subprocess.run([*flags, "--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-ready="1"' in dom          # the script ran to its end
    assert dom.count("<tr") >= 9
    png = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={png}", out.as_uri()], capture_output=True, timeout=120)
    image = Image.open(png).convert("RGB")
    assert image.size == (390, 1600)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 20                # text, bars: not a blank page
    # the histogram's columns are on screen
    assert any(abs(r - 0x5b) + abs(g - 0x6b) + abs(b - 0x82) < 12 for _, (r, g, b) in colours)


def test_the_report_names_genres_with_the_users_words(scanned, tmp_path):
    """The config file's [genres] words, as write-tags writes them."""
    root, db = scanned
    stats = json.loads(run("stats", "--db", db, "--format", "json").stdout)
    words = {g: [f"My {g} <{i}>", "alt"] for i, g in enumerate(stats["genres"])}
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tagger" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[genres]\n" + "".join(f"{g} = {json.dumps(w)}\n" for g, w in words.items()))
    page = report(db, tmp_path / "report.html")
    bars = page.by_id("genres").all("rect", class_="bar")
    assert {b.attrs["data-genre"] for b in bars} == {"; ".join(w) for w in words.values()}
