"""Genres into the files' own tags and back: one table of formats, and safe whole-file writes.

tagger manages two kinds of field in a file and never touches any other: the standard genre
field (TCON, GENRE, ©gen) and its own custom fields, whose names start with TAGGER_.
Both are handled as (key, value) pairs in the format's own keys, in file order, e.g.
[("TCON", "Jazz"), ("TXXX:TAGGER_MODEL", "3f2a9c1b7d40")], which is also what the undo
data in the index holds.

A file is never modified in place: the change is made on a copy in the same folder (a
hidden `.tagger-write-*.tmp`), flushed to disk, and renamed over the original, so that a
crash or a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import TCON, TXXX, delete as delete_id3
from mutagen.id3._id3v1 import find_id3v1   # mutagen has no public way to keep v1 bytes
from mutagen.id3._tags import ID3Tags
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from tagger.errors import TagError

PREFIX = "TAGGER_"                  # every custom field tagger writes starts with this
TEMP_PREFIX, TEMP_SUFFIX = ".tagger-write-", ".tmp"

Pairs = list[tuple[str, str]]


class _ID3Fields:
    """ID3v2 (mp3, and the ID3 chunk of wav and aiff): one TCON frame with several values,
    custom fields as TXXX frames."""
    name, genre_key = "id3", "TCON"

    def custom_key(self, name: str) -> str:
        return f"TXXX:{name}"

    def managed(self, tags) -> Pairs:
        pairs = [("TCON", t) for f in tags.getall("TCON") for t in f.text]
        return pairs + [(f"TXXX:{f.desc}", str(t)) for f in tags.getall("TXXX")
                        if f.desc.startswith(PREFIX) for t in f.text]

    def genres(self, tags) -> list[str]:
        """What a reader sees: ID3v1-style numbers resolved ('(17)' is Rock), no split on '/'."""
        return [g for f in tags.getall("TCON") for g in f.genres]

    def details(self, tags) -> dict:
        """For the undo record: the text encoding of each frame that managed() reads, by key."""
        return {"encodings": {f.HashKey: int(f.encoding)
                              for f in tags.getall("TCON") + tags.getall("TXXX")
                              if f.FrameID == "TCON" or f.desc.startswith(PREFIX)}}

    def put(self, tags, pairs: Pairs, custom_too: bool, backup: dict | None = None) -> None:
        """A restore's backup gives a frame back its own text encoding; new ones are UTF-8."""
        encodings = (backup or {}).get("encodings") or {}
        tags.delall("TCON")
        if custom_too:
            for f in tags.getall("TXXX"):
                if f.desc.startswith(PREFIX):
                    del tags[f.HashKey]
        for key, values in _grouped(pairs).items():
            if key == "TCON":
                tags.add(TCON(encoding=encodings.get(key, 3), text=values))
            else:
                tags.add(TXXX(encoding=encodings.get(key, 3), desc=key.removeprefix("TXXX:"),
                              text=values))


class _VorbisFields:
    """Vorbis comments (flac, ogg vorbis, opus): one GENRE= per genre. Keys are
    case-insensitive; the new fields take the place of the old genre, and a restore puts
    each field back at its original position in the list."""
    name, genre_key = "vorbis", "GENRE"

    def custom_key(self, name: str) -> str:
        return name

    def _ours(self, key: str, custom_too: bool = True) -> bool:
        key = key.upper()
        return key == "GENRE" or (custom_too and key.startswith(PREFIX))

    def managed(self, tags) -> Pairs:
        return [(k, v) for k, v in tags if self._ours(k)]

    def genres(self, tags) -> list[str]:
        return [v for k, v in tags if k.upper() == "GENRE"]

    def details(self, tags) -> dict:
        """For the undo record: where each field that managed() reads is in the list."""
        return {"positions": [i for i, (k, _) in enumerate(tags) if self._ours(k)]}

    def put(self, tags, pairs: Pairs, custom_too: bool, backup: dict | None = None) -> None:
        drop = [self._ours(k, custom_too) for k, _ in tags]
        kept = [kv for kv, d in zip(list(tags), drop) if not d]
        positions = (backup or {}).get("positions")
        if positions and len(positions) == len(pairs):     # a restore: each back in its place
            for at, kv in zip(positions, pairs):             # ascending, so each lands at `at`
                kept.insert(at, tuple(kv))
            tags[:] = kept
            return
        first = next((i for i, (k, _) in enumerate(tags) if k.upper() == "GENRE"), len(tags))
        at = sum(1 for d in drop[:first] if not d)
        tags[:] = kept[:at] + list(pairs) + kept[at:]


