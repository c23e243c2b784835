"""Tagged fixture files of every format, made at test time with tagger.synth and mutagen,
and a snapshot of everything mutagen (and the demuxer) reads from a file, for comparisons."""

from __future__ import annotations

import hashlib
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
