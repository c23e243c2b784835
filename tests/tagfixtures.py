"""Tagged fixture files of every format, made at test time with tagger.synth and mutagen,
and a snapshot of everything mutagen (and the demuxer) reads from a file, for comparisons."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import av
import mutagen
from mutagen.apev2 import APEv2, APENoHeaderError
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, COMM, ID3, TALB, TCON, TIT2, TPE1, TXXX, TYER, TDRC, delete as delete_id3
from mutagen.id3._id3v1 import find_id3v1
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

from tagger import synth

COVER = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4     # labelled PNG; nothing decodes it
BARE_MP3 = {"id3v2_version": "0", "write_xing": "0"}


def _audio(seconds: float = 1.0):
    return synth.tone(330.0, seconds, 22050, channels=2)


def _id3_frames(tags: ID3, genre: str | None = None, year_frame=TDRC) -> ID3:
    tags.add(TIT2(encoding=3, text=["Fixture ✓"]))
    tags.add(TPE1(encoding=3, text=["The Testers"]))
    tags.add(TALB(encoding=3, text=["Tiny Album"]))
    tags.add(year_frame(encoding=3, text=["2001"]))
    tags.add(COMM(encoding=3, lang="eng", desc="", text=["a comment"]))
    tags.add(TXXX(encoding=3, desc="REPLAYGAIN_TRACK_GAIN", text=["-6.50 dB"]))
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="front", data=COVER))
    if genre:
        tags.add(TCON(encoding=3, text=[genre]))
    return tags


def make_fixtures(folder: Path) -> dict[str, Path]:
    """Every fixture by name. Names say what each holds."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def enc(name: str, fmt: str | None = None, options: dict | None = None) -> Path:
        path = synth.encode(folder / name, _audio(), 22050, format=fmt, options=options)
        made[name] = path
        return path

    enc("plain.mp3")                                  # PyAV's own ID3v2.4 tag (TSSE)
    enc("bare.mp3", options=BARE_MP3)                 # no tag at all
    p = enc("v1only.mp3", options=BARE_MP3)           # ID3v1 only, genre Rock
    tags = ID3()
    tags.add(TIT2(encoding=0, text=["Only v1"]))
    tags.add(TPE1(encoding=0, text=["Old Tagger"]))
    tags.add(TCON(encoding=0, text=["Rock"]))
    tags.save(p, v1=2)
    delete_id3(p, delete_v1=False, delete_v2=True)
    p = enc("v23.mp3", options=BARE_MP3)              # ID3v2.3 with cover, ReplayGain, AC/DC genre
    _id3_frames(ID3(), "AC/DC", year_frame=TYER).save(p, v2_version=3)
    p = enc("ape.mp3", options=BARE_MP3)              # ID3v2.4 (no genre) + APEv2 + ID3v1
    tags = _id3_frames(ID3())
    tags.save(p, v1=0)
    ape = APEv2()
    ape["Title"] = "APE title"
    ape["REPLAYGAIN_TRACK_GAIN"] = "-3.00 dB"
    ape.save(p)
    v1 = ID3()
    v1.add(TIT2(encoding=0, text=["v1 title"]))
    with open(p, "ab") as fh:
        from mutagen.id3._id3v1 import MakeID3v1
        fh.write(MakeID3v1(v1))

    enc("plain.flac")
    p = enc("picture.flac")                           # comments, genre, ReplayGain, a picture
    f = FLAC(p)
    f["TITLE"] = "Fixture ✓"
    f["ARTIST"] = "The Testers"
    f["genre"] = "AC/DC"                              # lower-case key, in the middle
    f["REPLAYGAIN_TRACK_GAIN"] = "-6.50 dB"
    pic = Picture()
    pic.type, pic.mime, pic.desc, pic.data = 3, "image/png", "front", COVER
    f.add_picture(pic)
    f.save()
    p = enc("tagged.ogg")
    f = mutagen.File(p)
    f["TITLE"] = "Fixture"
    f["GENRE"] = ["Jazz", "Blues"]
    f["REPLAYGAIN_TRACK_GAIN"] = "-1.00 dB"
    f.save()
    enc("plain.ogg")
    p = enc("tagged.opus")
    f = mutagen.File(p)
    f["TITLE"] = "Fixture"
    f["R128_TRACK_GAIN"] = "-512"
    f.save()
    p = enc("cover.m4a")                              # AAC with cover art, genre, freeform
    f = MP4(p)
    f["©nam"] = ["Fixture ✓"]
    f["©ART"] = ["The Testers"]
    f["©gen"] = ["Jazz"]
    f["covr"] = [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_PNG)]
    f["----:com.apple.iTunes:replaygain_track_gain"] = [MP4FreeForm(b"-6.50 dB")]
    f.save()
    enc("alac.m4a", fmt="alac")
    enc("plain.wav")
    p = enc("tagged.wav")
    tags = mutagen.File(p)
    tags.add_tags()
    _id3_frames(tags.tags)
    tags.save()
    enc("plain.aiff")
    p = enc("v23.aiff")
    tags = mutagen.File(p)
    tags.add_tags()
    _id3_frames(tags.tags, "Rock", year_frame=TYER)
    tags.tags.update_to_v23()
    tags.save(v2_version=3)
    return made


def copied(files: dict[str, Path], folder: Path) -> Path:
    """A new `folder` holding a copy of every file, by its name in `files`."""
    folder.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    return folder


def payload(path: Path) -> str:
    """A hash of every audio packet the demuxer reads: the audio data, whatever the tags."""
    digest = hashlib.sha256()
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.audio[0]):
            if packet.size:
                digest.update(bytes(packet))
    return digest.hexdigest()


def _managed(key: str) -> bool:
    key = key.upper()
    return (key in ("TCON", "GENRE", "©GEN") or key.startswith("TAGGER_")
            or key.startswith("TXXX:TAGGER_") or key.startswith("----:COM.APPLE.ITUNES:TAGGER_"))


def snapshot(path: Path, managed: bool = True) -> dict:
    """Everything mutagen reads from the file (tags with their order where the format keeps
    one, tag versions, pictures, stream info), ID3v1 and APEv2 bytes for mp3, and the audio
    payload. managed=False leaves out genre and TAGGER_ fields, and the ID3 version (which
    a file that had no ID3v2 tag gains with one)."""
    f = mutagen.File(path)
    keep = (lambda key: True) if managed else (lambda key: not _managed(key))
    snap: dict = {"type": type(f).__name__, "info": f.info.pprint(), "payload": payload(path)}
    if f.tags is None:
        snap["tags"] = None if managed else []
    elif isinstance(f.tags, ID3):
        snap["tags"] = sorted((k, repr(v)) for k, v in f.tags.items() if keep(k))
        if managed:         # adding a tag to an untagged file gives it a version
            snap["id3_version"] = f.tags.version
    elif isinstance(f.tags, list):                     # Vorbis comments: order matters
        snap["tags"] = [(k, v) for k, v in f.tags if keep(k)]
    else:
        snap["tags"] = sorted((k, repr(v)) for k, v in f.tags.items() if keep(k))
    if isinstance(f, FLAC):
        snap["pictures"] = [(p.type, p.mime, p.desc, p.data) for p in f.pictures]
    if path.suffix == ".mp3":
        with open(path, "rb") as fh:
            _, offset = find_id3v1(fh)
            fh.seek(offset, 2)
            snap["id3v1"] = fh.read() if offset else b""
        try:
            snap["ape"] = sorted((k, str(v)) for k, v in APEv2(path).items())
        except APENoHeaderError:
            snap["ape"] = None
    return snap


def genres_of(path: Path) -> list[str]:
    """The genre values a mutagen-based reader (beets, Picard) sees."""
    f = mutagen.File(path)
    if isinstance(f.tags, ID3):
        return [g for frame in f.tags.getall("TCON") for g in frame.genres]
    if isinstance(f, MP4):
        return list(f.tags.get("©gen", []))
    return list(f.tags.get("genre", []))


# -- raw ID3v2 tags that mutagen cannot write: duplicates, junk and unknown frames ----------------

def _syncsafe(n: int) -> bytes:
    return bytes((n >> shift) & 0x7F for shift in (21, 14, 7, 0))


def id3_frame(fid: str, payload: bytes, version: int = 3, flags: int = 0) -> bytes:
    """One raw frame: a 6-byte header in v2.2, a 10-byte one (syncsafe size in v2.4) after."""
    if version == 2:
        return fid.encode() + len(payload).to_bytes(3, "big") + payload
    size = _syncsafe(len(payload)) if version == 4 else len(payload).to_bytes(4, "big")
    return fid.encode() + size + flags.to_bytes(2, "big") + payload


def id3_tag(frames: list[tuple[str, bytes]], version: int = 3, padding: int = 64) -> bytes:
    body = b"".join(id3_frame(fid, data, version) for fid, data in frames) + bytes(padding)
    return b"ID3" + bytes([version, 0, 0]) + _syncsafe(len(body)) + body


