"""ID3v2 tags as stored: the frames' bytes, kept verbatim, and where the tag sits in a file.

mutagen keeps one frame per key and drops the frames it cannot parse, so rewriting a tag
through it loses duplicates (two lyrics with the same language), junk and unknown frames.
Here a tag is a list of raw frames (id, flags, payload as stored); tagger drops and inserts
only its own frames and writes every other frame back byte for byte, at the tag's own
version (v2.2's 6-byte frame headers included). The tag sits at the start of an mp3, or in
the `id3 `/`ID3 ` chunk of a WAV (RIFF) or AIFF (FORM) file; everything else in the file is
"the audio" and is never rewritten: `same_audio` compares it between a file and its copy.
What cannot be rewritten losslessly (unsynchronisation of the whole tag, an extended header,
a footer, v2.2 compression) raises Unsupported with the reason.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from mutagen._util import resize_bytes
from mutagen.id3._frames import Frames
from mutagen.id3._tags import determine_bpi          # iTunes' non-syncsafe v2.4 frame sizes
from mutagen.id3._util import BitPaddedInt, unsynch

PREFIX = "TAGGER_"                  # the custom fields tagger writes, as in tagger.tags
GENRE_IDS = {"TCON", "TCO"}
CUSTOM_IDS = {"TXXX", "TXX"}
NEW_TAG_PADDING = 1024
MAX_CHUNKS = 10_000                 # a WAV or AIFF has a handful; walking more is damage


class Unsupported(ValueError):
    """A tag or file layout that tagger cannot rewrite without changing other bytes."""


@dataclass(frozen=True, order=True)
class Frame:
    id: str
    flags: bytes            # b"" in v2.2
    data: bytes             # the payload as stored (compressed, unsynchronised... as it is)
    version: int = field(default=4, compare=False)      # of the tag it was read from

    def render(self, version: int, bits: int = 7) -> bytes:
        return header(self.id, len(self.data), version, self.flags, bits) + self.data

    def managed(self) -> bool:
        """TCON, or a TXXX whose description starts with TAGGER_: tagger's own."""
        if self.id in GENRE_IDS:
            return True
        return self.id in CUSTOM_IDS and (_description(self.payload()) or "").startswith(PREFIX)

    def payload(self) -> bytes:
        """The payload with the frame's flags undone (grouping byte, data length,
        unsynchronisation, compression); b"" if encrypted or damaged."""
        flags, data = int.from_bytes(self.flags or b"\0\0", "big"), self.data
        try:
            if self.version == 3:
                if flags & 0x0040:
                    return b""
                if flags & 0x0080:
                    data = data[4:]
                return zlib.decompress(data[bool(flags & 0x0020):]) if flags & 0x0080 else \
                    data[bool(flags & 0x0020):]
            if self.version == 4:
                if flags & 0x0004:
                    return b""
                data = data[bool(flags & 0x0040) + 4 * bool(flags & 0x0001):]
                data = unsynch.decode(data) if flags & 0x0002 else data
                return zlib.decompress(data) if flags & 0x0008 else data
        except (zlib.error, ValueError):
            return b""
        return data


def header(fid: str, size: int, version: int, flags: bytes = b"\0\0", bits: int = 7) -> bytes:
    """A frame header; v2.4 sizes are syncsafe (bits 7) unless the tag's are not (iTunes)."""
    if version == 2:
        return fid.encode("latin-1") + size.to_bytes(3, "big")
    bits = bits if version == 4 else 8
    return fid.encode("latin-1") + BitPaddedInt.to_str(size, width=4, bits=bits) + flags


def _description(data: bytes) -> str | None:
    """The description of a TXXX payload; None if its encoding byte is not one of ID3's."""
    if not data or data[0] > 3:
        return None
    enc, rest = data[0], data[1:]
    if enc in (0, 3):
        return rest.split(b"\0", 1)[0].decode("latin-1" if enc == 0 else "utf-8", "replace")
    end = next((i for i in range(0, len(rest) - 1, 2) if rest[i:i + 2] == b"\0\0"), len(rest))
    return rest[:end].decode("utf-16" if enc == 1 else "utf-16-be", "replace")


@dataclass
class Tag:
    version: int                        # 2, 3 or 4
    flags: int                          # the header's flag byte
    frames: list[Frame] = field(default_factory=list)
    bits: int = 7                       # v2.4 frame sizes: syncsafe, or 8 as iTunes wrote them

    def body(self) -> bytes:
        return b"".join(f.render(self.version, self.bits) for f in self.frames)

    def others(self) -> list[Frame]:
        return [f for f in self.frames if not f.managed()]


