"""The genre vocabulary: GTZAN's ten genres and the names written into tags."""

from __future__ import annotations

from tagger.errors import UserError

GENRES: tuple[str, ...] = (
    "blues", "classical", "country", "disco", "hiphop",
    "jazz", "metal", "pop", "reggae", "rock",
)

DISPLAY_NAMES: dict[str, str] = {
    "blues": "Blues", "classical": "Classical", "country": "Country", "disco": "Disco",
    "hiphop": "Hip-Hop", "jazz": "Jazz", "metal": "Metal", "pop": "Pop",
    "reggae": "Reggae", "rock": "Rock",
}


def normalise_genre(name: str, genres: tuple[str, ...] | list[str] = GENRES) -> str | None:
    """Map a user-typed genre ('Hip-Hop', 'hip hop', 'JAZZ') to its key, or None if unknown."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return key if key in genres else None


def genre_key(name: str | None) -> str | None:
    """The key of a genre the user named (None stays None); an unknown one is an error."""
    if name is None:
        return None
    key = normalise_genre(name)
    if key is None:
        raise UserError(f"unknown genre {name!r}; choose one of {', '.join(GENRES)}")
    return key
