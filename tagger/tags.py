"""Genres into the files' own tags and back: one table of formats, and safe whole-file writes.

tagger manages two kinds of field in a file and never touches any other: the standard genre
field (TCON, GENRE, ©gen) and its own custom fields, whose names start with TAGGER_.
Both are handled as (key, value) pairs in the format's own keys, in file order, e.g.
[("TCON", "Jazz"), ("TXXX:TAGGER_MODEL", "3f2a9c1b7d40")], which is also what the undo
data in the index holds.

A file is never modified in place: the change is made on a copy in the same folder (a
hidden `.tagger-write-*.tmp`), flushed to disk, and renamed over the original, so that a
crash or a kill at any moment leaves either the old file or the new one. Before the rename
the copy is verified against the original (verify): its managed fields read back as
written, every other frame, field and metadata block is the original's (for ID3, the raw
frames byte for byte: tagger writes ID3 tags frame by frame, see tagger.id3raw), and its
audio is the original's; and the original must not have changed since it was copied.
Otherwise the copy is dropped and the file skipped with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import TCON, TXXX, Frame, Frames_2_2
from mutagen.id3._tags import ID3Tags, save_frame     # raw frames: mutagen renders them
from mutagen.id3._util import ID3SaveConfig
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from tagger import id3raw, sameaudio
from tagger.errors import TagError

PREFIX = id3raw.PREFIX               # every custom field tagger writes starts with this
TEMP_PREFIX, TEMP_SUFFIX = ".tagger-write-", ".tmp"

Pairs = list[tuple[str, str]]


class _ID3Fields:
    """ID3v2 (mp3, and the ID3 chunk of wav and aiff): one TCON frame with several values,
    custom fields as TXXX frames (TCO and TXX in v2.2, under the same keys here)."""
    name, genre_key = "id3", "TCON"

    def custom_key(self, name: str) -> str:
        return f"TXXX:{name}"

    def _ours(self, tags) -> list:
        genre = [f for f in tags.values() if f.FrameID in id3raw.GENRE_IDS]
        return genre + [f for f in tags.values()
                        if _managed(f) and f.FrameID not in id3raw.GENRE_IDS]

    def _key(self, frame) -> str:
        return "TCON" if frame.FrameID in id3raw.GENRE_IDS else f"TXXX:{frame.desc}"

    def managed(self, tags) -> Pairs:
        return [(self._key(f), str(t)) for f in self._ours(tags) for t in f.text]

    def genres(self, tags) -> list[str]:
        """What a reader sees: ID3v1-style numbers resolved ('(17)' is Rock), no split on '/'."""
        return [g for f in tags.getall("TCON") for g in f.genres]

    def details(self, tags) -> dict:
        """For the undo record: the text encoding of each frame that managed() reads, by key."""
        return {"encodings": {self._key(f): int(f.encoding) for f in self._ours(tags)}}

    def put(self, tags, pairs: Pairs, custom_too: bool, backup: dict | None = None) -> None:
        """A restore's backup gives a frame back its own text encoding; new ones are UTF-8."""
        for f in self._ours(tags):
            if f.FrameID in id3raw.GENRE_IDS or custom_too:
                del tags[f.HashKey]
        for frame in _id3_frames(pairs, backup):
            tags.add(frame)


def _managed(frame) -> bool:
    """A mutagen ID3 frame that tagger manages: TCON, or a TXXX whose description starts
    with TAGGER_ (id3raw.Frame.managed says the same of raw frames)."""
    return frame.FrameID in id3raw.GENRE_IDS or (frame.FrameID in id3raw.CUSTOM_IDS
                                                 and frame.desc.startswith(PREFIX))