class _MP4Fields:
    """MP4 atoms (m4a): ©gen as free text (never the numeric gnre atom, which mutagen reads
    as ©gen and writes back as ©gen), custom fields as ----:com.apple.iTunes:NAME."""
    name, genre_key = "mp4", "©gen"
    FREEFORM = "----:com.apple.iTunes:"

    def custom_key(self, name: str) -> str:
        return self.FREEFORM + name

    def _custom(self, tags) -> list[str]:
        return [k for k in tags if k.startswith(self.FREEFORM + PREFIX)]

    def managed(self, tags) -> Pairs:
        pairs = [("©gen", v) for v in tags.get("©gen", [])]
        return pairs + [(k, bytes(v).decode("utf-8", "replace"))
                        for k in self._custom(tags) for v in tags[k]]

    def genres(self, tags) -> list[str]:
        return list(tags.get("©gen", []))

    def details(self, tags) -> dict:
        """For the undo record: the data type of each TAGGER_ value, by key."""
        return {"dataformats": {k: [int(v.dataformat) for v in tags[k]] for k in self._custom(tags)}}

    def put(self, tags, pairs: Pairs, custom_too: bool, backup: dict | None = None) -> None:
        """A restore's backup gives a TAGGER_ value back its own data type; new ones are UTF-8."""
        formats = (backup or {}).get("dataformats") or {}
        for key in ["©gen"] + (self._custom(tags) if custom_too else []):
            tags.pop(key, None)
        for key, values in _grouped(pairs).items():
            if key == "©gen":
                tags[key] = values
                continue
            kinds = formats.get(key, []) + [AtomDataType.UTF8] * len(values)   # UTF-8 if unknown
            tags[key] = [MP4FreeForm(v.encode("utf-8"), dataformat=kind)
                         for v, kind in zip(values, kinds)]


