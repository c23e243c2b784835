"""Is a copy's audio the original's? Exact comparisons that decode nothing.

mutagen moves audio when a tag grows (an Ogg stream's pages are renumbered, an MP4's chunk
offsets shifted), so comparing bytes at the same offsets would fail; demuxing every packet
through PyAV works but costs several times the write. Each format's audio is compared
where it is, by its bytes; only a fragmented MP4 goes through the demuxer.
"""

from __future__ import annotations

import hashlib

from mutagen.flac import FLAC
from mutagen.mp4._atom import Atoms           # the atom tree, to compare all but the tags
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis

from tagger import id3raw
from tagger.errors import TagError


def same_audio(original: str, copy_: str, kind: type) -> bool:
    """True if a copy that mutagen saved (`kind`: its file type) has the original's audio.
    FLAC: the bytes after the metadata blocks; Ogg: every page after the header pages
    (but its sequence number and checksum, which a longer comment header changes) and the
    header packets but the comments; MP4: the mdat bytes and the sample tables (see
    _mp4_same_audio). Raises TagError if the original's pages or blocks are damaged."""
    if kind is FLAC:
        with open(original, "rb") as fa, open(copy_, "rb") as fb:
            return id3raw.same_bytes(fa, _flac_audio(fa), fb, _flac_audio(fb))
    if kind in (OggVorbis, OggOpus):
        headers = 3 if kind is OggVorbis else 2               # identification, comments, setup
        return _ogg_audio(original, headers) == _ogg_audio(copy_, headers)
    with open(original, "rb") as fa, open(copy_, "rb") as fb:
        same = _mp4_same_audio(fa, fb)
    return _packets(original) == _packets(copy_) if same is None else same


def _mp4_same_audio(fa, fb) -> bool | None:
    """MP4 without demuxing: every mdat's bytes, and every atom but the tags (moov.udta.meta)
    and free space, the chunk offset tables (stco, co64) shifted by as much as their mdat
    moved. None for a fragmented file (moof), which needs the demuxer."""
    a, b = Atoms(fa), Atoms(fb)
    if any(atom.name == b"moof" for atom in a.atoms + b.atoms):
        return None
    mdat_a = [m for m in a.atoms if m.name == b"mdat"]
    mdat_b = [m for m in b.atoms if m.name == b"mdat"]
    if [m.length for m in mdat_a] != [m.length for m in mdat_b] or not all(
            id3raw.same_bytes(fa, x.offset, fb, y.offset, x.length) for x, y in zip(mdat_a, mdat_b)):
        return False

    def shift(offset: int) -> int:
        for x, y in zip(mdat_a, mdat_b):
            if x.offset <= offset < x.offset + x.length:
                return offset - x.offset + y.offset
        return offset

    def leaves(fh, atoms, path=b"", moved=lambda o: o) -> list:
        out = []
        for atom in atoms:
            where = path + b"." + atom.name
            if atom.name in (b"free", b"skip", b"mdat") or where == b".moov.udta.meta":
                continue
            if atom.children is not None:
                out += leaves(fh, atom.children, where, moved)
                continue
            data = atom.read(fh)[1]
            if atom.name in (b"stco", b"co64"):
                width = 4 if atom.name == b"stco" else 8
                data = data[:8] + b"".join(
                    moved(int.from_bytes(data[i:i + width], "big")).to_bytes(width, "big")
                    for i in range(8, len(data), width))
            out.append((where, data))
        return out

    return leaves(fa, a.atoms, moved=shift) == leaves(fb, b.atoms)


def _flac_audio(fh) -> int:
    """Where a FLAC file's frames start (after an ID3v2 tag, "fLaC" and the metadata blocks)."""
    fh.seek(0)
    head = fh.read(10)
    at = 10 + id3raw.BitPaddedInt(head[6:10]) if head[:3] == b"ID3" else 0
    fh.seek(at + 4)
    last = 0
    while not last:
        block = fh.read(4)
        if len(block) < 4:
            raise TagError("its FLAC metadata blocks are damaged; left unchanged")
        last = block[0] & 0x80
        fh.seek(int.from_bytes(block[1:], "big"), 1)
    return fh.tell()


def _ogg_audio(path: str, headers: int) -> tuple[list, list, dict]:
    """Of the first Vorbis or Opus stream, which mutagen tags: (the first `headers` packets
    but the comments, every later page but its sequence number and checksum); and every
    page of the other streams that the file multiplexes with it, by serial number."""
    with open(path, "rb") as fh:
        data = fh.read()
    streams: dict[bytes, list] = {}
    at = 0
    while at + 27 <= len(data) and data[at:at + 4] == b"OggS":
        n = data[at + 26]
        table = data[at + 27:at + 27 + n]
        body = data[at + 27 + n:at + 27 + n + sum(table)]
        streams.setdefault(data[at + 14:at + 18], []).append(
            (data[at + 4:at + 18], table, body))             # version, flags, granule, serial
        at += 27 + n + sum(table)
    if at != len(data):
        raise TagError("its Ogg pages are damaged; left unchanged")
    magic = b"\x01vorbis" if headers == 3 else b"OpusHead"
    serial = next((k for k, v in streams.items() if v[0][2].startswith(magic)), None)
    pages = streams.pop(serial, [])
    packets, current, first = [], b"", 0
    while len(packets) < headers and first < len(pages):
        _, table, body = pages[first]
        pos = 0
        for lace in table:
            current += body[pos:pos + lace]
            pos += lace
            if lace < 255:
                packets.append(current)
                current = b""
        first += 1
    return packets[:1] + packets[2:] + [current], pages[first:], streams


def _packets(path: str) -> bytes:
    """A hash of the demuxed audio packets (no decoding)."""
    import av           # here, not above: reading tags (query's m3u) must not load PyAV
    digest = hashlib.blake2b()
    try:
        with av.open(path) as container:
            for packet in container.demux(container.streams.audio[0]):
                digest.update(bytes(packet))
    except (av.error.FFmpegError, IndexError) as exc:
        raise TagError(f"cannot read the audio to check it ({exc}); left unchanged") from None
    return digest.digest()