def _id3_frames(pairs: Pairs, backup: dict | None = None) -> list:
    """mutagen frames holding `pairs` (a restore's backup gives each its own encoding)."""
    encodings = (backup or {}).get("encodings") or {}
    return [TCON(encoding=encodings.get(key, 3), text=values) if key == "TCON" else
            TXXX(encoding=encodings.get(key, 3), desc=key.removeprefix("TXXX:"), text=values)
            for key, values in _grouped(pairs).items()]


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
        these TAGGER_ fields); ID3v2.3 (and 2.2) holds several genres as one "/"-joined value."""
        v23 = self.table is ID3_FIELDS and _target_version(self, id3_version) in (2, 3)
        want = ["/".join(genres)] if v23 and genres else list(genres)
        return self.genres == want and (custom is None or sorted(self.custom()) == sorted(custom))

    def custom(self) -> Pairs:
        """The TAGGER_ fields the file holds."""
        return [kv for kv in self.fields if not _is_genre(self.table, kv[0])]

    def genre_fields(self, pairs: Sequence[Sequence[str]] | None = None) -> Pairs:
        """The genre field's values as stored (ID3: raw text, "(17)" and "/" as they are);
        or those among `pairs` (an undo record's fields)."""
        return [tuple(kv) for kv in (self.fields if pairs is None else pairs)
                if _is_genre(self.table, kv[0])]

    def own_genre(self) -> Pairs:
        """genre_fields(), or for an mp3 with no TCON frame the ID3v1 genre a reader sees."""
        return self.genre_fields() or [(self.table.genre_key, g) for g in self.genres]

    def slash_joined(self, id3_version: int | None = None) -> bool:
        """True if several genres are one "/"-joined value: ID3v2.3 and 2.2."""
        return self.table is ID3_FIELDS and _target_version(self, id3_version) in (2, 3)

    def same_genre(self, pairs: Pairs, id3_version: int | None = None) -> bool:
        """True if the genre field already holds these values, in this order (in v2.3 and
        2.2, once "/"-joined; an mp3 with no TCON frame, as its ID3v1 genre)."""
        a, b = [v for _, v in self.own_genre()], [v for _, v in pairs]
        return "/".join(a) == "/".join(b) if self.slash_joined(id3_version) else a == b

    def shown(self, pairs: Pairs) -> list[str]:
        """The genres a reader would see in a genre field of these values."""
        values = [v for _, v in pairs]
        return TCON(encoding=3, text=values).genres if self.table is ID3_FIELDS else values

    def keeping_genre(self, custom: Pairs) -> Pairs:
        """The managed fields that keep the file's genre field as it is, with these TAGGER_
        fields (an mp3's ID3v1 genre, outside them, stays too)."""
        return [kv for kv in self.fields if _is_genre(self.table, kv[0])] + list(custom)

    def after(self, pairs: Pairs, custom_too: bool) -> Pairs:
        """The managed fields once write_fields(pairs, custom_too) has put `pairs` in place
        of the genre (and, if custom_too, of the TAGGER_ fields): the order is the format's."""
        return ([] if custom_too else self.custom()) + list(pairs)

    def backup(self) -> dict:
        """The JSON-able undo record of this state."""
        return {"fields": [list(kv) for kv in self.fields], "tagged": self.tagged,
                "id3_version": self.id3_version, **self.details}


def _alike(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _readings(state: TagState, value: str) -> list[str]:
    """The genres one stored value may stand for: itself, what an ID3 reader makes of it
    ("(7)" and "7" are ID3v1's Hip-Hop) and, in ID3v2.3 and 2.2, its "/"-joined parts."""
    if state.table is not ID3_FIELDS:
        return [value]
    return [value, *TCON(encoding=3, text=[value]).genres,
            *(value.split("/") if state.slash_joined() else [])]


def appended(state: TagState, own: Pairs, names: Sequence[str]) -> tuple[Pairs, list[str]]:
    """(`own` genre values followed by each of `names` that none of them already is, case
    and surrounding spaces aside; those names): what write-tags --append writes."""
    seen = [r for _, v in own for r in _readings(state, v)]
    new = [n for n in names if not any(_alike(n, r) for r in seen)]
    return list(own) + [(state.table.genre_key, n) for n in new], new


def without(state: TagState, values: Sequence[str]) -> tuple[Pairs, list[str]]:
    """(the file's genre values less one of each of `values`, exactly as tagger wrote them,
    in ID3v2.3 and 2.2 also out of a "/"-joined value; those of `values` not found)."""
    left, out = list(values), []
    for key, value in state.genre_fields():
        if value in left:
            left.remove(value)
            continue
        if state.slash_joined() and "/" in value:
            parts = value.split("/")
            kept = []
            for part in parts:
                if part in left:
                    left.remove(part)
                else:
                    kept.append(part)
            if len(kept) < len(parts):
                out += [(key, "/".join(kept))] if kept else []
                continue
        out.append((key, value))
    return out, left


def rebuilt(state: TagState, genre: Pairs) -> dict:
    """An undo record of this state with `genre` as its genre field: a file that another
    program edited since write-tags --append, less tagger's values. It holds no raw frames
    or places; a restore writes its values in the style of the file's genre field."""
    backup = state.backup()
    backup.pop("frames", None)
    backup.pop("positions", None)
    return backup | {"fields": [list(kv) for kv in [*genre, *state.custom()]], "rebuilt": True}


def _is_genre(table, key: str) -> bool:
    return key.upper() == table.genre_key.upper()


def _wrap(path: str, exc: Exception) -> TagError:
    if isinstance(exc.__cause__, OSError):     # mutagen wraps I/O errors: "No space left..."
        exc = exc.__cause__
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return TagError(reason, path)


@contextlib.contextmanager
def _mutagen(path: str, doing: str = "read") -> Iterator[None]:
    """Around calls into mutagen (and only those): what it raises becomes a TagError, the
    file's skip reason. Its own errors (MutagenError, with a full disk as the cause) and
    OSError say why; anything else it raises on a damaged file (an Ogg Vorbis comment header
    cut at its framing byte: IndexError; struct.error, ValueError...) is named in one line,
    as mediafile's wrapper does. A MemoryError is not the file's fault and goes on up, as a
    KeyboardInterrupt (not an Exception) does."""
    try:
        yield
    except (mutagen.MutagenError, OSError) as exc:
        raise _wrap(path, exc) from None
    except MemoryError:
        raise
    except Exception as exc:        # noqa: BLE001 - a mutagen bug on a damaged file
        said = " ".join(str(exc).split())[:200]
        raise TagError(f"mutagen cannot {doing} its tags ({type(exc).__name__}"
                       f"{': ' + said if said else ''})", path) from None


def _open(path: str, kind: type | None = None, **options):
    """mutagen's file object: of type `kind`, else the type mutagen tells (None if none)."""
    with _mutagen(path):
        return kind(path, **options) if kind else mutagen.File(path)


def _load(path: str, kind: type | None = None):
    """(mutagen file opened for editing, its field table, the genres a reader sees).
    `kind` forces the file type (a temporary copy has no telling extension). ID3 tags are
    loaded as they are on disk: without ID3v1's fields merged in and without frames
    translated to another version, so that saving rewrites them unchanged."""
    f = _open(path, kind)
    if f is None:
        raise TagError("not a file format tagger can tag", path)
    table = FORMATS.get(type(f))
    if table is None:
        raise TagError(f"writing tags to {type(f).__name__} files is not supported", path)
    seen = table.genres(f.tags) if f.tags is not None else []
    if table is ID3_FIELDS:
        f = _open(path, type(f), load_v1=False, translate=False)
    return f, table, seen


def artist_title(path: str) -> tuple[str | None, str | None]:
    """The file's first artist and title (None where its tags have none): mutagen's easy
    keys, or TPE1 and TIT2 in the ID3 tag of a WAV or AIFF file. Raises TagError."""
    with _mutagen(path):
        f = mutagen.File(path, easy=True)
        tags = f.tags if f is not None else None
        if tags is None:
            return None, None
        keys = ("TPE1", "TIT2") if isinstance(tags, ID3Tags) else ("artist", "title")
        values = [tags.get(key) for key in keys]
        values = [getattr(v, "text", v) for v in values]        # an ID3 frame's text, or a list
        return tuple(str(v[0]) if v else None for v in values)


def _state(f, table, seen: list[str]) -> TagState:
    tags = f.tags
    version = tags.version[1] if table is ID3_FIELDS and tags is not None else None
    return TagState(table.managed(tags) if tags is not None else [], seen, tags is not None,
                    version, table, table.details(tags) if tags is not None else {})


def read(path: str) -> TagState:
    """The genre and TAGGER_ fields of one file. For the ID3 formats the undo record also
    keeps the raw bytes and places of tagger's frames, and the tag's size, so that a
    restore gives back the very bytes. Raises TagError."""
    f, table, seen = _load(path)
    state = _state(f, table, seen)
    if table is ID3_FIELDS:
        tag, place = _raw(path, type(f))
        state.details["frames"] = [[i, fr.id, _b64(fr.flags), _b64(fr.data)]
                                   for i, fr in enumerate(tag.frames if tag else []) if fr.managed()]
        state.details["id3_size"], state.details["unpadded"] = place.size, place.unpadded
    return state


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_RAW_KINDS = {MP3: "mp3", WAVE: "wav", AIFF: "aiff"}


def _raw(path: str, kind: type) -> tuple[id3raw.Tag | None, id3raw.Place]:
    try:
        with open(path, "rb") as fh:
            return id3raw.read(fh, _RAW_KINDS[kind])
    except id3raw.Unsupported as exc:
        raise TagError(f"{exc}; left unchanged", path) from None
    except OSError as exc:
        raise _wrap(path, exc) from None


def custom_fields(state: TagState, probabilities: dict[str, float], model_id: str) -> Pairs:
    """TAGGER_MODEL and one TAGGER_PROB_<GENRE> per genre, in the file's format's keys."""
    table = state.table
    pairs = [(table.custom_key(f"{PREFIX}MODEL"), model_id)]
    return pairs + [(table.custom_key(f"{PREFIX}PROB_{g.upper()}"), f"{p:.4f}")
                    for g, p in sorted(probabilities.items())]


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
        if again is None or _content(again) != _content(frame):
            tags.add(frame)


_ENCODING = re.compile(r"encoding=<Encoding\.\w+: \d+>, ")


def _content(frame) -> str:
    """What a frame holds, whatever its text encoding (which a v2.3 save changes): its
    repr without the encodings. (mutagen's _pprint says "[unrepresentable data]" for any
    list of people, TIPL, TMCL and IPLS, and leaves binary data out.)"""
    return _ENCODING.sub("", repr(frame))


def _target_version(state: TagState, asked: int | None) -> int:
    """The ID3v2 version to save: as asked, else the file's own (2.2 included), else 2.4."""
    return asked or state.id3_version or 4


def write_fields(path: str, pairs: Pairs, custom_too: bool, id3_version: int | None = None,
                 before_replace: Callable[[os.stat_result], None] = lambda st: None,
                 keep_style: bool = False) -> os.stat_result:
    """Replace the file's genre field (and, if custom_too, every TAGGER_ field) with `pairs`,
    safely. id3_version 3 or 4 converts an existing ID3v2 tag; None keeps its version (2.4
    for a new tag). before_replace(stat of the new file) runs just before it takes the
    original's place. keep_style (values added to or taken from the file's own): an ID3
    genre frame keeps its text encoding and its v2.3 separator (see _kept_style).
    Returns the file's new stat. Raises TagError."""
    return _edit_tags(path, pairs, custom_too, id3_version, None, before_replace, keep_style)


def restore_fields(path: str, backup: dict,
                   before_replace: Callable[[os.stat_result], None] = lambda st: None) -> os.stat_result:
    """Put back the fields of a TagState.backup(): for the ID3 formats the frames' own bytes
    in their own places when the tag has its old version (a record without them: frames
    made from its fields); an ID3v2 tag that tagger added, and that holds nothing else now,
    is removed again. before_replace as for write_fields. Raises TagError."""
    pairs = [tuple(kv) for kv in backup["fields"]]
    # back to the file's own version; a v2.2 tag that an older tagger made v2.4 stays v2.4
    version = backup["id3_version"] if backup["tagged"] and backup["id3_version"] in (3, 4) else None
    return _edit_tags(path, pairs, True, version, backup, before_replace,
                      keep_style=backup.get("rebuilt", False))


def _edit_tags(path: str, pairs: Pairs, custom_too: bool, asked: int | None, backup: dict | None,
               before_replace=lambda st: None, keep_style: bool = False) -> os.stat_result:
    """Put `pairs` in place of the managed fields on a safe copy, and verify the copy."""
    kind = type(_load(path)[0])             # the copy's name does not tell mutagen the type

    def edit(temp: str) -> None:
        f, table, seen = _load(temp, kind)
        state = _state(f, table, seen)
        version = None
        if table is ID3_FIELDS:
            version = _target_version(state, asked)
            _write_id3(temp, f, state, pairs, custom_too, version, backup, keep_style)
        else:
            if f.tags is None:
                with _mutagen(temp, "write"):
                    f.add_tags()
            table.put(f.tags, pairs, custom_too, backup)
            with _mutagen(temp, "write"):
                f.save(temp)
        verify(path, temp, state.after(pairs, custom_too), version, kind)
    return replace_safely(path, edit, before_replace)


def _write_id3(temp: str, f, state: TagState, pairs: Pairs, custom_too: bool, version: int,
               backup: dict | None, keep_style: bool = False) -> None:
    """At the tag's own version, frame by frame: tagger's frames are dropped, the new ones
    (a restore: the old ones' bytes) go where the first genre frame was, and every other
    frame keeps its bytes. A version change goes through mutagen, unless it would lose a
    frame that mutagen cannot read or keeps only one of."""
    with open(temp, "rb+") as fh:
        tag, place = id3raw.read(fh, _RAW_KINDS[type(f)])
        keep = (backup or {}).get("id3_size")
        if tag is None or tag.version == version:
            tag = tag or id3raw.Tag(version, 0)
            drop = [fr.managed() and (custom_too or fr.id in id3raw.GENRE_IDS) for fr in tag.frames]
            frames = [fr for fr, d in zip(tag.frames, drop) if not d]
            old = (backup or {}).get("frames")
            if old is not None and backup.get("id3_version") == version:
                for at, fid, flags, data in old:        # ascending: each lands where it was
                    frames.insert(at, id3raw.Frame(fid, base64.b64decode(flags),
                                                   base64.b64decode(data), version))
            else:
                at = drop.index(True) - sum(drop[:drop.index(True)]) if any(drop) else len(frames)
                style, sep = _kept_style(state, pairs, backup) if keep_style else (backup, "/")
                with _mutagen(temp, "write"):
                    new = [_raw_frame(fr, version, sep) for fr in _id3_frames(pairs, style)]
                frames[at:at] = [fr for fr in new if fr is not None]
            tag.frames = frames
            body, flags = tag.body(), tag.flags
        else:
            _convertible(tag, f.tags, version)
            with _mutagen(temp, "write"):
                _convert(f.tags, version)   # first: it rewrites "(17)" genres as "Rock"
            ID3_FIELDS.put(f.tags, pairs, custom_too, backup)
            with _mutagen(temp, "write"):
                body, flags = bytes(f.tags._write(ID3SaveConfig(version, "/"))), 0
        if backup is not None and not backup["tagged"] and not body:
            id3raw.write(fh, place, None, unpadded=backup.get("unpadded", False))
            return
        size = id3raw.tag_size(10 + len(body), place, keep)
        id3raw.write(fh, place, id3raw.assemble(version, flags, body, size))


def _kept_style(state: TagState, pairs: Pairs, backup: dict | None) -> tuple[dict, str | None]:
    """(encodings, v2.3 separator) for a genre frame whose values are the file's own with
    some added or taken out: the frame's own text encoding (Latin-1 only while every value
    fits in it; a restore's backup has the last word), and in v2.3 and 2.2 its own way of
    holding several values: null bytes if it holds several or an empty one, else "/"."""
    own = (state.details.get("encodings") or {}).get("TCON")
    encodings = ({"TCON": own} if own is not None else {}) | ((backup or {}).get("encodings") or {})
    if encodings.get("TCON") == 0 and not all(_latin1(v) for k, v in pairs if k == "TCON"):
        encodings["TCON"] = 3
    values = [v for k, v in state.fields if k == "TCON"]
    return {"encodings": encodings}, None if len(values) > 1 or "" in values else "/"


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _raw_frame(frame, version: int, sep: str | None = "/") -> id3raw.Frame | None:
    """A mutagen frame as raw bytes at v2.`version` (v2.2: the v2.3 payload, 3-letter id);
    several values joined by `sep` in v2.3 and 2.2 (None: null bytes)."""
    data = save_frame(frame, config=ID3SaveConfig(3 if version == 2 else version, sep))
    if not data:                        # mutagen writes no frame for an empty text
        return None
    if version == 2:
        return id3raw.Frame({"TCON": "TCO", "TXXX": "TXX"}[frame.FrameID], b"", data[10:], 2)
    return id3raw.Frame(data[:4].decode("ascii"), data[8:10], data[10:], version)


def _convertible(tag: id3raw.Tag, tags, version: int) -> None:
    """Refuse a version change that would lose a frame mutagen could not read (unknown,
    damaged) or kept one of (two lyrics with the same language and description)."""
    loaded = Counter(fr.FrameID for fr in tags.values() if not _managed(fr))
    lost = Counter(_v23_id(fr.id) if tag.version == 2 else fr.id for fr in tag.others()) - loaded
    if lost:
        raise TagError(f"converting to ID3v2.{version} would lose frame{'s' * (len(lost) > 1)} "
                       f"{', '.join(sorted(lost))}; left unchanged")


def check_conversion(path: str, version: int | None) -> None:
    """Raise TagError if write_fields would refuse to convert the file's ID3v2 tag to
    v2.`version` (see _convertible): what a dry run reports."""
    f, table, _ = _load(path)
    if table is not ID3_FIELDS or not version or f.tags is None:
        return
    tag = _raw(path, type(f))[0]
    if tag is not None and tag.version != version:
        try:
            _convertible(tag, f.tags, version)
        except TagError as exc:
            raise TagError(exc.reason, path) from None


def _v23_id(fid: str) -> str:
    """The id mutagen loads a v2.2 frame as (TT2 -> TIT2); a v2.2-only frame keeps its own."""
    kind = Frames_2_2.get(fid)
    return kind.__mro__[1].__name__ if kind and kind.__mro__[1] is not Frame else fid


# -- verification: nothing but the managed fields changes --------------------------------------

def verify(original: str, copy_: str, expected: Pairs, version: int | None = None,
           kind: type | None = None) -> None:
    """Raise TagError unless the copy's managed fields read back as `expected` and
    everything else is the original's: for the ID3 formats every other raw frame byte for
    byte (with a version change, every other frame as mutagen reads it at that version)
    and every byte outside the tag; for the other formats every other field and metadata
    block as mutagen reads them, and the audio (tagger.sameaudio)."""
    kind = kind or type(_load(original)[0])
    f, table, _ = _load(copy_, kind)
    got = table.managed(f.tags) if f.tags is not None else []
    if _normal(table, got, version) != _normal(table, expected, version):
        raise TagError("the new tags do not read back; left unchanged")
    if table is ID3_FIELDS:
        _verify_id3(original, copy_, kind, version)
        return
    a, b = _others(_open(original, kind)), _others(_open(copy_, kind))
    if "vendor" in b and "vendor" not in a:       # a new comment block: mutagen's own vendor
        a.update(vendor=b["vendor"], comments=[])
    if a != b:
        lost = next((k for k, v in a.items() if b.get(k) != v), None) or next(iter(b))
        raise TagError(f"would change {lost}; left unchanged")
    if not sameaudio.same_audio(original, copy_, kind):
        raise TagError("would change the audio; left unchanged")


def _normal(table, pairs: Pairs, version: int | None) -> list:
    pairs = [tuple(kv) for kv in pairs]
    if table is ID3_FIELDS and version in (2, 3):      # several values joined by "/"
        return sorted((k, "/".join(v)) for k, v in _grouped(pairs).items())
    if table is VORBIS_FIELDS:      # the genres in their order, then the TAGGER_ fields in theirs
        return sorted(pairs, key=lambda kv: not _is_genre(table, kv[0]))
    return sorted(pairs)


def same_fields(state: TagState, fields: Pairs) -> bool:
    """True if the file holds these managed fields (what tagger wrote into it), in any
    order, with Vorbis keys in any case, and at any ID3v2 version (v2.3 and v2.2 join
    several genres into one value with "/")."""
    version = state.id3_version if state.table is ID3_FIELDS else None
    upper = state.table is VORBIS_FIELDS

    def normal(pairs) -> list:
        return sorted(_normal(state.table, [(k.upper() if upper else k, v) for k, v in pairs],
                              version))
    return normal(state.fields) == normal(fields)


def _verify_id3(original: str, copy_: str, kind: type, version: int | None) -> None:
    (a, where_a), (b, where_b) = _raw(original, kind), _raw(copy_, kind)
    meant = version or (a.version if a else None)
    if b is not None and meant and b.version != meant:
        raise TagError(f"would write ID3v2.{b.version}, not v2.{meant}; left unchanged")
    with open(original, "rb") as fa, open(copy_, "rb") as fb:
        if not id3raw.same_audio(fa, where_a, fb, where_b):
            raise TagError("would change the audio; left unchanged")
    if a is None or b is None or b.version == a.version:
        mine, theirs = (a.others() if a else []), (b.others() if b else [])
    else:                               # a version change: compare what mutagen reads
        mine, theirs = _view(original, kind, version), _view(copy_, kind, version)
    if mine != theirs:
        raise TagError(f"would {_difference(mine, theirs)}; left unchanged")


def _difference(mine: list, theirs: list) -> str:
    """'lose frame USLT; change frame TIT2': how two frame lists differ, by frame id."""
    count = lambda frames: Counter(fr.id for fr in frames)      # noqa: E731
    a, b = count(mine), count(theirs)
    changed = [fr.id for fr in (Counter(mine) - Counter(theirs)) if a[fr.id] <= b[fr.id]]
    parts = [(verb, list(dict.fromkeys(ids))) for verb, ids in
             (("lose", [i for i in a if a[i] > b[i]]), ("change", changed),
              ("add", [i for i in b if b[i] > a[i]]))]
    said = [f"{verb} frame{'s' * (len(ids) > 1)} {', '.join(ids)}" for verb, ids in parts if ids]
    return "; ".join(said) or "reorder the frames"


def _view(path: str, kind: type, version: int) -> list:
    """The frames other than tagger's as mutagen reads them, converted as tagger converts
    them to v2.`version` (_convert) and as saving at that version writes them."""
    tags = _open(path, kind, load_v1=False, translate=False).tags or ID3Tags()
    if tags.version[1] != version:
        with _mutagen(path):
            _convert(tags, version)
    frames = [fr._get_v23_frame(sep="/") if version == 3 else fr for fr in tags.values()
              if not _managed(fr)]
    return sorted(id3raw.Frame(fr.FrameID, b"", _content(fr).encode()) for fr in frames)


def _others(f) -> dict:
    """Everything but the managed fields, as mutagen reads it (Vorbis comments in order)."""
    out: dict = {}
    if isinstance(f.tags, list):
        out["vendor"] = f.tags.vendor
        out["comments"] = [(k, v) for k, v in f.tags if not VORBIS_FIELDS._ours(k)]
    elif f.tags is not None:
        out.update({k: [(repr(v), getattr(v, "dataformat", None), getattr(v, "imageformat", None))
                        for v in (vs if isinstance(vs, list) else [vs])]
                    for k, vs in f.tags.items()
                    if k != "©gen" and not k.startswith(MP4_FIELDS.FREEFORM + PREFIX)})
    if isinstance(f, FLAC):
        out["metadata blocks"] = [(b.code, b.write()) for b in f.metadata_blocks
                                  if b.code not in (1, 4)]      # padding, the comments
    return out


def is_restored(state: TagState, backup: dict) -> bool:
    """True if the file already holds exactly what the backup holds."""
    return (state.fields == [tuple(kv) for kv in backup["fields"]]
            and state.tagged == backup["tagged"]
            and (not state.tagged or state.id3_version == backup["id3_version"]))


def read_only(path: str) -> bool:
    """Not writable by us, or with no write bit at all (which root would ignore)."""
    st = os.stat(path)
    return not os.access(path, os.W_OK) or not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _fingerprint(path: str) -> tuple:
    """What tells that a file changed: its identity, size, times, and a hash of its first
    and last 64 KiB (where the tags are)."""
    st = os.stat(path)
    digest = hashlib.blake2b()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 16))
        fh.seek(max(0, st.st_size - (1 << 16)))
        digest.update(fh.read())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest.digest()


def _still(path: str, copied: tuple) -> None:
    if _fingerprint(path) != copied:
        raise TagError("changed while writing (another program saved it); left unchanged")


def replace_safely(path: str, edit: Callable[[str], None],
                   before_replace: Callable[[os.stat_result], None] = lambda st: None) -> os.stat_result:
    """Copy the file beside itself, edit(copy) (which verifies it), flush it to disk and
    rename it over the original (through a symlink to its target). The original is never
    opened for writing; on any error, or an interruption, the copy is removed and the
    original is untouched. If the original changed after it was copied (another program
    saved it), the copy is dropped: "changed while writing". Only an edit landing in the
    moment between that last check and the rename would still be lost.
    Raises TagError; returns the new file's stat."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    temp = None
    try:
        if read_only(real):
            raise TagError("read-only; left unchanged", path)
        before = os.stat(real)
        copied = _fingerprint(real)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        shutil.copy2(real, temp)                    # data, mode bits, extended attributes
        with contextlib.suppress(OSError):
            os.chown(temp, before.st_uid, before.st_gid)
        edit(temp)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        _still(real, copied)        # before_replace (write-tags notes the new version in
        before_replace(os.stat(temp))   # the index) only for an original still as copied
        _still(real, copied)
        os.replace(temp, real)
        temp = None
        _fsync_folder(folder)
        return os.stat(real)
    except (OSError, mutagen.MutagenError) as exc:      # mutagen calls outside _mutagen too
        raise _wrap(path, exc) from None
    except id3raw.Unsupported as exc:
        raise TagError(f"{exc}; left unchanged", path) from None
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