def _grouped(pairs: Pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


ID3_FIELDS, VORBIS_FIELDS, MP4_FIELDS = _ID3Fields(), _VorbisFields(), _MP4Fields()

# The one table: mutagen's file type -> how that format stores genre and custom fields.
FORMATS = {
    MP3: ID3_FIELDS, WAVE: ID3_FIELDS, AIFF: ID3_FIELDS,
    FLAC: VORBIS_FIELDS, OggVorbis: VORBIS_FIELDS, OggOpus: VORBIS_FIELDS,
    MP4: MP4_FIELDS,
}


@dataclass
class TagState:
    """What a file holds in the fields tagger manages."""
    fields: Pairs              # genre and TAGGER_* fields, in the format's keys, in file order
    genres: list[str]          # the genre as readers see it (for an mp3, ID3v1's too)
    tagged: bool               # the file has a tag at all (an ID3v2 tag, for the ID3 formats)
    id3_version: int | None    # 2, 3 or 4: the ID3v2 tag's minor version, for the ID3 formats
    table: _ID3Fields | _VorbisFields | _MP4Fields = field(repr=False, compare=False)
    details: dict = field(default_factory=dict, repr=False, compare=False)  # table.details()

    def planned(self, genres: Sequence[str], custom: Pairs = ()) -> Pairs:
        """The managed fields that would give these genres (and custom fields)."""
        return [(self.table.genre_key, g) for g in genres] + list(custom)

    def holds(self, genres: Sequence[str], custom: Pairs | None,
              id3_version: int | None = None) -> bool:
        """True if the file already has exactly these genres (and, unless custom is None,
        these TAGGER_ fields); ID3v2.3 holds several genres as one "/"-joined value."""
        v23 = self.table is ID3_FIELDS and _target_version(self, id3_version) == 3
        want = ["/".join(genres)] if v23 and genres else list(genres)
        mine = [kv for kv in self.fields if not _is_genre(self.table, kv[0])]
        return self.genres == want and (custom is None or sorted(mine) == sorted(custom))

    def backup(self) -> dict:
        """The JSON-able undo record of this state."""
        return {"fields": [list(kv) for kv in self.fields], "tagged": self.tagged,
                "id3_version": self.id3_version, **self.details}


def _is_genre(table, key: str) -> bool:
    return key.upper() == table.genre_key.upper()


def _wrap(path: str, exc: Exception) -> TagError:
    if isinstance(exc.__cause__, OSError):     # mutagen wraps I/O errors: "No space left..."
        exc = exc.__cause__
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return TagError(reason, path)


def _load(path: str, kind: type | None = None):
    """(mutagen file opened for editing, its field table, the genres a reader sees).
    `kind` forces the file type (a temporary copy has no telling extension). ID3 tags are
    loaded as they are on disk: without ID3v1's fields merged in and without frames
    translated to another version, so that saving rewrites them unchanged."""
    try:
        f = kind(path) if kind else mutagen.File(path)
        if f is None:
            raise TagError("not a file format tagger can tag", path)
        table = FORMATS.get(type(f))
        if table is None:
            raise TagError(f"writing tags to {type(f).__name__} files is not supported", path)
        seen = table.genres(f.tags) if f.tags is not None else []
        if table is ID3_FIELDS:
            f = type(f)(path, load_v1=False, translate=False)
        return f, table, seen
    except (mutagen.MutagenError, OSError) as exc:
        raise _wrap(path, exc) from None


def _state(f, table, seen: list[str]) -> TagState:
    tags = f.tags
    version = tags.version[1] if table is ID3_FIELDS and tags is not None else None
    return TagState(table.managed(tags) if tags is not None else [], seen, tags is not None,
                    version, table, table.details(tags) if tags is not None else {})


def read(path: str) -> TagState:
    """The genre and TAGGER_ fields of one file. Raises TagError."""
    return _state(*_load(path))


def custom_fields(state: TagState, probabilities: dict[str, float], model_id: str) -> Pairs:
    """TAGGER_MODEL and one TAGGER_PROB_<GENRE> per genre, in the file's format's keys."""
    table = state.table
    pairs = [(table.custom_key(f"{PREFIX}MODEL"), model_id)]
    return pairs + [(table.custom_key(f"{PREFIX}PROB_{g.upper()}"), f"{p:.4f}")
                    for g, p in sorted(probabilities.items())]


def _save(f, table, path: str, state: TagState, id3_version: int) -> None:
    """Save f (opened on `path`, whose fields were `state`), as ID3v2.`id3_version` for the
    ID3 formats. An ID3v1 tag at the end of an mp3 (and APEv2, which comes before it) keeps
    its bytes: mutagen can only rewrite or drop v1, so it is dropped and put back as it was."""
    if table is not ID3_FIELDS:
        f.save(path)
        return
    if state.id3_version != id3_version:    # a new tag, or a version change that was asked for
        _convert(f.tags, id3_version)
    if not isinstance(f, MP3):
        f.tags.save(path, v2_version=id3_version, v23_sep="/")
        return
    v1 = _id3v1_bytes(path)
    f.tags.save(path, v1=0, v2_version=id3_version, v23_sep="/")
    if v1:
        with open(path, "ab") as fh:
            fh.write(v1)


def _convert(tags, version: int) -> None:
    """Convert an ID3v2 tag to v2.`version` with mutagen, but lose no frame: mutagen drops
    the frames that the other version lacks (TSOP, TSOA, TMOO, RVA2... going to v2.3; RVAD,
    TSIZ, TRDA... going to v2.4) and turns TDRC, TDOR and TMCL into coarser v2.3 frames.
    A frame the conversion removed is put back unless converting back would give it again,
    so that a restore to the file's own version gives back the same frames."""
    before = list(tags.values())
    if version == 4 and "IPLS" in tags and ("TIPL" in tags or "TMCL" in tags):
        del tags["IPLS"]                    # kept beside TIPL/TMCL by an earlier v2.3 write
    (tags.update_to_v23 if version == 3 else tags.update_to_v24)()
    removed = [frame for frame in before if frame.HashKey not in tags]
    if not removed:
        return
    back = ID3Tags()
    for frame in tags.values():
        back.add(copy.deepcopy(frame))
    (back.update_to_v24 if version == 3 else back.update_to_v23)()
    for frame in removed:
        again = back.get(frame.HashKey)
        if again is None or again._pprint() != frame._pprint():
            tags.add(frame)


def _id3v1_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        _, offset = find_id3v1(fh)
        if not offset:
            return b""
        fh.seek(offset, 2)
        return fh.read()


def _target_version(state: TagState, asked: int | None) -> int:
    """The ID3v2 version to save: as asked, else the file's own, else 2.4 (2.2 cannot be
    written, so it becomes 2.4)."""
    if asked:
        return asked
    return state.id3_version if state.id3_version in (3, 4) else 4


def write_fields(path: str, pairs: Pairs, custom_too: bool, id3_version: int | None = None,
                 before_replace: Callable[[os.stat_result], None] = lambda st: None) -> os.stat_result:
    """Replace the file's genre field (and, if custom_too, every TAGGER_ field) with `pairs`,
    safely. id3_version 3 or 4 converts an existing ID3v2 tag; None keeps its version (2.4
    for a new tag). before_replace(stat of the new file) runs just before it takes the
    original's place. Returns the file's new stat. Raises TagError."""
    def change(f, table, state: TagState, temp: str) -> None:
        table.put(f.tags, pairs, custom_too)
        _save(f, table, temp, state, _target_version(state, id3_version))
    return _edit_tags(path, change, before_replace)


def restore_fields(path: str, backup: dict,
                   before_replace: Callable[[os.stat_result], None] = lambda st: None) -> os.stat_result:
    """Put back the fields of a TagState.backup(); an ID3v2 tag that tagger added, and that
    holds nothing else now, is removed again. before_replace as for write_fields. Raises
    TagError."""
    pairs = [tuple(kv) for kv in backup["fields"]]

    def change(f, table, state: TagState, temp: str) -> None:
        table.put(f.tags, pairs, custom_too=True, backup=backup)
        if table is ID3_FIELDS and not backup["tagged"] and len(f.tags) == 0:
            if isinstance(f, MP3):
                delete_id3(temp, delete_v1=False, delete_v2=True)
            else:
                f.delete(temp)
            return
        version = backup["id3_version"] if backup["id3_version"] in (3, 4) else None
        _save(f, table, temp, state, _target_version(state, version))
    return _edit_tags(path, change, before_replace)


def _edit_tags(path: str, change: Callable, before_replace=lambda st: None) -> os.stat_result:
    """change(mutagen file, field table, TagState before, copy's path) on a safe copy."""
    kind = type(_load(path)[0])             # the copy's name does not tell mutagen the type

    def edit(temp: str) -> None:
        f, table, seen = _load(temp, kind)
        state = _state(f, table, seen)
        if f.tags is None:
            f.add_tags()
        change(f, table, state, temp)
    return replace_safely(path, edit, before_replace)


def is_restored(state: TagState, backup: dict) -> bool:
    """True if the file already holds exactly what the backup holds."""
    return (state.fields == [tuple(kv) for kv in backup["fields"]]
            and state.tagged == backup["tagged"]
            and (not state.tagged or state.id3_version == backup["id3_version"]))


def read_only(path: str) -> bool:
    """Not writable by us, or with no write bit at all (which root would ignore)."""
    st = os.stat(path)
    return not os.access(path, os.W_OK) or not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def replace_safely(path: str, edit: Callable[[str], None],
                   before_replace: Callable[[os.stat_result], None] = lambda st: None) -> os.stat_result:
    """Copy the file beside itself, edit(copy), flush it to disk and rename it over the
    original (through a symlink to its target). The original is never opened for writing;
    on any error, or an interruption, the copy is removed and the original is untouched.
    Raises TagError; returns the new file's stat."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    temp = None
    try:
        if read_only(real):
            raise TagError("read-only; left unchanged", path)
        before = os.stat(real)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        shutil.copy2(real, temp)                    # data, mode bits, extended attributes
        with contextlib.suppress(OSError):
            os.chown(temp, before.st_uid, before.st_gid)
        edit(temp)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        before_replace(os.stat(temp))               # a rename keeps size and mtime
        os.replace(temp, real)
        temp = None
        _fsync_folder(folder)
        return os.stat(real)
    except (OSError, mutagen.MutagenError) as exc:     # mutagen's save fails as its own error
        raise _wrap(path, exc) from None
    except TagError as exc:
        raise TagError(exc.reason, path) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_leftovers(folders: Sequence[str]) -> int:
    """Delete the temporary copies that a killed write left behind in these folders."""
    removed = 0
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed
