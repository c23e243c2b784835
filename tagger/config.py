"""The user's config file: the words written for each genre, and defaults for the options.

    # ~/.config/tagger/config.toml (or --config FILE, or $TAGGER_CONFIG)
    [genres]
    hiphop = "Hip Hop"
    rock = ["Rock", "Rock & Roll"]      # several words: several values of the genre field

    [defaults]
    db = "~/Music/.tagger.db"           # a relative path is relative to this file's folder
    model = "fast"
    workers = 4
    min_confidence = 0.4                # write-tags
    top_k = 2                           # write-tags

A flag beats an environment variable ($TAGGER_DB, $TAGGER_MODEL), which beats this file,
which beats the built-in default. No file at the default place means the built-in defaults;
a file named by --config or $TAGGER_CONFIG must exist. Read with the standard library's
tomllib; any mistake is a UserError naming the file and its line.

Other front ends (the beets plugin, the report) take the genre words from here:
`tagger.config.load().genre_words("hiphop")` -> ["Hip Hop"].
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tagger.basics import DB_ENV_VAR
from tagger.errors import UserError
from tagger.genres import DISPLAY_NAMES, GENRES
from tagger.modelfile import ENV_VAR as MODEL_ENV_VAR, SHIPPED

ENV_VAR = "TAGGER_CONFIG"
FILE_NAME = "config.toml"
SETTINGS = ("db", "model", "workers", "min_confidence", "top_k")
SETTING_ENV_VARS = {"db": DB_ENV_VAR, "model": MODEL_ENV_VAR}
# the commands each setting is the default of (None: every command with that option);
# query's --min-confidence means something else (a filter, with --genre)
COMMANDS: dict[str, tuple[str, ...] | None] = {
    "db": None, "model": None, "workers": None,
    "min_confidence": ("write-tags",), "top_k": ("write-tags",),
}
SEE = "see the README's Configuration"


def default_path() -> Path:
    """config.toml in the user's config folder (~/.config/tagger on Linux)."""
    import platformdirs
    return Path(platformdirs.user_config_dir("tagger")) / FILE_NAME


@dataclass(frozen=True)
class Setting:
    """An option's effective value and where it came from: "--db" (a flag), "$TAGGER_DB"
    (an environment variable), the config file's path, or "default"."""
    value: Any
    source: str


@dataclass(frozen=True)
class Config:
    """What one config file says (nothing, when there is none). path: the file read or
    looked for; origin: who named it ("--config", "$TAGGER_CONFIG", "default")."""
    path: Path
    origin: str = "default"
    found: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)       # only what the file sets
    genres: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def genre_words(self, genre: str) -> list[str]:
        """The words written for a genre key ('hiphop'): the user's, else tagger's display
        name ('Hip-Hop'); a key tagger does not know stays as it is."""
        return list(self.genres.get(genre) or [DISPLAY_NAMES.get(genre, genre)])

    @property
    def genre_names(self) -> dict[str, list[str]]:
        """Every genre key -> its words (see genre_words): what write_tags' TagOptions takes."""
        return {genre: self.genre_words(genre) for genre in GENRES}

    def settings(self, builtin: Mapping[str, Any],
                 environ: Mapping[str, str] = os.environ) -> dict[str, Setting]:
        """Each setting's value as a command without the flag gets it: the environment
        variable, else this file, else builtin[name]."""
        out = {}
        for name in SETTINGS:
            var = SETTING_ENV_VARS.get(name)
            if var and environ.get(var):
                out[name] = Setting(environ[var], f"${var}")
            elif name in self.defaults:
                out[name] = Setting(self.defaults[name], str(self.path))
            else:
                out[name] = Setting(builtin[name], "default")
        return out

    def default_map(self, commands: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Any]]:
        """Click's default_map: {command: {option: value}} for the commands (name -> its
        parameters' names) that take each setting the file gives. Click puts it below the
        command line and the option's environment variable, above the built-in default."""
        out: dict[str, dict[str, Any]] = {}
        for command, params in commands.items():
            params = set(params)
            given = {name: value for name, value in self.defaults.items() if name in params
                     and (COMMANDS[name] is None or command in COMMANDS[name])}
            if given:
                out[command] = given
        return out


def load(path: str | os.PathLike | None = None, *, origin: str | None = None,
         required: bool | None = None) -> Config:
    """The config file at path (from --config), else at $TAGGER_CONFIG, else at the default
    place (see default_path), read and checked. A missing file is an error unless it is the
    default one (required=False allows it anywhere). Raises UserError "<path>: line N: ...".
    """
    if path is not None:
        origin = origin or "--config"
    elif os.environ.get(ENV_VAR):
        path, origin = os.environ[ENV_VAR], origin or f"${ENV_VAR}"
    else:
        path, origin = default_path(), origin or "default"
        required = bool(required)
    path = Path(path).expanduser()
    required = True if required is None else required
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise UserError(f"no such file; write it ({SEE}) or leave out {origin}",
                            str(path)) from None
        return Config(path, origin)
    except OSError as exc:
        raise UserError(f"cannot read the config file ({exc.strerror or exc})", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"line {line}: not UTF-8 text; save the file as UTF-8", str(path)) from None
    document = _parse(text, path)
    check = _Checker(text, path)
    defaults, genres = check.document(document)
    return Config(path, origin, True, defaults, genres)


