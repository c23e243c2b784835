"""beets plugin: genres from the audio itself, by tagger.

    plugins: audiogenre
    audiogenre:
        auto: yes               # classify items as they are imported
        write_genre: yes        # also set beets' own genre field (beets writes it to the file)
        map: {hiphop: Hip Hop}

`beet audiogenre [QUERY]` classifies the matching items through tagger's Python API (the
same model, decoding workers, silence handling and index as `tagger scan`: a file the index
already holds a current prediction for costs nothing) and stores flexible attributes:
audiogenre (the top genre's name), audiogenre_confidence, audiogenre_model and one
audiogenre_<genre> per genre, so that `beet ls audiogenre:Jazz audiogenre_confidence:0.7..`
works. An uncertain track gets its probabilities but no genre; a file that cannot be
decoded, or is silent, is reported and left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import confuse
from beets import ui
from beets.dbcore import types
from beets.library import Item
from beets.plugins import BeetsPlugin

from tagger import api
from tagger import config as tagger_config
from tagger.basics import AUDIO_EXTENSIONS
from tagger.errors import TaggerError
from tagger.genres import GENRES, normalise_genre
from tagger.modelfile import resolve_model
from tagger.writetags import chosen_genres

PROBABILITY = types.Float(3)
# beets 2.x before the multi-valued `genres` field kept one `genre` string.
GENRE_FIELD = "genres" if "genres" in Item._fields else "genre"


class AudioGenrePlugin(BeetsPlugin):
    item_types = {"audiogenre": types.STRING, "audiogenre_model": types.STRING,
                  "audiogenre_confidence": PROBABILITY,
                  **{f"audiogenre_{g}": PROBABILITY for g in GENRES}}

    def __init__(self) -> None:
        super().__init__()
        self.config.add({"auto": False, "min_confidence": None, "top_k": 1,
                         "write_genre": False, "overwrite": False, "model": None, "map": {},
                         "db": None, "workers": None})
        if self.config["auto"].get(bool):
            self.register_listener("import_task_files", self.imported)

    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("audiogenre", help="classify genres from the audio with tagger")
        cmd.parser.add_option("-p", "--pretend", action="store_true", default=False,
                              help="show what would be stored, and store nothing")
        cmd.parser.add_option("-f", "--force", action="store_true", default=False,
                              help="classify again files that tagger's index holds already")
        cmd.func = lambda lib, opts, args: self.classify(
            lib.items(args), pretend=opts.pretend, force=opts.force, write=ui.should_write())
        return [cmd]

    def imported(self, session, task) -> None:
        """import_task_files: the items are in place (moved or copied) and stored."""
        try:
            self.classify(task.imported_items(), write=ui.should_write(), say=self._log.info,
                          warn=self._log.warning)
        except ui.UserError as exc:
            self._log.error("{}", exc)

    def classify(self, items, *, pretend: bool = False, force: bool = False,
                 write: bool = False, say=ui.print_, warn=ui.print_) -> None:
        """Classify the items (through tagger's index) and store what the model says;
        say(line) tells what is stored, warn(line) why an item is not."""
        names = self._names()
        if not 0 <= (self.config["min_confidence"].get(confuse.Optional(float)) or 0) <= 1:
            raise ui.UserError("audiogenre: min_confidence must be between 0 and 1")
        if self.config["top_k"].get(int) < 1:
            raise ui.UserError("audiogenre: top_k must be 1 or more")
        db = self.config["db"].as_filename() if self.config["db"].get() else None
        workers = self.config["workers"].get(confuse.Optional(int))
        todo = []
        for item in items:
            path = os.fsdecode(item.path)
            if os.path.splitext(path)[1].lower() not in AUDIO_EXTENSIONS:
                warn(f"{item}: skipped: not a format tagger reads")
            elif not os.path.isfile(path):
                warn(f"{item}: skipped: file not found")
            else:
                todo.append((item, path))
        if not todo:
            return
        try:
            model, model_id = self._model()
            api.scan([p for _, p in todo], db, model, force=force, prune=False, workers=workers,
                     on_start=lambda n: n and say(
                         f"audiogenre: classifying {n} of {len(todo)} files" + (
                             " (the others are in tagger's index)" if n < len(todo) else "")))
            predictions = api.stored([p for _, p in todo], db)
        except TaggerError as exc:
            raise ui.UserError(f"audiogenre: {exc}") from None
        rewritten = {}
        for item, path in todo:
            p = predictions.get(path)
            if p is None or p.model_id != model_id:
                warn(f"{item}: not classified (the scan stopped before it)")
            elif p.status != "ok":
                warn(f"{item}: {'silent' if p.status == 'silent' else 'failed'}: {p.error}")
            elif (fields := self._fields(item, p, names, pretend, say)) is not None:
                if "audiogenre" not in fields and "audiogenre" in item:
                    del item["audiogenre"]          # an earlier run's genre, no longer held
                item.update(fields)
                item.store()
                if GENRE_FIELD in fields and write:
                    st = os.stat(path)
                    if item.try_write():
                        rewritten[path] = (st.st_size, st.st_mtime_ns)
        if rewritten:       # beets changed their tags, not their audio: still current
            try:
                api.retagged(rewritten, db)
            except TaggerError as exc:
                self._log.warning("tagger's index does not know the files beets wrote: {}", exc)

    def _fields(self, item: Item, p: api.Prediction, names, pretend: bool, say) -> dict | None:
        """The attributes to store for a prediction (None in a pretend run), said as they go:
        an uncertain track's probabilities but no genre; beets' genre field with write_genre
        (an item's own genre is kept unless overwrite)."""
        min_confidence = self.config["min_confidence"].get(confuse.Optional(float))
        threshold = p.uncertain_below if min_confidence is None else min_confidence
        fields = {"audiogenre_model": p.model_id, "audiogenre_confidence": p.confidence,
                  **{f"audiogenre_{g}": v for g, v in p.probabilities.items()}}
        if p.uncertain or p.confidence < threshold:
            say(f"{item}: uncertain ({', '.join(names(p.genre))} {p.confidence:.0%}, below "
                f"{threshold:.0%}): no genre{'; would store its probabilities' if pretend else ''}")
            return None if pretend else fields
        fields["audiogenre"] = ", ".join(names(p.genre))
        say(f"{item}: {'would store ' if pretend else ''}{fields['audiogenre']} ({p.confidence:.0%})")
        genres = _words(chosen_genres(p.probabilities, self.config["top_k"].get(int), threshold),
                        names)
        old = item.get(GENRE_FIELD)
        if self.config["write_genre"].get(bool) and _text(old) != _text(genres):
            if old and not self.config["overwrite"].get(bool):
                say(f"{item}: genre kept: {_text(old)} (overwrite: no)")
            else:
                fields[GENRE_FIELD] = genres if GENRE_FIELD == "genres" else ", ".join(genres)
                say(f"{item}: {'would set' if pretend else 'set'} genre {', '.join(genres)}")
        return None if pretend else fields

    def _model(self) -> tuple[str | None, str]:
        """The model option as tagger takes it, and its model id."""
        model = self.config["model"].get(confuse.Optional(str))
        model = model and os.path.expanduser(model)         # a shipped name, or a file
        return model, resolve_model(None if model is None else Path(model))[1]

    def _names(self):
        """A function from a genre key to the names the user gives it (map option), else
        those tagger writes into tags (the [genres] of tagger's config file, else its
        display name)."""
        try:
            written = tagger_config.load()
        except TaggerError as exc:
            raise ui.UserError(f"audiogenre: {exc}") from None
        mapped = {}
        for key, words in (self.config["map"].get(dict) or {}).items():
            genre = normalise_genre(str(key))
            if genre is None:
                raise ui.UserError(f"audiogenre: map: unknown genre {key!r}; use one of "
                                   f"{', '.join(GENRES)}")
            mapped[genre] = [str(w) for w in words] if isinstance(words, list) else [str(words)]
        return lambda genre: mapped.get(genre) or written.genre_words(genre)


def _words(genres: list[str], names) -> list[str]:
    """The names of these genres, each once (case aside), in order."""
    out = []
    for genre in genres:
        out += [w for w in names(genre) if w.lower() not in {o.lower() for o in out}]
    return out


def _text(value) -> str:
    return ", ".join(value) if isinstance(value, list) else (value or "")