def _size(head: bytes) -> int:
    """The whole tag's size from its 10-byte header (footer included)."""
    return 10 + BitPaddedInt(head[6:10]) + (10 if head[3] == 4 and head[5] & 0x10 else 0)


def parse(data: bytes) -> Tag:
    """The tag that `data` starts with. Raises Unsupported."""
    version, flags = data[3], data[5]
    if version not in (2, 3, 4):
        raise Unsupported(f"has an ID3v2.{version} tag, which tagger cannot write")
    if flags & 0x80:
        raise Unsupported("its ID3 tag is unsynchronised, which tagger cannot rewrite losslessly")
    if flags & 0x40:
        raise Unsupported("its ID3 tag has an extended header (or v2.2 compression), "
                          "which tagger cannot rewrite losslessly")
    if flags & 0x10 and version == 4:
        raise Unsupported("its ID3 tag has a footer, which tagger cannot rewrite losslessly")
    end = min(len(data), 10 + BitPaddedInt(data[6:10]))
    head = 6 if version == 2 else 10
    tag, at = Tag(version, flags), 10
    if version == 4 and determine_bpi(data[10:end], Frames) is int:
        tag.bits = 8
    while at + head <= end and data[at] != 0:
        if version == 2:
            fid, fflags, size = data[at:at + 3], b"", int.from_bytes(data[at + 3:at + 6], "big")
        else:
            fid, fflags = data[at:at + 4], data[at + 8:at + 10]
            size = BitPaddedInt(data[at + 4:at + 8], bits=tag.bits if version == 4 else 8)
        if at + head + size > end:
            raise Unsupported("its ID3 tag is damaged (a frame runs past the tag's end)")
        tag.frames.append(Frame(fid.decode("latin-1"), bytes(fflags),
                                bytes(data[at + head:at + head + size]), version))
        at += head + size
    if any(data[at:end]):
        raise Unsupported("its ID3 tag has data after its frames, which tagger cannot keep")
    return tag


# -- where the tag is ---------------------------------------------------------------------------

@dataclass
class Place:
    """Where a file's ID3v2 tag is (start, size: the bytes it takes; size 0 if none)."""
    kind: str                           # "mp3", "wav" or "aiff"
    start: int = 0
    size: int = 0
    chunk: int | None = None            # a WAV/AIFF: the ID3 chunk's header offset
    name: bytes = b""                   # a WAV/AIFF: its id, kept as it is ("id3 " or "ID3 ")
    end: int = 0                        # a WAV/AIFF: where the container's chunks end
    unpadded: bool = False              # a WAV/AIFF: the last chunk is odd with no pad byte
    chunks: list = field(default_factory=list, repr=False)   # (id, offset, size) of each chunk


ID3_CHUNKS = {"wav": (b"ID3 ", b"id3 "), "aiff": (b"ID3 ",)}   # what mutagen reads, first first


def locate(fh, kind: str) -> Place:
    """The tag's place in an open file. Raises Unsupported for a damaged chunk list."""
    fh.seek(0, 2)
    length = fh.tell()
    fh.seek(0)
    head = fh.read(12)
    if kind == "mp3":
        if head[:3] == b"ID3" and len(head) >= 10:
            return Place(kind, 0, min(_size(head), length))
        return Place(kind)
    little = kind == "wav"
    container = int.from_bytes(head[4:8], "little" if little else "big")
    place = Place(kind, end=8 + container)
    if head[:4] != (b"RIFF" if little else b"FORM") or place.end > length:
        raise Unsupported(f"its {'RIFF' if little else 'FORM'} size does not match the file")
    at = 12
    while at + 8 <= place.end:
        fh.seek(at)
        cid, raw = fh.read(4), fh.read(4)
        size = int.from_bytes(raw, "little" if little else "big")
        if at + 8 + size > place.end:
            raise Unsupported(_damaged(place))
        place.chunks.append((cid, at, size))
        if len(place.chunks) > MAX_CHUNKS:     # zeros inside the size: 8 bytes a chunk
            raise Unsupported(f"has over {MAX_CHUNKS:,} chunks, more than audio files have "
                              f"(zeros or damage inside its {'RIFF' if little else 'FORM'} size)")
        at += 8 + size + size % 2
    place.unpadded = at == place.end + 1
    if at not in (place.end, place.end + 1):
        raise Unsupported(_damaged(place))
    ours = [c for c in place.chunks if c[0] in (b"ID3 ", b"id3 ")]
    if len(ours) > 1:
        raise Unsupported("has more than one ID3 chunk")
    if ours and ours[0][0] in ID3_CHUNKS[kind]:
        place.name, place.chunk, place.size = ours[0][0], ours[0][1], ours[0][2]
        place.start = place.chunk + 8
    elif ours:
        raise Unsupported(f"its ID3 chunk is named {ours[0][0]!r}, which readers miss")
    return place