def genre_words(genre: str, config: Config | None = None) -> list[str]:
    """The words written for a genre key, from `config` or else the user's config file."""
    return (config or load()).genre_words(genre)


def _parse(text: str, path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                   # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if where:
            message = message[:where.start()]
            line, column = where.groups()
        else:                               # "(at end of document)" or none
            message = re.sub(r"\s*\(at end of document\)$", "", message)
            line, column = str(text.count("\n") + 1), None
        at = f", column {column}" if column else ""
        raise UserError(f"line {line}: not valid TOML: {message}{at}; fix the syntax ({SEE}, "
                        "or https://toml.io)", str(path)) from None


@dataclass
class _Checker:
    """Checks a parsed file; each mistake is a UserError with its line where it can be found."""
    text: str
    path: Path

    def fail(self, reason: str, table: str | None, key: str) -> UserError:
        line = _line_of(self.text, table, key)
        return UserError(f"line {line}: {reason}" if line else reason, str(self.path))

    def document(self, document: dict) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
        for name, value in document.items():
            if name not in ("genres", "defaults"):
                what = f"table [{name}]" if isinstance(value, dict) else f"key {name!r}"
                raise self.fail(f"unknown {what}; the file takes a [genres] and a [defaults] "
                                f"table ({SEE})", None, name)
            if not isinstance(value, dict):
                raise self.fail(f"{name} must be a table: a line [{name}], then its keys "
                                f"({SEE})", None, name)
        return (self.defaults(document.get("defaults", {})),
                self.genres(document.get("genres", {})))

    def defaults(self, table: dict) -> dict[str, Any]:
        out = {}
        for name, value in table.items():
            if name not in SETTINGS:
                raise self.fail(f"unknown key {name!r} in [defaults]; use {', '.join(SETTINGS)}",
                                "defaults", name)
            out[name] = getattr(self, name)(value, name)
        return out

    def _path(self, value: Any, name: str, example: str) -> str:
        if not isinstance(value, str):
            raise self.fail(f"{name} must be a path in quotes, such as {name} = \"{example}\"",
                            "defaults", name)
        if not value.strip():
            raise self.fail(f"{name}: an empty path; name a file, or leave the line out",
                            "defaults", name)
        return str(self.path.parent / Path(value).expanduser())

    def db(self, value: Any, name: str) -> str:
        return self._path(value, name, "~/Music/tagger.db")

    def model(self, value: Any, name: str) -> str:
        return value if value in SHIPPED else self._path(value, name, "fast")

    def _whole(self, value: Any, name: str, least: int, example: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise self.fail(f"{name} must be a whole number of at least {least}, such as "
                            f"{name} = {example}", "defaults", name)
        return value

    def workers(self, value: Any, name: str) -> int:
        return self._whole(value, name, 0, 4)

    def top_k(self, value: Any, name: str) -> int:
        return self._whole(value, name, 1, 2)

    def min_confidence(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise self.fail(f"{name} must be a number from 0 to 1, such as {name} = 0.5",
                            "defaults", name)
        return float(value)

    def genres(self, table: dict) -> dict[str, tuple[str, ...]]:
        out = {}
        for genre, value in table.items():
            if genre not in GENRES:
                raise self.fail(f"unknown genre {genre!r} in [genres]; the keys are tagger's "
                                f"genres: {', '.join(GENRES)}", "genres", genre)
            words = [value] if isinstance(value, str) else value
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise self.fail(f"{genre} must be a name or a list of names, such as {genre} = "
                                f"[\"{DISPLAY_NAMES[genre]}\", \"...\"]", "genres", genre)
            if not words:
                raise self.fail(f"{genre}: an empty list; give a name, or leave the line out "
                                f"for tagger's own ({DISPLAY_NAMES[genre]})", "genres", genre)
            words = [w.strip() for w in words]
            if not all(words):
                raise self.fail(f"{genre}: an empty name; write the name, or leave the line "
                                f"out for tagger's own ({DISPLAY_NAMES[genre]})", "genres", genre)
            if any(ch < " " or ch == "\x7f" for w in words for ch in w):
                raise self.fail(f"{genre}: a name with a control character (a line break or "
                                "a tab); tags cannot show it", "genres", genre)
            out[genre] = tuple(dict.fromkeys(words))
        return out


_HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


def _line_of(text: str, table: str | None, key: str) -> int | None:
    """The line (from 1) where `key` is set in `table` (None: the top level, where a table's
    own [header] counts), or None if the file sets it in another way (a dotted key, an
    inline table)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            current = header.group(1).strip("\"'")
            if table is None and current == key:
                return number
            continue
        if (m := _KEY.match(line)) and current == table:
            if next(g for g in m.groups() if g is not None) == key:
                return number
    return None