# An ID3v2.3 tag as other taggers leave them: two lyrics and two comments with the same
# language and description (mutagen keeps one of each), ReplayGain in RGAD (which v2.4 lacks),
# a TXXX with an encoding byte that does not exist (mutagen drops it), an old TAGGER_ field.
HOSTILE_V23 = [
    ("TIT2", b"\x00Hostile"),
    ("TCON", b"\x00Rock"),
    ("USLT", b"\x00eng\x00first lyrics"),
    ("RGAD", bytes.fromhex("00008000 2c1f 4c1f")),
    ("USLT", b"\x00eng\x00second lyrics"),
    ("COMM", b"\x00eng\x00A"),
    ("COMM", b"\x00eng\x00B"),
    ("TXXX", b"\x09BAD ENCODING\x00value"),
    ("TXXX", b"\x00TAGGER_MODEL\x00old"),
    ("TPE1", b"\x00Artist"),
]
# ID3v2.2 with frames mutagen does not know (XYZ) or drops when converting (CRM).
HOSTILE_V22 = [
    ("TT2", b"\x00Old title"),
    ("XYZ", b"unknown frame"),
    ("TCO", b"\x00(17)"),
    ("CRM", b"owner\x00explanation\x00secret"),
]


def riff(form: bytes, chunks: list[tuple[bytes, bytes]], pad: bool = True) -> bytes:
    """A RIFF file from its chunks; an odd chunk gets its pad byte unless it is the last
    one and pad is False (what some writers do)."""
    body = form
    for i, (cid, data) in enumerate(chunks):
        body += cid + len(data).to_bytes(4, "little") + data
        if len(data) % 2 and (pad or i < len(chunks) - 1):
            body += b"\x00"
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def odd_wav(path: Path, tag: bytes | None = None) -> Path:
    """8-bit mono PCM (generated by tagger.synth) with an odd number of samples and no pad
    byte after the data chunk, the last chunk; `tag` appends an ID3 chunk right after it,
    at an odd offset, as tagger 0.x and mutagen did."""
    import numpy as np
    samples = synth.tone(330.0, 22051 / 22050, 22050)[0]         # 22,051 one-byte samples
    pcm = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (22050).to_bytes(4, "little") \
        + (22050).to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    data = riff(b"WAVE", [(b"fmt ", fmt), (b"data", pcm)], pad=False)
    if tag:
        data += b"id3 " + len(tag).to_bytes(4, "little") + tag
        data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:]
    path.write_bytes(data)
    return path


def make_hostile(folder: Path) -> dict[str, Path]:
    """mp3 and wav files holding the tags above, and the unpadded WAV."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, frames, version in (("hostile23.mp3", HOSTILE_V23, 3),
                                  ("hostile22.mp3", HOSTILE_V22, 2)):
        p = synth.encode(folder / name, _audio(), 22050, options=BARE_MP3)
        p.write_bytes(id3_tag(frames, version) + p.read_bytes())
        made[name] = p
    p = synth.encode(folder / "hostile23.wav", _audio(), 22050)
    f = mutagen.File(p)
    f.add_tags()
    f.tags.add(TIT2(encoding=3, text=["placeholder"]))
    f.save()
    data = p.read_bytes()                   # swap the placeholder tag for the hostile one
    at = data.index(b"id3 ")
    tag = id3_tag(HOSTILE_V23, 3)
    size = int.from_bytes(data[at + 4:at + 8], "little")
    data = data[:at] + b"id3 " + len(tag).to_bytes(4, "little") + tag + data[at + 8 + size:]
    p.write_bytes(data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:])
    made["hostile23.wav"] = p
    made["odd.wav"] = odd_wav(folder / "odd.wav")
    return made


def raw_frames(data: bytes) -> tuple[int, list[tuple[bytes, bytes, bytes]], int]:
    """(version, [(frame id, flags, payload)], the tag's size) of the ID3v2 tag that `data`
    starts with (v2.2 to v2.4, no unsynchronisation)."""
    assert data[:3] == b"ID3", data[:10]
    version = data[3]
    size = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    frames, at = [], 10
    head = 6 if version == 2 else 10
    while at + head <= size and data[at] != 0:
        if version == 2:
            fid, flags, n = data[at:at + 3], b"", int.from_bytes(data[at + 3:at + 6], "big")
        else:
            fid, flags = data[at:at + 4], data[at + 8:at + 10]
            n = (sum(b << (7 * (3 - i)) for i, b in enumerate(data[at + 4:at + 8])) if version == 4
                 else int.from_bytes(data[at + 4:at + 8], "big"))
        frames.append((fid, flags, data[at + head:at + head + n]))
        at += head + n
    return version, frames, size


def wav_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a RIFF file, (id, data), walking with pad bytes."""
    out, at = [], 12
    while at + 8 <= len(data):
        cid, n = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        out.append((cid, data[at + 8:at + 8 + n]))
        at += 8 + n + n % 2
    return out
