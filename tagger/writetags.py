"""write-tags and restore-tags over the index: which files, what to write, and the counts.

write_tags() and restore_tags() are the library's (and the commands') entry points. No
terminal I/O here: the caller passes a callback for each file's outcome and a function that
says when to stop. Each file is done whole or not at all (tagger.tags writes a copy and
renames it); the undo record is in the index before a file is first changed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tagger import tags
from tagger.errors import TagError, UsageError, UserError
from tagger.genres import DISPLAY_NAMES, genre_key
from tagger.index import Index, existing_index, under, with_real
from tagger.objects import is_uri

STALE = "changed since it was scanned (the prediction may not be its own); run `tagger scan` on it first"
VANISHED = "no longer exists"
ON_A_STORE = "on object storage: tagger writes tags into local files only"
NOT_CLASSIFIED = "not classified"
CHANGED = ("changed since tagger wrote it (another program or a hand edit set its genre or "
           "TAGGER_ fields); left unchanged: pass --force to restore it anyway")
MAYBE_CHANGED = ("changed since tagger wrote it, or may have: its undo record is from an older "
                 "tagger, which kept no copy of what it wrote, and the file's size or date is not "
                 "what that tagger noted; pass --force to restore it anyway")
# why a file's genre stays as it is (Outcome.reason; the CLI's --verbose prints it)
KEPT = "kept: already has a genre"
UNCHANGED = "unchanged: already holds this"
UNCERTAIN = "uncertain: below its model's threshold"
REPLACED = ("another file's undo record is kept for this path: the file tagger wrote here was "
            "moved or replaced since; left unchanged (move that file back to restore it)")


@dataclass
class TagOptions:
    top_k: int = 1
    min_confidence: float = 0.5
    overwrite: bool = False          # replace a genre the file already has
    probabilities: bool = False      # also write TAGGER_MODEL and TAGGER_PROB_<GENRE>
    id3_version: int | None = None   # 3 or 4 converts ID3v2 tags; None keeps each file's own
    dry_run: bool = False
    include_uncertain: bool = False  # also write tracks whose top genre is below the threshold
    append: bool = False             # add the genres beside the file's own (see _appended)
    # genre key -> the words written for it (the config file's [genres]: Config.genre_names);
    # a genre not in it, or None, gets its display name
    genre_names: dict[str, list[str]] | None = None


Action = Literal["written", "unchanged", "kept", "below", "uncertain", "skipped"]


@dataclass
class Outcome:
    """What happened to one file: "written" (or restored; in a dry run, would be),
    "unchanged" (it holds this already), "kept" (it has a genre, and overwrite is off),
    "below" (min_confidence), "uncertain" (below the model's threshold), or "skipped";
    reason says why in words. tagger_fields: the TAGGER_ fields were written (would be) to
    a file whose genre is kept or below the threshold."""
    path: str
    action: Action
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reason: str | None = None
    tagger_fields: bool = False


@dataclass
class TagStats:
    """The counts of a write-tags or restore-tags run."""
    written: int = 0
    unchanged: int = 0
    kept: int = 0                   # already had a genre (overwrite off)
    below: int = 0
    tagger_fields_only: int = 0     # kept or below, but given their TAGGER_ fields
    uncertain: int = 0
    skipped: Counter = field(default_factory=Counter)     # short reason -> files
    leftovers_removed: int = 0      # temporary files of killed runs, cleaned first
    interrupted: bool = False

    def count(self, outcome: Outcome) -> None:
        match outcome.action:
            case "written":
                self.written += 1
            case "unchanged":
                self.unchanged += 1
            case "kept":
                self.kept += 1
            case "below":
                self.below += 1
            case "uncertain":
                self.uncertain += 1
            case "skipped":
                self.skipped[_short(outcome.reason)] += 1
        self.tagger_fields_only += outcome.tagger_fields


_SHORT = {STALE: "changed since the scan", VANISHED: "vanished", NOT_CLASSIFIED: NOT_CLASSIFIED,
          ON_A_STORE: "on object storage",
          REPLACED: "moved or replaced since write-tags", CHANGED: "changed since tagger wrote it",
          MAYBE_CHANGED: "changed since tagger wrote it"}


# A reason's start -> its short form in the summary.
_SHORT_STARTS = {"read-only": "read-only", "changed while writing": "changed while writing",
                 "would ": "would lose data", "converting to ID3": "would lose data",
                 "the new tags do not read back": "would lose data"}


def _short(reason: str | None) -> str:
    if reason in _SHORT:
        return _SHORT[reason]
    start = next((s for s in _SHORT_STARTS if reason and reason.startswith(s)), None)
    return _SHORT_STARTS[start] if start else "unreadable or unwritable"


def chosen_genres(probabilities: dict[str, float], top_k: int, min_confidence: float) -> list[str]:
    """Up to top_k genres, best first, whose probability is at least min_confidence."""
    best = sorted(probabilities.items(), key=lambda kv: -kv[1])[:top_k]
    return [g for g, p in best if p >= min_confidence]


def _stat(path: str) -> os.stat_result:
    if is_uri(path):                        # a cluster-scan's row: s3://, gs://...
        raise TagError(ON_A_STORE, path)
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise TagError(VANISHED, path) from None
    except OSError as exc:
        raise TagError(exc.strerror or str(exc), path) from None


def _version(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _catch_up(index: Index, path: str, st: os.stat_result, known: tuple[int, int] | None) -> bool:
    """True if the file is the version the index knows (`known`), the one tagger wrote
    after that (a write or restore killed between the rename and the index update), or the
    same content with another mtime (a bare touch); the index then moves on to it."""
    if _version(st) == known:
        return True
    if known is None or (index.written_version(path) != _version(st)
                         and not index.same_content(path, st)):
        return False
    index.moved_on(path, known, _version(st))
    return True


def _check_current(index: Index, row: dict) -> os.stat_result:
    """The file's stat if it is the version the index classified (or tagger's own after
    that: see _catch_up); else TagError."""
    st = _stat(row["path"])
    if not _catch_up(index, row["path"], st, (row["size"], row["mtime_ns"])):
        raise TagError(STALE, row["path"])
    return st


def _check_own_record(index: Index, path: str, state: tags.TagState) -> None:
    """TagError if the undo record at path is another file's (see Index.replaced) whose
    saved fields differ from this file's: restoring them, or keeping them as its original,
    would lose its own. A file that holds just what the record saved (a backup copy put
    back) may use it."""
    saved = index.replaced(path)
    if saved is not None and not tags.is_restored(state, saved):
        raise TagError(REPLACED, path)


def _note_written(index: Index, path: str) -> Callable[[os.stat_result], None]:
    """Records the new file's version just before it replaces the one at path; its inode is
    noted once it has (a kill in between leaves the record on the file still there)."""
    return lambda st: index.note_written(path, _version(st))


def changed_since_written(index: Index, path: str, state: tags.TagState,
                          st: os.stat_result) -> str | None:
    """CHANGED if the file's genre or TAGGER_ fields are no longer what tagger last wrote
    into it (another program or a hand edit set them: a program that keeps the file's date
    and size may have, so these are not asked); for a record from an older tagger, which
    kept no copy of what it wrote, MAYBE_CHANGED unless the file's size and mtime are still
    those of the file it wrote. None if unchanged, or if the file has no record."""
    if index.record_id(path) is None:
        return None
    written = index.written_fields(path)
    if written is not None:
        return None if tags.same_fields(state, written) else CHANGED
    return None if index.written_version(path) == _version(st) else MAYBE_CHANGED


def tag_one(index: Index, row: dict, opts: TagOptions) -> Outcome:
    """Write one indexed track's genres into its file (see TagOptions). With probabilities,
    a file whose genre is kept (it has one, overwrite off) or below min_confidence gets its
    TAGGER_ fields all the same, its genre field as it is."""
    path = row["path"]
    if row["status"] != "ok":
        return Outcome(path, "skipped", reason=NOT_CLASSIFIED)
    if row["uncertain"] and not opts.include_uncertain:     # the file stays as it is,
        return Outcome(path, "uncertain", reason=UNCERTAIN)  # tagger's genre or not
    chosen = chosen_genres(row["probabilities"], opts.top_k, opts.min_confidence)
    below = f"below {opts.min_confidence:.0%} confidence"
    if not chosen and not opts.probabilities:
        return Outcome(path, "below", reason=below)
    words = opts.genre_names or {}
    names = list(dict.fromkeys(word for g in chosen
                               for word in words.get(g) or [DISPLAY_NAMES.get(g, g)]))
    try:
        st = _check_current(index, row)
        state = tags.read(path)
        _check_own_record(index, path, state)
        custom = (tags.custom_fields(state, row["probabilities"], row["model_id"])
                  if opts.probabilities else None)
        if chosen and opts.append:          # the file's own values, then tagger's
            genre, added = _appended(index, path, state, st, names)
            names = state.shown(genre)
            if state.same_genre(genre, opts.id3_version) and (
                    custom is None or sorted(state.custom()) == sorted(custom)):
                return Outcome(path, "unchanged", state.genres, state.genres, UNCHANGED)
            left, pairs = None, genre + list(custom or ())
        elif not chosen:
            left = Outcome(path, "below", state.genres, state.genres, below)
        elif state.holds(names, custom, opts.id3_version):
            return Outcome(path, "unchanged", state.genres, state.genres, UNCHANGED)
        elif state.genres and not opts.overwrite:
            left = Outcome(path, "kept", state.genres, state.genres, KEPT)
        else:
            left = None
        if left is not None:                # the genre stays: the TAGGER_ fields, if asked
            if custom is None or sorted(state.custom()) == sorted(custom):
                return left
            left.tagger_fields = True
            pairs, added = state.keeping_genre(custom), _still_added(index, path, state)
        elif not opts.append:
            pairs, added = state.planned(names, custom or ()), None
        _write(index, path, st, state, pairs, opts, added)
    except TagError as exc:
        return Outcome(path, "skipped", reason=exc.reason)
    return left or Outcome(path, "written", state.genres, names)


def _edited(index: Index, path: str, state: tags.TagState, st: os.stat_result) -> bool:
    """True if another program changed the file's genre or TAGGER_ fields since tagger wrote
    them (not a write of tagger's killed before its fields were noted: see note_identity)."""
    return (changed_since_written(index, path, state, st) == CHANGED
            and index.written_version(path) != _version(st))


def _still_added(index: Index, path: str, state: tags.TagState) -> list[str] | None:
    """The values that write-tags --append added to the file's genre and that are still
    there (None: tagger did not append to it)."""
    added = (index.saved(path) or {}).get("added")
    if added is None:
        return None
    still = list(added)
    for gone in tags.without(state, added)[1]:
        still.remove(gone)
    return still


def _appended(index: Index, path: str, state: tags.TagState, st: os.stat_result,
              names: list[str]) -> tuple[tags.Pairs, list[str]]:
    """write-tags --append: (the genre field to write, the values of it that are tagger's).
    The file's own values stay as they are, and each of `names` that none of them is
    already (case and surrounding spaces aside) follows them. The file's own values are its
    genre field less what tagger appended to it before and no longer chooses; after a
    write that replaced the genre, those the undo record kept."""
    saved = index.saved(path)
    before = _still_added(index, path, state)
    if before is not None:
        own = tags.without(state, [a for a in before if a not in names])[0]
    elif saved is not None and not _edited(index, path, state, st):
        own = state.genre_fields(saved["fields"])
    else:
        own = state.own_genre()
    genre, new = tags.appended(state, own, names)
    return genre, [a for a in before or () if a in names] + new


def _write(index: Index, path: str, st: os.stat_result, state: tags.TagState,
           pairs: tags.Pairs, opts: TagOptions, added: list[str] | None = None) -> None:
    """Put pairs in place of the file's genre (and TAGGER_ fields, with probabilities), its
    undo record saved first; `added`: the genre values that are tagger's beside the file's
    own (write-tags --append), noted in the record. A file that another program changed
    since tagger last wrote it gets that program's fields as its original, so that a
    restore gives them back: less tagger's values, where tagger appended them."""
    if tags.read_only(path):
        raise TagError("read-only; left unchanged", path)
    if opts.dry_run:
        tags.check_conversion(path, opts.id3_version)
        return
    if _edited(index, path, state, st):
        before = (index.saved(path) or {}).get("added")
        index.rebase(path, state.backup() if before is None else
                     tags.rebuilt(state, tags.without(state, before)[0]))
    created = index.save_backup(path, state.backup())
    record = index.record_id(path)
    written = state.after(pairs, opts.probabilities)
    try:
        new = tags.write_fields(path, pairs, custom_too=opts.probabilities,
                                id3_version=opts.id3_version,
                                before_replace=_note_written(index, path),
                                keep_style=added is not None)
    except TagError:
        if created:     # nothing was written: a record kept now could later undo
            index.drop_record(record)   # another program's edit
        raise
    index.note_identity(record, new, written, added)
    index.moved_on(path, _version(st), _version(new))


def restore_one(index: Index, path: str, backup: dict, dry_run: bool = False,
                force: bool = False) -> Outcome:
    """Put back a file's genre and TAGGER_ fields as they were before the first write-tags,
    then forget the backup. The index follows the file as write-tags makes it do. A file
    whose genre or TAGGER_ fields changed since tagger wrote them is left as it is (its
    record kept) unless force; where tagger appended its genres, only a change to those
    values or to the TAGGER_ fields counts (see _taken_out)."""
    try:
        st = _stat(path)
        state = tags.read(path)
        _check_own_record(index, path, state)
        if not dry_run:
            _catch_up(index, path, st, index.file_version(path))
        old = [v for k, v in backup["fields"] if k.upper() == state.table.genre_key.upper()]
        if tags.is_restored(state, backup):
            if not dry_run:
                index.drop_record(index.record_id(path))
            return Outcome(path, "unchanged", state.genres, state.genres)
        changed = changed_since_written(index, path, state, st)
        take_out = changed == CHANGED and backup.get("added") is not None
        if take_out:
            pairs = _taken_out(index, path, state, backup, force)
            old = state.shown(state.genre_fields(pairs))
        elif not force and changed:
            raise TagError(changed, path)
        if tags.read_only(path):
            raise TagError("read-only; left unchanged", path)
        if not dry_run:
            record, note = index.record_id(path), _note_written(index, path)
            new = (tags.write_fields(path, pairs, True, before_replace=note, keep_style=True)
                   if take_out else tags.restore_fields(path, backup, before_replace=note))
            index.note_identity(record, new)
            index.moved_on(path, _version(st), _version(new))
            index.drop_record(record)
    except TagError as exc:
        return Outcome(path, "skipped", reason=exc.reason)
    return Outcome(path, "written", state.genres, old)


def _taken_out(index: Index, path: str, state: tags.TagState, backup: dict,
               force: bool) -> tags.Pairs:
    """A restore of a file whose genre another program edited since write-tags --append:
    tagger's values go from the genre field, the other values stay as they are now, and the
    TAGGER_ fields go back to the record's. If that program changed tagger's own part (one
    of tagger's values is not there as tagger wrote it, or the TAGGER_ fields changed), the
    file is CHANGED, as with any edit of what tagger wrote, unless force: then the rest of
    tagger's values go."""
    genre, gone = tags.without(state, backup["added"])
    written = index.written_fields(path) or []
    ours = [kv for kv in written if kv not in state.genre_fields(written)]
    if not force and (gone or not tags.same_fields(state, state.genre_fields() + ours)):
        raise TagError(CHANGED, path)
    saved = [tuple(kv) for kv in backup["fields"]]
    return genre + [kv for kv in saved if kv not in state.genre_fields(saved)]


def tracks_to_tag(index: Index, roots: Sequence[str], genre: str | None) -> list[dict]:
    """The index's rows under `roots` (all of them when none), of one top genre or any. A
    root under which the index holds nothing is an error (no genre asked: it was never
    scanned)."""
    forms = {root: with_real([root]) for root in roots}     # a root as given and its real path
    rows = list(index.tracks(genre=genre, roots=with_real(roots)))
    for root, paths in forms.items():
        if genre is None and not any(under(row["path"], paths) for row in rows):
            raise UserError(f"{root}: no indexed tracks there; run `tagger scan` on it first")
    return rows


def backups_to_restore(index: Index, roots: Sequence[str]) -> list[tuple[str, dict]]:
    """A record counts as under a root by the path it was saved through or by its file's real
    path."""
    roots = with_real(roots)
    return [(path, fields) for path, fields in index.backups()
            if under(path, roots) or under(os.path.realpath(path), roots)]


def clean_folders(paths: Iterable[str]) -> int:
    """Remove what killed writes left behind in the folders of these files."""
    return tags.remove_leftovers(sorted({os.path.dirname(os.path.realpath(p)) for p in paths}))


OnStart = Callable[[int], None]
OnOutcome = Callable[[Outcome], None]
ShouldStop = Callable[[], bool]


def write_tags(paths: Sequence[str | os.PathLike] = (), db: str | os.PathLike | None = None, *,
               genre: str | None = None, options: TagOptions | None = None,
               on_start: OnStart | None = None, on_outcome: OnOutcome | None = None,
               should_stop: ShouldStop | None = None) -> TagStats:
    """Write the index's genres into the files under `paths` (the whole index when empty),
    or only those whose top genre is `genre`, as `tagger write-tags` does: each file whole
    or untouched, its old genre kept in the index for restore_tags. `db` is the index file
    (default: $TAGGER_DB, else the user's data folder). on_start(n) gets the number of files
    about to be tried; on_outcome(outcome) each file's Outcome; should_stop() is asked before
    each file. A file that cannot be written is skipped with a reason; errors about the index
    or the arguments raise TaggerError."""
    opts = options or TagOptions()
    if opts.append and opts.overwrite:
        raise UsageError("--append keeps the file's genre and --overwrite replaces it: "
                         "pass one of them")
    key = genre_key(genre)
    index, roots = existing_index(db), [os.path.abspath(p) for p in paths]
    with index, index.writer_lock():
        rows = tracks_to_tag(index, roots, key)
        return _run(rows, lambda row: tag_one(index, row, opts), [r["path"] for r in rows],
                    opts.dry_run, on_start, on_outcome, should_stop)


def restore_tags(paths: Sequence[str | os.PathLike] = (), db: str | os.PathLike | None = None, *,
                 dry_run: bool = False, force: bool = False, on_start: OnStart | None = None,
                 on_outcome: OnOutcome | None = None,
                 should_stop: ShouldStop | None = None) -> TagStats:
    """Put back the genre (and TAGGER_ fields) that files under `paths` (default: all) had
    before write_tags first changed them, as `tagger restore-tags` does; the callbacks are
    write_tags'. A file whose genre or TAGGER_ fields another program changed since tagger
    wrote them is skipped ("changed since tagger wrote it"), its undo record kept, unless
    force."""
    index, roots = existing_index(db), [os.path.abspath(p) for p in paths]
    with index, index.writer_lock():
        todo = backups_to_restore(index, roots)
        return _run(todo, lambda item: restore_one(index, *item, dry_run=dry_run, force=force),
                    [p for p, _ in todo], dry_run, on_start, on_outcome, should_stop)


def _run(items: Sequence, do_one: Callable[..., Outcome], paths: list[str], dry_run: bool,
         on_start: OnStart | None, on_outcome: OnOutcome | None,
         should_stop: ShouldStop | None) -> TagStats:
    """do_one(item) for each item until should_stop(); a file's failure is its outcome.
    What killed runs left in the files' folders is removed first."""
    stats = TagStats(leftovers_removed=0 if dry_run else clean_folders(paths))
    if on_start:
        on_start(len(items))
    for item in items:
        if should_stop and should_stop():
            stats.interrupted = True
            break
        outcome = do_one(item)
        stats.count(outcome)
        if on_outcome:
            on_outcome(outcome)
    return stats