def _damaged(place: Place) -> str:
    if any(size % 2 for _, _, size in place.chunks):
        return ("a chunk follows an odd-sized chunk without its pad byte, where readers miss it "
                "(older taggers wrote such files)")
    return "its chunk sizes do not match the file"


def read(fh, kind: str) -> tuple[Tag | None, Place]:
    """(the tag, or None, its place). Raises Unsupported."""
    place = locate(fh, kind)
    if not place.size:
        return None, place
    fh.seek(place.start)
    data = fh.read(place.size)
    if data[:3] != b"ID3" or len(data) < 10:
        raise Unsupported("its ID3 chunk holds no ID3 tag")
    return parse(data), place


def tag_size(needed: int, place: Place, keep: int | None = None) -> int:
    """How big the new tag is: `keep` (a restore's original size) or the old place if it
    fits, so that nothing after it moves; else what it needs and some padding."""
    for room in (keep, place.size):
        if room and needed <= room:
            return room
    return needed + NEW_TAG_PADDING


def write(fh, place: Place, data: bytes | None, unpadded: bool = False) -> None:
    """Put the tag bytes `data` at `place` (None removes the tag), in a file open for
    reading and writing. A WAV/AIFF gets an ID3 chunk at the end of its chunks, after the
    pad byte that an odd last chunk lacked; removing a chunk from a file that was
    `unpadded` before tagger padded it takes that pad byte away again."""
    if place.kind == "mp3":
        new = data or b""
        resize_bytes(fh, place.size, len(new), 0)
        fh.seek(0)
        fh.write(new)
        return
    order = "little" if place.kind == "wav" else "big"
    name = place.name or ID3_CHUNKS[place.kind][-1]
    chunk = b"" if data is None else name + len(data).to_bytes(4, order) + data + bytes(len(data) % 2)
    if place.chunk is None:                     # a new chunk at the end
        if data is None:
            return
        at, old, new = place.end, 0, b"\0" * place.unpadded + chunk
    else:
        at, old, new = place.chunk, min(8 + place.size + place.size % 2, place.end - place.chunk), chunk
        before = [c for c in place.chunks if c[1] < at]
        if data is None and unpadded and at + old == place.end and before and before[-1][2] % 2:
            at, old = at - 1, old + 1             # the pad byte that tagger added
    size = place.end - 8 + len(new) - old
    if size >= 1 << 32:
        raise Unsupported("is too close to 4 GiB for a tag: its 32-bit "
                          f"{'RIFF' if order == 'little' else 'FORM'} size cannot grow")
    resize_bytes(fh, old, len(new), at)
    fh.seek(at)
    fh.write(new)
    fh.seek(4)
    fh.write(size.to_bytes(4, order))


def _regions(place: Place) -> list[tuple[bytes, int, int | None]]:
    """(label, offset, size or None for "to the end") of every part of the file that is
    not the ID3 tag: an mp3's audio, APEv2 and ID3v1 after the tag; a WAV/AIFF's form type,
    every other chunk, and anything after its chunks."""
    if place.kind == "mp3":
        return [(b"", place.size, None)]
    chunks = [(cid + size.to_bytes(4, "big"), at + 8, size)
              for cid, at, size in place.chunks if at != place.chunk]
    return [(b"form", 8, 4)] + chunks + [(b"after", place.end + place.unpadded, None)]


def same_audio(fa, place_a: Place, fb, place_b: Place) -> bool:
    """True if two files (open, with their tags' places) are the same outside the tag."""
    ra, rb = _regions(place_a), _regions(place_b)
    return ([r[0] for r in ra] == [r[0] for r in rb]
            and all(same_bytes(fa, at_a, fb, at_b, size)
                    for (_, at_a, size), (_, at_b, _) in zip(ra, rb)))


def same_bytes(fa, at_a: int, fb, at_b: int, size: int | None = None) -> bool:
    """True if `size` bytes (None: up to the end) from at_a in fa equal those from at_b in fb."""
    fa.seek(at_a)
    fb.seek(at_b)
    left = size
    while left is None or left > 0:
        n = 1 << 20 if left is None else min(left, 1 << 20)
        block = fa.read(n)
        if block != fb.read(n):
            return False
        if len(block) < n:
            return True
        if left is not None:
            left -= n
    return True


def assemble(version: int, flags: int, body: bytes, size: int) -> bytes:
    """A tag from its frames' bytes, padded with zeros to `size` bytes if they fit."""
    body += bytes(max(0, size - 10 - len(body)))
    return b"ID3" + bytes([version, 0, flags]) + BitPaddedInt.to_str(len(body)) + body
