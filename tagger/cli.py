"""The command line: a thin layer over scan, index and output.

Errors of the project's own kinds become one line, "Error: ...", and exit code 1; usage
errors exit 2 (Typer's own). torch is imported only by commands that run the model.
"""

from __future__ import annotations

import codecs
import copy
import errno
import functools
import inspect
import os
import re
import signal
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                           SpinnerColumn, TextColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from tagger import __version__, output
from tagger.basics import DB_ENV_VAR, DEVICES, available_cores, default_db_path
from tagger.config import ENV_VAR as CONFIG_ENV_VAR
from tagger.errors import DatabaseError, OutputError, TaggerError, UsageError, UserError
from tagger.genres import GENRES, genre_key
from tagger.recipe import CACHE_ENV_VAR, UNCERTAIN_BELOW, TrainSettings
from tagger.modelfile import ENV_VAR as MODEL_ENV_VAR, resolve_model


class PathArgument(typer.core.TyperArgument):
    """An argument shown as its METAVAR (PATH... when it takes several) in the usage line and
    the help, not as typer 0.29 shows it ({paths}..., <list[Path]>)."""

    def _usage_display_name(self) -> str:
        return self.metavar if self.required else f"[{self.metavar}]"

    def display_type_rich(self, ctx) -> None:
        return None


def plain_help(params) -> None:
    """Flags take no value: no "<bool>" beside them (typer 0.29 shows one); arguments become
    PathArguments, named PATH... when they take several values, else by their name."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        elif isinstance(p, typer.core.TyperArgument) and not isinstance(p, PathArgument):
            p.__class__ = PathArgument
            p.metavar = p.metavar or ("PATH..." if p.nargs != 1 else p.name.upper())


class Group(typer.core.TyperGroup):
    """tagger's commands, with plain_help, and usage errors without the "Value error, " that
    typer 0.29's pydantic puts before the message of a bad choice."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        plain_help(params)
        return params

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            plain_help([*command.params, command.get_help_option(ctx)])
            if command.help:        # the docstring's line breaks are not the terminal's
                command.help = re.sub(r"(?<=\S)\n(?=\S)", " ", inspect.cleandoc(command.help))
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:       # shown by typer as "Invalid value for ..."
            exc.message = exc.message.removeprefix("Value error, ")
            raise


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class Verbosity:
    """What the command being run was asked to say: its --quiet and --verbose (every command
    takes both; the root callback resets them for each command line)."""
    quiet: bool = False
    verbose: bool = False


shown = Verbosity()


@dataclass
class Settings:
    """The config file the root command read for this command line (tagger.config.Config)."""
    config: object = None


settings = Settings()
LISTINGS = {"query", "show", "stats", "config"}    # whose stdout is what was asked for, quiet or not


def use_consoles(command: str | None = None) -> None:
    """out and err as `shown` says: quiet, no progress (as if stderr were not a terminal)
    and, but for the listings, nothing on stdout; errors go to stderr all the same. Where
    stdout is not a terminal, nothing printed there is wrapped or cut at the terminal's
    width (which rich takes from stderr when stdout is a pipe)."""
    global out, err
    out = Console(soft_wrap=True, quiet=shown.quiet and command not in LISTINGS)
    if not out.is_terminal:         # a pipe or a file: a table row is one line, however long
        out.width = output.UNWRAPPED
    err = Console(stderr=True, soft_wrap=True, force_terminal=False if shown.quiet else None)


def _verbosity(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> None:
    if not value:
        return
    setattr(shown, param.name, True)
    if shown.quiet and shown.verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other; pass one of them",
                                 ctx=ctx)
    use_consoles(ctx.command.name)


def _verbosity_template(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", expose_value=False, callback=_verbosity,
                     help="No progress and no summary: only errors (the exit code says how "
                          "it went).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", expose_value=False, callback=_verbosity,
                       help="Say more where there is more to say (this command has nothing "
                            "more yet).")] = False,
) -> None:
    """The --quiet and --verbose options, as typer builds them (see VerbosityGroup)."""


QUIET_HELP = {
    **{c: "No progress or notes: only the listing and errors." for c in LISTINGS},
    "scan": "No progress and no summary: only the files that failed, and errors.",
    **{c: "No progress, summary or dry-run listing: only the files skipped for a reason, and "
          "errors." for c in ("write-tags", "restore-tags")},
}
VERBOSE_HELP = {
    "scan": "Also print each track's genre and probability (or why it has none) as it is "
            "stored.",
    "query": "Also say on stderr how many tracks are listed.",
    "write-tags": "Also say what happened to every file left as it was (unchanged, below the "
                  "threshold, uncertain, not classified).",
    "restore-tags": "Also say what happened to every file left as it was.",
    "check": "List every problem the integrity check finds (at most 100), not only the first.",
}


@functools.cache
def _verbosity_options() -> list:
    options = typer.Typer(add_completion=False)
    options.command()(_verbosity_template)
    return typer.main.get_command(options).params


class VerbosityGroup(Group):
    """Gives every command --quiet and --verbose, without a parameter in each function."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        template = _verbosity_options()
        for name, command in self.commands.items():
            for option in map(copy.copy, template):
                option.help = {"quiet": QUIET_HELP, "verbose": VERBOSE_HELP}[option.name].get(
                    name, option.help)
                command.params.append(option)


app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", cls=VerbosityGroup,
                  help="Genre probabilities for a local music library, from the audio itself. "
                       "Every command takes --quiet (only errors) and --verbose (more detail).")


Device = Enum("Device", {name: name for name in DEVICES}, type=str)


class ListFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    m3u = "m3u"


class ShowFormat(str, Enum):
    table = "table"
    json = "json"


DbOption = Annotated[Path, typer.Option("--db", envvar=DB_ENV_VAR, show_default=False,
                     help=f"The index file. \\[default: ${DB_ENV_VAR}, else index.db in the "
                          "user's data folder; tagger stats prints its path]")]
ModelOption = Annotated[Optional[Path], typer.Option(
    "--model", envvar=MODEL_ENV_VAR, show_default=False,
    help=f"A tagger checkpoint file, or 'fast' for the shipped fast model (see the README). "
         f"\\[default: ${MODEL_ENV_VAR}, else the shipped default model]")]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where the model runs.")]


def cli_errors(command):
    """Turn the project's own exceptions into one 'Error: ...' line and exit code 1, and a
    Ctrl-C (in a command with no StopRequest: those stop_now) into exit code 130. Failed
    output is main()'s."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OutputError:
            raise
        except TaggerError as exc:
            err.print(f"[red]Error:[/red] {escape(output.display(str(exc) + _db_from_env(exc)))}",
                      highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:           # a second Ctrl-C: stopped at once, as 130 says
            err.print("Stopped.")
            raise typer.Exit(130) from None
    return wrapper


def _db_from_env(exc: TaggerError) -> str:
    """Says where an index path that the user may not have typed came from."""
    if isinstance(exc, DatabaseError) and exc.path and exc.path == os.environ.get(DB_ENV_VAR):
        return f" (the path is ${DB_ENV_VAR})"
    return ""


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks the scan to stop decoding and store what it has
    decoded; a second Ctrl-C stops at once, from then until tagger exits (see stop_now)."""

    message = "Stopping: storing what is already decoded... (Ctrl-C again to stop now)"

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            stop_now()
        self.requested = True
        err.print(self.message)

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if self.requested:          # while the command winds down, a Ctrl-C still stops it
            signal.signal(signal.SIGINT, self._handle)     # at once (main() then lets SIGINT
                                                           # end the process)


def stop_now() -> NoReturn:
    """A second Ctrl-C: "Stopped." and exit code 130, from the signal handler itself. Not a
    KeyboardInterrupt: the handler runs wherever the main thread is, a multiprocessing
    finaliser included (the pool's, as it closes), where an exception cannot propagate and
    Python prints it as a traceback and goes on. What the open transaction wrote is lost
    (SQLite keeps the index as it was, as after a kill); a copy that write-tags was editing
    is removed by the next write-tags or restore-tags."""
    with suppress(OSError):
        # not through rich: the progress bar's thread may hold its lock
        os.write(2, (b"\x1b[?25h\n" if err.is_terminal else b"") + b"Stopped.\n")
    os._exit(130)


class SpeedColumn(ProgressColumn):
    """Tracks a second since the task started, as the scan's summary counts them (rich's own
    speed, from the last few updates, is absurd when many come at once); nothing for the
    first second."""
    def render(self, task) -> Text:
        rate = self.rate(task)
        return Text(f"{rate:.1f} tracks/s" if rate else "", style="cyan")

    @staticmethod
    def rate(task) -> float:
        elapsed = task.elapsed or 0.0
        return task.completed / elapsed if elapsed >= 1.0 else 0.0


class LeftColumn(ProgressColumn):
    """The time left at SpeedColumn's rate (rich's own follows its absurd speed)."""
    def render(self, task) -> Text:
        rate = SpeedColumn.rate(task)
        if not rate or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = round((task.total - task.completed) / rate)
        return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}",
                    style="progress.remaining")


@app.command()
@cli_errors
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files) to scan.", show_default=False)],
    db: DbOption = default_db_path(),
    model: ModelOption = None,
    force: Annotated[bool, typer.Option("--force", help="Re-classify unchanged tracks too.")] = False,
    prune: Annotated[bool, typer.Option(
        "--prune/--no-prune", help="Remove from the index the tracks under PATHS that are no "
                                   "longer on disk (see tagger prune).")] = True,
    exclude: Annotated[list[str], typer.Option("--exclude", metavar="GLOB",
                       help="Skip files or folders matching GLOB (name or full path); repeatable.")] = [],
    workers: Annotated[int, typer.Option("--workers", min=0,
                       help="Decoder processes (0 decodes in this process).")] = available_cores(),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tracks per model batch.")] = 16,
    device: DeviceOption = Device.auto,
) -> None:
    """Classify every audio file under PATHS into the index.

    Unchanged files (same path, size, modification time and model) are skipped without being
    opened; a moved or renamed file keeps its prediction, and a touched one (same content)
    is unchanged. Files are stored by their real path (symlinks resolved). Unreadable files
    are recorded as failures and the scan goes on.

    Example: [bold]tagger scan ~/Music --exclude '*/Podcasts/*'[/bold]
    """
    from tagger import api
    progress = Progress(SpinnerColumn(), TextColumn("Scanning"), BarColumn(), MofNCompleteColumn(),
                        SpeedColumn(), LeftColumn(), console=err, disable=not err.is_terminal)
    task = progress.add_task("scan", start=False)
    started = time.monotonic()
    with ExitStack() as stack:
        if err.is_terminal:
            stack.enter_context(err.status("Looking for new and changed files..."))
        stop = StopRequest()

        def on_start(total: int) -> None:
            nonlocal started                # the summary's rate is the bar's: from here
            stack.close()                   # the "Looking..." line
            if total:
                started = time.monotonic()
                progress.update(task, total=total)
                progress.start_task(task)
                stack.enter_context(progress)
                stack.enter_context(stop)

        def on_result(result) -> None:
            if result.status in ("failed", "error"):
                progress.console.print(f"{output.display(result.path)}: {result.error}",
                                       highlight=False, markup=False)
            elif shown.verbose:             # what each track got, as it is stored
                said = (f"{output.genre_name(result.genre)} {result.confidence:.0%}"
                        + (" (uncertain)" if result.uncertain else "")
                        if result.status == "ok" else result.error)
                progress.console.print(f"{output.display(result.path)}: {said}",
                                       highlight=False, markup=False)

        stats = api.scan(paths, db, model, exclude=exclude, force=force, prune=prune, workers=workers,
                         batch_size=batch_size, device=device.value, on_start=on_start,
                         on_result=on_result, should_stop=stop,
                         on_decoded=lambda path: progress.advance(task))
    print_summary(stats, time.monotonic() - started, db)
    if stats.interrupted:
        again = "the same command without --force" if force else "the same command"
        err.print(f"Interrupted: run {again} again to finish; nothing is classified twice.",
                  highlight=False)
        raise typer.Exit(130)


def print_summary(stats, seconds: float, db: Path) -> None:
    done = stats.classified + stats.failed + stats.silent
    rate = f" ({done / seconds:.1f} tracks/s)" if done and seconds > 0 else ""
    if done or stats.interrupted:
        out.print(f"Scanned {done} tracks in {seconds:.1f} s{rate}: {stats.classified} classified, "
                  f"{stats.unchanged} unchanged, {stats.failed} failed, {stats.silent} silent.",
                  highlight=False)
    else:
        out.print(f"Nothing to do: {stats.unchanged} unchanged.", highlight=False)
    if stats.failed or stats.silent:
        out.print("List them with: tagger query --failed", highlight=False)
    if stats.moved:
        out.print(f"{stats.moved} moved or renamed: kept their predictions.", highlight=False)
    if stats.removed:
        out.print(f"{stats.removed} removed: no longer on disk.", highlight=False)
    for root in stats.not_pruned:
        out.print(f"Not pruned: no audio files found under {output.display(root)} (a disk not "
                  f"mounted?); its tracks stay in the index until `tagger prune` is run on it.",
                  highlight=False, markup=False)
    if stats.uncertain_below and stats.classified:
        out.print(f"{stats.uncertain} uncertain (top genre below {stats.uncertain_below:.0%})"
                  + (". List them with: tagger query --uncertain" if stats.uncertain else "."),
                  highlight=False)
    print_genres(stats.genres.most_common(), stats.uncertain)
    out.print(f"Index: {db}", highlight=False)


def print_genres(genres, uncertain: int) -> None:
    """(genre, tracks) pairs, most first, and the uncertain ones, with bars."""
    counts = [(output.genre_name(genre), n) for genre, n in genres]
    counts += [("(uncertain)", uncertain)] if uncertain else []
    if counts:
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("Genre")
        table.add_column("Tracks", justify="right")
        table.add_column("")
        top, bar = max(n for _, n in counts), output.glyph(out, "█", "#")
        for name, n in counts:
            table.add_row(escape(name), str(n), bar * max(1, round(20 * n / top)))
        out.print(table)


@app.command("cluster-scan")
@cli_errors
def cluster_scan(
    sources: Annotated[list[str], typer.Argument(
        metavar="SOURCE...", show_default=False,
        help="Folders, audio files, s3:// or gs:// prefixes, or manifests: a Parquet file with a "
             "path column, or a text file of paths or URIs (one a line).")],
    out_dir: Annotated[str, typer.Option("--out", metavar="DIR|URI", show_default=False,
                                         help="Where the results go (Parquet files): a folder, "
                                              "or an s3:// or gs:// prefix.")],
    model: ModelOption = None,
    exclude: Annotated[list[str], typer.Option("--exclude", metavar="GLOB",
                       help="Skip files or folders matching GLOB (name or full path); repeatable.")] = [],
    force: Annotated[bool, typer.Option("--force", help="Classify every file again, even those "
                                        "--out has current results for.")] = False,
    decoders: Annotated[Optional[int], typer.Option(
        "--decoders", min=1, show_default=False,
        help="Decode actors, one CPU each. \\[default: the CPUs the model actors leave]")] = None,
    models: Annotated[int, typer.Option("--models", min=1,
                                        help="Model actors (one GPU each, where there are GPUs).")] = 1,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, show_default=False,
        help="Tracks per model batch. \\[default: 64 with GPUs, else 16]")] = None,
    device: DeviceOption = Device.auto,
) -> None:
    """Classify audio files on Ray Data, into Parquet files under --out.

    The same decoding and model as scan, on the Ray cluster that ray.init() finds (else a
    local one); needs the \\[cluster] extra. Only files that are new, changed or scored by
    another model since the results already under --out are sent. Results are written as
    they come: after Ctrl-C, run the same command again to finish. Fold them into the
    index with tagger merge.

    Example: [bold]tagger cluster-scan s3://label/masters --out s3://label/tagger && tagger merge s3://label/tagger[/bold]
    """
    from tagger import cluster
    started = time.monotonic()
    stats = cluster.ClusterStats()

    def on_start(total: int) -> None:
        if not total:
            return
        where = f"{stats.cpus:g} CPUs" + (f" and {stats.gpus} GPUs" if stats.gpus else "")
        err.print(f"{total} files to classify on {where}: {stats.decoders} decode "
                  f"actor{'s' if stats.decoders > 1 else ''}, "
                  f"{stats.models} model actor{'s' if stats.models > 1 else ''}"
                  + (f"; {stats.unchanged} unchanged since the results under --out."
                     if stats.unchanged else "."), highlight=False)
        if stats.crowded:
            err.print(f"Warning: {stats.decoders} decode actors and {stats.models} model "
                      f"actor{'s' if stats.models > 1 else ''} ask for more than Ray's "
                      f"{stats.cpus:g} CPUs: the model may wait until decoding ends, with every "
                      "decoded track held in Ray's object store; give fewer --decoders.",
                      highlight=False)

    try:
        cluster.cluster_scan(sources, out_dir, model, exclude=exclude, force=force,
                             decoders=decoders, models=models, batch_size=batch_size,
                             device=device.value, progress=err.is_terminal, on_start=on_start,
                             stats=stats)
    except KeyboardInterrupt:               # Ctrl-C, or SIGTERM (`ray job stop`)
        stats.interrupted = True
    seconds = time.monotonic() - started
    done = stats.classified + stats.failed + stats.silent
    if stats.not_utf8:
        out.print(f"{stats.not_utf8} file{'s' if stats.not_utf8 > 1 else ''} left out: "
                  f"{'their names are' if stats.not_utf8 > 1 else 'its name is'} not UTF-8, "
                  "which Parquet cannot hold; scan such files with tagger scan.", highlight=False)
    where = output.display(out_dir)
    if not done and not stats.interrupted:
        out.print("Nothing to do: " + (f"all {stats.unchanged} files have current results in "
                                      f"{where}." if stats.unchanged else
                                      "no audio files found."), highlight=False, markup=False)
        return
    rate = f" ({done / seconds:.1f} tracks/s)" if done and seconds > 0 else ""
    out.print(f"Scanned {done} tracks in {seconds:.1f} s{rate}: {stats.classified} classified, "
              f"{stats.failed} failed, {stats.silent} silent"
              + (f"; {stats.unchanged} unchanged." if stats.unchanged else "."), highlight=False)
    print_genres(stats.genres.most_common(), stats.uncertain)
    if done:
        out.print(f"Results: {where}; fold them into the index with: tagger merge {where}",
                  highlight=False, markup=False)
    if stats.interrupted:
        err.print("Interrupted: what was classified is saved; run the same command again to "
                  "finish (nothing is classified twice).", highlight=False)
        raise typer.Exit(130)


@app.command()
@cli_errors
def merge(
    folder: Annotated[str, typer.Argument(metavar="DIR|URI", show_default=False,
                                          help="A cluster-scan's --out folder or URI.")],
    db: DbOption = default_db_path(),
) -> None:
    """Fold a cluster-scan's results into the index, so that query and write-tags see them.

    A file's row replaces the one the index had, as a scan does.

    Example: [bold]tagger merge results --db ~/music-index.db[/bold]
    """
    from tagger import cluster
    n = cluster.merge(folder, db)
    out.print(f"Merged {n} tracks into {db}", highlight=False, markup=False)


class SortOrder(str, Enum):
    path = "path"
    genre = "genre"
    confidence = "confidence"
    scanned = "scanned"


@app.command()
@cli_errors
def query(
    ctx: typer.Context,
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Only tracks in these folders (or these files). \\[default: the whole index]",
        show_default=False)] = None,
    genre: Annotated[Optional[str], typer.Option("--genre", "-g", show_default=False,
                     help=f"Tracks whose top genre is this one ({', '.join(GENRES)}).")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(
        "--min-confidence", min=0.0, max=1.0, show_default=False,
        help="With --genre: tracks whose probability for it is at least this, top genre or not "
             "(the table shows that probability).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only tracks that could not be classified.")] = False,
    uncertain: Annotated[bool, typer.Option(
        "--uncertain", help="Only tracks whose top genre is below their model's threshold, "
                            "shown as uncertain (write-tags leaves them alone).")] = False,
    sort: Annotated[Optional[SortOrder], typer.Option(
        "--sort", show_default=False,
        help="path; genre (top genre, then most probable first); confidence (most probable "
             "first: the --genre's probability with --min-confidence); scanned (latest first). "
             "\\[default: confidence with --genre, else path]")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, show_default=False,
                     help="At most this many tracks.")] = None,
    fmt: Annotated[ListFormat, typer.Option("--format", "-f", help="Output format.")] = ListFormat.table,
    relative_to: Annotated[Optional[Path], typer.Option(
        "--relative-to", metavar="DIR", show_default=False,
        help="With --format m3u: paths relative to DIR (the playlist's folder).")] = None,
    db: DbOption = default_db_path(),
) -> None:
    """List what the index holds: every track, one genre's tracks, or the failures.

    Example: [bold]tagger query ~/Music/Jazz --genre blues --min-confidence 0.6 --format m3u > blues.m3u[/bold]
    """
    from tagger.index import existing_index
    if relative_to is not None and fmt is not ListFormat.m3u:
        raise typer.BadParameter("only with --format m3u", ctx=ctx, param_hint="--relative-to")
    with existing_index(db, read_only=True) as index:
        try:
            rows = index.query(genre, min_confidence, failed=failed, uncertain=uncertain,
                               limit=limit, paths=paths or (), sort=sort and sort.value)
        except UsageError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx) from None
        count = 0

        def counted(rows):
            nonlocal count
            for count, row in enumerate(rows, 1):
                yield row

        rows = counted(rows)
        if fmt is ListFormat.json:
            output.write_json(rows)
        elif fmt is ListFormat.csv:
            output.write_csv(rows, index.genres() or GENRES)
        elif fmt is ListFormat.m3u:
            if (left_out := output.write_m3u(rows, relative_to)) and not shown.quiet:
                err.print(f"Left out of the playlist: {left_out} files whose names hold a line "
                          "break, which M3U cannot hold (--format json lists them).",
                          highlight=False)
        else:
            output.print_table(out, rows, genre_key(genre) if min_confidence is not None else None)
    if shown.verbose:
        err.print(f"{count} track{'s' * (count != 1)}.", highlight=False)
    elif count == 0 and fmt is ListFormat.table and not shown.quiet:
        err.print("No tracks match.")


CacheOption = Annotated[Optional[Path], typer.Option(
    "--cache", envvar=CACHE_ENV_VAR, show_default=False,
    help=f"Folder of cached log-mels. \\[default: ${CACHE_ENV_VAR}, else tagger's folder in the "
         "user's cache folder]")]
TeacherOption = Annotated[Optional[Path], typer.Option(
    "--teacher", show_default=False, metavar="PATH",
    help="msd_fcn's best_model.pth: also report the teacher+LR reference (its 50 tags, cached, "
         "mapped to genres by a logistic regression fitted on the training clips).")]


def load_teacher_option(path: Optional[Path]):
    """The teacher of --teacher (checked before any long work), or None."""
    if path is None:
        return None
    from tagger.teacher import load_teacher
    return load_teacher(path)


def reference_line(r: dict) -> str:
    """The teacher+LR reference of a report, or nothing."""
    if "teacher_reference" not in r:
        return ""
    t = r["teacher_reference"]
    return (f"Teacher+LR reference: accuracy {t['accuracy']:.3f}, macro F1 {t['macro_f1']:.3f} "
            f"(model {r['teacher_margin']['accuracy']:+.3f} accuracy)")


class TrainReporter:
    """Draws training on stderr: a bar while clips are read, then a line per epoch."""

    def __init__(self):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                                 disable=not err.is_terminal)
        self.task = None
        # the lines that tell how training goes; --quiet leaves them out
        self.say = Console(quiet=True).print if shown.quiet else self.progress.console.print

    def _bar(self, description: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, completed=completed)

    def features(self, done, total, clip, error) -> None:
        if self.task is None:
            self._bar("Reading clips", total)
        if error:
            self.progress.console.print(f"{output.display(clip.path)}: {error}", markup=False,
                                        highlight=False)
        self.progress.update(self.task, completed=done)

    def run_start(self, index, runs, split, epochs, start_epoch) -> None:
        counts = split.counts()
        self.say(
            f"[bold]{escape(split.name)}[/bold] split: {counts['train']} train, {counts['valid']} "
            f"valid, {counts['test']} test clips" + (f" (resuming after epoch {start_epoch})"
                                                     if start_epoch else ""), highlight=False)
        self._bar(f"Training ({escape(split.name)})", epochs, start_epoch)

    def epoch(self, row, improved) -> None:
        valid = (f"  valid loss {row['valid_loss']:.3f}  accuracy {row['valid_accuracy']:.3f}  macro F1 "
                 f"{row['valid_macro_f1']:.3f}" if row["valid_loss"] is not None else "")
        self.say(
            f"  epoch {row['epoch']:3d}  loss {row['train_loss']:.3f}{valid}  {row['seconds']:.1f} s"
            + ("  [green]best[/green]" if improved and valid else ""), highlight=False)
        self.progress.update(self.task, completed=row["epoch"])

    def run_end(self, r) -> None:
        if not r["evaluated_on"]:
            return
        m, b = r["model"], r["baseline"]
        self.say(
            f"{escape(r['split'])}, {r['evaluated_on']} ({m['tracks']} clips): accuracy "
            f"[bold]{m['accuracy']:.3f}[/bold], macro F1 {m['macro_f1']:.3f}; MFCC baseline "
            f"{b['accuracy']:.3f} / {b['macro_f1']:.3f}; best epoch {r['best_epoch']} of "
            f"{r['epochs_run']}, {r['seconds_per_epoch']:.1f} s an epoch", highlight=False)

    def note(self, text) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


@app.command()
@cli_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="GTZAN-style folder: genre folders, or genre-prefixed file names.",
                                             show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The checkpoint to write; the report and figures go beside it.")] = Path("model.pt"),
    split: Annotated[str, typer.Option("--split", metavar="filtered|random|all|'folds K'",
                     help="filtered: the artist-filtered GTZAN lists; random: stratified 60/20/20 by track; "
                          "all: every clip trains, --epochs exactly, nothing held out; "
                          "'folds K': K-fold cross-validation (report only, no checkpoint).")] = "filtered",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="At most this many epochs (early stopping may end sooner).")] = TrainSettings.epochs,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1,
                    help="Seed for the split, initial weights, crops and augmentation.")] = 0,
    device: DeviceOption = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same command.")] = False,
    cache: CacheOption = None,
    teacher: TeacherOption = None,
    fused: Annotated[bool, typer.Option("--fused", help="Make the fused model: the teacher of "
                     "--teacher goes into the checkpoint, frozen, and its 50 tags per track are a "
                     "second input to the genre head (slower to scan, more accurate).")] = False,
    unlabelled: Annotated[Optional[list[Path]], typer.Option(
        "--unlabelled", show_default=False, metavar="DIR",
        help="Distil: also learn the teacher's outputs (--teacher) on augmented views of the "
             "audio in DIR (repeatable; the README says where to get some).")] = None,
    views: Annotated[int, typer.Option("--views", min=1, max=64,
                     help="Distillation: augmented views of each clip, the clean one included.")] = TrainSettings.views,
    crops: Annotated[int, typer.Option("--crops-per-clip", min=1, max=64,
                     help="Crops drawn from each training clip (each view, distilling) an epoch.")] = TrainSettings.crops_per_clip,
    calibration_from: Annotated[Optional[Path], typer.Option(
        "--calibration-from", show_default=False, metavar="REPORT",
        help="--split all only: store the calibration (temperature, fused branch weight) of "
             "REPORT, the .report.json of a --split filtered run of the same recipe; the other "
             "splits fit it on their validation clips.")] = None,
    uncertain_below: Annotated[float, typer.Option(
        "--uncertain-below", min=0.0, max=1.0,
        help="Tracks whose calibrated top probability is below this are 'uncertain'.")] = UNCERTAIN_BELOW,
) -> None:
    """Train the CNN-RNN on a GTZAN-style folder and report how it does against an MFCC baseline.

    Writes OUT (the checkpoint), OUT's .report.json, .confusion.png and .curves.png beside it.
    An interrupted run continues with --resume.

    Example: [bold]tagger train gtzan/genres --out models/mine.pt[/bold]
    """
    from tagger.dataset import parse_split
    from tagger.reports import read_calibration
    from tagger.train import resume_path, train as run_training

    kind, folds = parse_split(split)
    if (fused or unlabelled) and teacher is None:
        raise UserError(f"{'--fused' if fused else '--unlabelled'} needs --teacher (msd_fcn's "
                        "best_model.pth)")
    fcn = load_teacher_option(teacher)
    from tagger.model import ModelSettings
    from tagger.teacher import CHANNELS
    ms = ModelSettings(teacher_channels=CHANNELS if fused else ())
    reporter = TrainReporter()
    try:
        with reporter.progress:
            report = run_training(data_dir, out, kind, folds,
                                  TrainSettings(epochs=epochs, seed=seed, views=views,
                                                crops_per_clip=crops), ms=ms,
                                  device=device.value, cache_dir=cache, resume=resume, reporter=reporter,
                                  teacher=fcn, calibration=read_calibration(calibration_from),
                                  uncertain_below=uncertain_below, unlabelled=unlabelled or ())
    except KeyboardInterrupt:
        state = resume_path(out)
        if state.exists():
            err.print(f"Interrupted: progress is saved in {output.display(str(state))}; run the same "
                      "command with --resume to go on.", highlight=False, markup=False)
        else:
            err.print("Interrupted before the first epoch ended; nothing to resume.")
        raise typer.Exit(130)
    print_training_summary(report, out)


def print_training_summary(report: dict, checkpoint: Path) -> None:
    data = report["data"]
    lines = [f"Trained on {data['clips']} clips of {output.display(data['folder'])} in "
             f"{report['train_seconds'] / 60:.1f} min ({report['device']}); split: {report['split']}."]
    if data["unreadable"] or data["unlabelled"] or data["duplicates"]:
        lines.append(f"Left out: {len(data['unreadable'])} unreadable, {len(data['unlabelled'])} without a genre, "
                     f"{len(data['duplicates'])} duplicates.")
    runs = report["runs"]
    if "missing_from_lists" in runs[0]:
        missing = runs[0]["missing_from_lists"]
        lines.append("Clips of the split lists not in the folder: " +
                     ", ".join(f"{n} {part}" for part, n in missing.items()) +
                     f"; in the folder but in no list: {runs[0]['unlisted_clips']}.")
    if "cross_validation" in report:
        cv = report["cross_validation"]
        acc, f1, base = cv["accuracy"], cv["macro_f1"], cv["baseline_accuracy"]
        lines.append(f"Cross-validated track accuracy {acc['mean']:.3f} ± {acc['std']:.3f} "
                     f"(folds {acc['min']:.3f} to {acc['max']:.3f}), macro F1 {f1['mean']:.3f}; "
                     f"MFCC baseline {base['mean']:.3f} ± {base['std']:.3f}.")
    else:
        r = runs[0]
        if not r["evaluated_on"]:
            lines.append("Nothing was held out (--split all): measure this recipe with --split filtered "
                         "or 'folds K'.")
        else:
            lines.append(f"Track accuracy on {r['evaluated_on']}: {r['model']['accuracy']:.3f} "
                         f"(baseline {r['baseline']['accuracy']:.3f}, {r['margin']['accuracy']:+.3f}); "
                         f"macro F1 {r['model']['macro_f1']:.3f} (baseline {r['baseline']['macro_f1']:.3f}).")
            if reference_line(r):
                lines.append(reference_line(r) + ".")
        lines.append(f"Checkpoint: {output.display(str(checkpoint))} (model id {report['model_id']})")
    lines.append("Report and figures: " + ", ".join(output.display(f) for f in report["files"]))
    for line in lines:
        out.print(line, highlight=False, markup=False)


@app.command()
@cli_errors
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="GTZAN-style folder of clips.", show_default=False)],
    model: ModelOption = None,
    part: Annotated[str, typer.Option("--part", metavar="valid|test|train|all",
                    help="Which part of the split the model was trained with to score (all: every clip).")] = "valid",
    split: Annotated[Optional[str], typer.Option("--split", hidden=True)] = None,   # --part's old name
    device: DeviceOption = Device.auto,
    cache: CacheOption = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", show_default=False,
        help="Where the report goes (PATH.report.json, PATH.confusion.png). "
             "\\[default: beside --model; in the current folder for a shipped model, or when "
             "that folder is not writable]")] = None,
    teacher: TeacherOption = None,
) -> None:
    """Score a model on a part of its training split of a GTZAN-style folder, beside the MFCC baseline.

    Example: [bold]tagger evaluate gtzan/genres --model models/mine.pt --part test[/bold]
    """
    from tagger.evaluate import evaluate_model
    part = split or part
    model_path, _ = resolve_model(model)
    fcn = load_teacher_option(teacher)
    progress = Progress(SpinnerColumn(), TextColumn("Reading clips"), BarColumn(), MofNCompleteColumn(),
                        console=err, disable=not err.is_terminal)
    task = progress.add_task("read", total=None)

    def on_clip(clip, error):
        if error:
            progress.console.print(f"{output.display(clip.path)}: {error}", markup=False, highlight=False)
        progress.advance(task)

    with progress:
        result = evaluate_model(data_dir, model_path, part, device.value, cache, report, on_clip, fcn)
    m = result["model"]
    out.print(f"{result['split']}, {part}: {m['tracks']} clips, track accuracy {m['accuracy']:.3f}, "
              f"macro F1 {m['macro_f1']:.3f}", highlight=False)
    if "baseline" in result:
        b = result["baseline"]
        out.print(f"MFCC baseline: accuracy {b['accuracy']:.3f}, macro F1 {b['macro_f1']:.3f} "
                  f"(model {result['margin']['accuracy']:+.3f} accuracy)", highlight=False)
    if reference_line(result):
        out.print(reference_line(result), highlight=False)
    if n := result.get("training_clips_included"):
        out.print(f"Note: --part {part} includes the {n} clips this model trained on; these "
                  "figures overstate how it does on music it has not heard.", highlight=False)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for name in ("Genre", "Precision", "Recall", "F1", "Tracks"):
        table.add_column(name, justify="left" if name == "Genre" else "right")
    for genre, g in m["per_genre"].items():
        table.add_row(output.genre_name(genre), f"{g['precision']:.2f}", f"{g['recall']:.2f}",
                      f"{g['f1']:.2f}", str(g["support"]))
    out.print(table)
    out.print("Report: " + ", ".join(output.display(f) for f in result["files"]), highlight=False, markup=False)


@app.command()
@cli_errors
def show(
    files: Annotated[list[Path], typer.Argument(
        help="Audio files to classify, or folders: their audio files, found as scan finds them.",
        show_default=False)],
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    fmt: Annotated[ShowFormat, typer.Option("--format", "-f", help="Output format.")] = ShowFormat.table,
    timeline: Annotated[bool, typer.Option(
        "--timeline", help="Genres over time: classify a sliding window over the whole of one "
                           "FILE (a DJ mix, a concert, a medley).")] = False,
    window: Annotated[Optional[float], typer.Option(
        "--window", min=1.0, metavar="SECONDS", show_default=False,
        help="With --timeline: the window's length. \\[default: 10]")] = None,
    hop: Annotated[Optional[float], typer.Option(
        "--hop", min=0.5, metavar="SECONDS", show_default=False,
        help="With --timeline: a window every this many seconds. \\[default: 5]")] = None,
    png: Annotated[Optional[Path], typer.Option(
        "--png", metavar="FILE.png", show_default=False,
        help="With --timeline: also draw it, genre by time, into this PNG file.")] = None,
) -> None:
    """Classify files and print their genre probabilities; the index is not touched.

    A file that is missing or cannot be decoded is shown with the reason, and the others go
    on. Exit code: 0 when every file was classified (a silent one included), 1 when any
    could not be.

    With --timeline, one FILE is decoded whole and classified in 10 s windows every 5 s:
    one row per genre, one cell per window shaded by its probability, and the mean over
    the windows; --format json gives every window's probabilities.

    Example: [bold]tagger show song.flac ~/Music/Jazz[/bold]

    Example: [bold]tagger show --timeline mix.mp3 --png mix.png[/bold]
    """
    from tagger import api
    if not timeline:
        for name, value in (("--window", window), ("--hop", hop), ("--png", png)):
            if value is not None:
                raise typer.BadParameter("only with --timeline", param_hint=name)
    elif len(files) != 1 or files[0].is_dir():
        raise typer.BadParameter("--timeline takes exactly one file, not "
                                 + ("a folder" if len(files) == 1 else f"{len(files)} paths"),
                                 param_hint="FILE")
    model = api.load_model(model, device.value)
    if timeline:
        show_timeline(model, files[0], window or 10.0, hop or 5.0, png, fmt)
        return
    rows, shown, failed = [], 0, 0
    for prediction in model.classify_files(files, batch_size=1):     # printed as they come
        shown += 1
        failed += prediction.status in ("failed", "error")
        if fmt is ShowFormat.json:
            rows.append(prediction.as_row())
        else:
            output.bar_chart(out, prediction.as_row())
    if not shown:
        raise UserError(f"no audio files in {', '.join(map(str, files))}")
    if fmt is ShowFormat.json:
        output.write_json(rows)
    if failed:
        err.print(f"{failed} of {shown} files could not be classified.", highlight=False)
        raise typer.Exit(1)


def show_timeline(model, file: Path, window: float, hop: float, png: Optional[Path],
                  fmt: ShowFormat) -> None:
    """show --timeline: a spinner that says how far it got, then the heat strip or JSON."""
    from tagger.atomic import check_target
    from tagger.figures import timeline_png
    from tagger.timeline import clock
    if png is not None:
        check_target(png, "--png", "timeline.png")
    name = escape(output.display(str(file)))
    with ExitStack() as stack:
        status = (stack.enter_context(err.status(f"Classifying {name}...")) if
                  err.is_terminal and not shown.quiet else None)
        t = model.timeline(file, window, hop, on_window=None if status is None else (
            lambda seconds: status.update(f"Classifying {name}: {clock(seconds)} done...")))
    if fmt is ShowFormat.json:
        output.write_json_object(t.as_dict())
    else:
        output.heat_strip(out, t)
    if png is not None:
        timeline_png(t, png)
        if not shown.quiet:
            err.print(f"Wrote {output.display(str(png))}", highlight=False, markup=False)


@app.command()
@cli_errors
def stats(
    db: DbOption = default_db_path(),
    model: ModelOption = None,
    fmt: Annotated[ShowFormat, typer.Option("--format", "-f", help="Output format.")] = ShowFormat.table,
) -> None:
    """Count what the index holds: tracks by state and by genre, the models that scored them,
    the stale ones (scored by another model than --model, so the next scan classifies them
    again) and those whose files are gone.

    Example: [bold]tagger stats --format json[/bold]
    """
    import dataclasses
    from tagger.index import existing_index
    try:                    # only the stale count needs the model
        _, model_id = resolve_model(model)
    except TaggerError as exc:
        model_id = None
        err.print(f"Stale tracks not counted: {output.display(str(exc))}", highlight=False,
                  markup=False)
    with existing_index(db, read_only=True) as index:
        s = index.stats(model_id)
    if fmt is ShowFormat.json:
        output.write_json_object(dataclasses.asdict(s))
        return
    size = f"{s.size / 2**20:.1f} MiB" if s.size >= 2**20 else f"{s.size / 2**10:.0f} KiB"
    lines = [f"Index: {output.display(s.path)} ({size})",
             f"{s.tracks} tracks: {s.classified} classified ({s.uncertain} uncertain), "
             f"{s.failed} failed, {s.silent} silent"]
    if s.stale:
        lines.append(f"Stale: {s.stale}, scored by another model than {model_id} (the next scan "
                     "classifies them again)")
    if s.missing:
        lines.append(f"Missing on disk: {s.missing} (tagger prune removes them from the index)")
    for line in lines:
        out.print(line, highlight=False, markup=False)
    print_genres(s.genres.items(), s.uncertain)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("Model")
    table.add_column("Tracks", justify="right")
    for m, n in s.models.items():
        table.add_row(escape(m) + (" (current)" if m == model_id else ""), str(n))
    out.print(table)


@app.command()
@cli_errors
def report(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Only tracks in these folders (or these files). \\[default: the whole index]",
        show_default=False)] = None,
    out_file: Annotated[Path, typer.Option(
        "--out", "-o", metavar="FILE.html",
        help="The page to write; an existing one is replaced whole.")] = Path("report.html"),
    db: DbOption = default_db_path(),
) -> None:
    """Write what the index holds as one HTML page to open in a browser: the genres, a
    histogram of confidence, each genre's surest tracks, the uncertain and failed ones, and
    every track in a table to sort and filter.

    The page needs no network (CSS, charts and script are inside it): it can be mailed or
    copied to a phone.

    Example: [bold]tagger report ~/Music/Jazz --out jazz.html[/bold]
    """
    from tagger.htmlreport import write_report
    words = {genre: "; ".join(names) for genre, names in settings.config.genre_names.items()}
    s = write_report(out_file, db, paths or (), names=words)
    out.print(f"Wrote {output.display(str(out_file))}: {s.tracks} tracks ({s.classified} "
              f"classified, {s.uncertain} uncertain, {s.failed} failed, {s.silent} silent).",
              highlight=False, markup=False)


class TagStopRequest(StopRequest):
    message = "Stopping after the file being written... (Ctrl-C again to stop now)"


def run_tag_command(label: str, show_changes: bool, function, *args, **kwargs):
    """write_tags or restore_tags with a progress bar, "path: reason" for each skipped file
    and "path: old -> new" for each change of a dry run; with --verbose, "path: genre (why)"
    for each file whose genre stays as it is."""
    from tagger.writetags import NOT_CLASSIFIED
    progress = Progress(SpinnerColumn(), TextColumn(label), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not err.is_terminal)
    task = progress.add_task(label, start=False)

    def on_start(total: int) -> None:
        progress.update(task, total=total)
        progress.start_task(task)

    def on_outcome(o) -> None:
        if o.action == "skipped" and o.reason != NOT_CLASSIFIED:
            progress.console.print(f"{output.display(o.path)}: {o.reason}", highlight=False,
                                   markup=False)
        elif show_changes and o.action == "written":
            out.print(f"{output.display(o.path)}: {'; '.join(o.old) or '(none)'} -> "
                      f"{'; '.join(o.new) or '(none)'}", highlight=False, markup=False)
        elif show_changes and o.tagger_fields and not shown.verbose:    # a change too
            out.print(f"{output.display(o.path)}: TAGGER_ fields only (genre kept: "
                      f"{'; '.join(o.old) or '(none)'})", highlight=False, markup=False)
        elif shown.verbose and o.action != "written":
            why = (o.reason or o.action) + (("; would write" if show_changes else "; wrote")
                                            + " the TAGGER_ fields" if o.tagger_fields else "")
            said = f"{'; '.join(o.old)} ({why})" if o.action in ("kept", "unchanged") else why
            out.print(f"{output.display(o.path)}: {said}", highlight=False, markup=False)
        progress.advance(task)

    with progress, TagStopRequest() as stop:
        stats = function(*args, on_start=on_start, on_outcome=on_outcome, should_stop=stop,
                         **kwargs)
    if stats.leftovers_removed:
        err.print(f"Removed {stats.leftovers_removed} temporary file(s) left by an interrupted "
                  "write.")
    return stats


def print_tag_summary(stats, lead: str, extra: str = "") -> None:
    skipped = sum(stats.skipped.values())
    out.print(f"{lead} {stats.written} files: {stats.unchanged} unchanged{extra}, "
              f"{skipped} skipped.", highlight=False)
    for reason, n in stats.skipped.most_common():
        out.print(f"  {reason}: {n}", highlight=False)
    if stats.tagger_fields_only:
        out.print(f"{'Would write' if lead.startswith('Would') else 'Wrote'} only the TAGGER_ "
                  f"fields to {stats.tagger_fields_only} files (genre kept or below the "
                  "threshold).", highlight=False)
    if stats.interrupted:
        err.print("Interrupted: run the same command again to finish; every file is either "
                  "done or untouched.", highlight=False)
        raise typer.Exit(130)


TagPathsArgument = Annotated[Optional[list[Path]], typer.Argument(
    help="Only files under these folders (or these files). \\[default: the whole index]",
    show_default=False)]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print what would change; touch nothing.")]


@app.command("write-tags")
@cli_errors
def write_tags(
    paths: TagPathsArgument = None,
    genre: Annotated[Optional[str], typer.Option("--genre", "-g", show_default=False,
                     help="Only tracks whose top genre is this one.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Write up to K genres.")] = 1,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", min=0.0, max=1.0,
        help="Write only genres at least this probable; a track whose best genre is less "
             "probable is left alone.")] = 0.5,
    only_missing: Annotated[bool, typer.Option(
        "--only-missing/--overwrite",
        help="Leave files that already have a genre, or replace it.")] = True,
    append: Annotated[bool, typer.Option(
        "--append",
        help="Add the genres beside the values the file's genre field has, keeping them all "
             "(none twice, case aside); restore-tags takes out only what was added.")] = False,
    include_uncertain: Annotated[bool, typer.Option(
        "--include-uncertain",
        help="Also write tracks whose top genre is below their model's threshold (`tagger "
             "query --uncertain` lists them); without it their files are left as they are, "
             "even a genre tagger wrote before.")] = False,
    probabilities: Annotated[bool, typer.Option(
        "--probabilities/--no-probabilities",
        help="Also write TAGGER_MODEL and TAGGER_PROB_<GENRE> custom fields, to tracks "
             "whose genre is kept or below --min-confidence too (not to uncertain ones).")] = False,
    id3v23: Annotated[Optional[bool], typer.Option(
        "--id3v23/--id3v24", show_default=False,
        help="Save ID3 tags (mp3, wav, aiff) as v2.3 or v2.4. \\[default: each file's own "
             "version; v2.4 for a file without one]")] = None,
    dry_run: DryRunOption = False,
    db: DbOption = default_db_path(),
) -> None:
    """Write the predicted genres into the files' own genre tags (TCON, GENRE, ©gen).

    Every other tag, the cover art and the audio stay as they were; the old genre is kept in
    the index, and [bold]tagger restore-tags[/bold] puts it back. A file changed since the
    scan is skipped, and so is a track whose genre is uncertain (see --include-uncertain).

    Example: [bold]tagger write-tags ~/Music/Jazz --top-k 2 --min-confidence 0.3 --dry-run[/bold]
    """
    from tagger.writetags import TagOptions, write_tags as write
    if append and not only_missing:
        raise typer.BadParameter("--append keeps the file's genre and --overwrite replaces it: "
                                 "pass one of them", param_hint="--append")
    opts = TagOptions(top_k, min_confidence, not only_missing, probabilities,
                      None if id3v23 is None else (3 if id3v23 else 4), dry_run, include_uncertain,
                      append=append, genre_names=settings.config.genre_names)
    stats = run_tag_command("Writing tags", dry_run, write, paths or [], db, genre=genre,
                            options=opts)
    print_tag_summary(stats, "Would write genres to" if dry_run else "Wrote genres to",
                      (f", {stats.kept} kept (already had a genre)" if stats.kept else "")
                      + f", {stats.below} below {min_confidence:.0%} confidence"
                      + (f", {stats.uncertain} uncertain, not written" if stats.uncertain else ""))


@app.command("restore-tags")
@cli_errors
def restore_tags(
    paths: TagPathsArgument = None,
    dry_run: DryRunOption = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Also restore files whose genre or TAGGER_ fields another program "
                        "changed since tagger wrote them.")] = False,
    db: DbOption = default_db_path(),
) -> None:
    """Put back the genre (and TAGGER_ fields) that files had before write-tags changed them.

    A file that had no genre ends with none. The undo data is then dropped from the index.
    A file whose genre or TAGGER_ fields were changed since by another program (Picard,
    beets, a hand edit) is left as it is, its undo data kept: see --force.

    Example: [bold]tagger restore-tags ~/Music/Jazz[/bold]
    """
    from tagger.writetags import restore_tags as restore
    stats = run_tag_command("Restoring tags", dry_run, restore, paths or [], db, dry_run=dry_run,
                            force=force)
    print_tag_summary(stats, "Would restore" if dry_run else "Restored")


@app.command()
@cli_errors
def prune(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Only tracks under these folders (or these files). \\[default: the whole index]",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; "
                                                             "change nothing.")] = False,
    db: DbOption = default_db_path(),
) -> None:
    """Remove from the index the tracks whose files are no longer on disk, without scanning.

    Undo records are kept: if a file comes back (a backup copy), restore-tags still puts its
    old tags back. `tagger scan` prunes the folders it scans by itself.

    Example: [bold]tagger prune ~/Music --dry-run[/bold]
    """
    from tagger import api
    result = api.prune(paths or [], db, dry_run=dry_run)
    if dry_run:
        for path in result.removed:
            out.print(output.display(path), highlight=False, markup=False)
    out.print(f"{'Would remove' if dry_run else 'Removed'} {len(result.removed)} tracks: no "
              "longer on disk.", highlight=False)
    if result.undo_kept:
        out.print(f"Kept {result.undo_kept} undo record(s) of those files: restore-tags puts "
                  "their old tags back if they return.", highlight=False)


@app.command()
@cli_errors
def check(
    db: DbOption = default_db_path(),
    recover: Annotated[Optional[Path], typer.Option(
        "--recover", metavar="NEW.db", show_default=False,
        help="Copy what can be read into this new index file (undo records first); the "
             "checked index is left as it is.")] = None,
) -> None:
    """Check the index with SQLite's integrity check and say what can still be read from it.

    Exit code 1 if it is damaged. Nothing is deleted or changed: a recovery writes a new file.

    Example: [bold]tagger check --recover ~/index-recovered.db[/bold]
    """
    from tagger import indexcheck
    report = indexcheck.check(db)
    r = report.readable
    lines = [f"Index: {output.display(str(db))} (schema version {report.version})",
             "Integrity: ok" if report.ok else f"Integrity: damaged ({len(report.problems)} "
             f"problem(s); the first: {report.problems[0]})",
             *(f"  {problem}" for problem in report.problems if shown.verbose),
             f"Readable: {r['tracks']} tracks, {r['probabilities']} probabilities, "
             f"{r['tag_backups']} undo records"]
    readable = any(r.values())
    if recover is not None and (readable or report.ok):
        n = indexcheck.recover(db, recover)
        lines.append(f"Recovered into {output.display(str(recover))}: {n['tag_backups']} undo records, "
                     f"{n['tracks']} tracks with {n['probabilities']} probabilities"
                     + (f"; {n['tracks_left_out']} tracks with damaged probabilities are left "
                        "for the next scan" if n["tracks_left_out"] else "")
                     + f". Use it with --db, or put it in the place of {output.display(str(db))}.")
    for line in lines:
        out.print(line, markup=False, highlight=False)
    if not readable and not report.ok:
        raise DatabaseError("nothing can be read from the index, so no copy is made; `tagger "
                            "scan` with a new --db classifies the library again", str(db))
    if not report.ok and recover is None:
        raise DatabaseError(f"the index is damaged; `tagger check --db {db} --recover NEW.db` "
                            "copies what can be read into a new index", str(db))


@app.command("config")
@cli_errors
def show_config(
    ctx: typer.Context,
    fmt: Annotated[ShowFormat, typer.Option("--format", "-f", help="Output format.")] = ShowFormat.table,
) -> None:
    """Print the config file in use, each default (db, model, workers, min_confidence, top_k)
    with where it comes from, and the words write-tags writes for each genre.

    A flag beats an environment variable, which beats the config file, which beats the
    built-in default. Another file: [bold]tagger --config FILE COMMAND[/bold] (or
    $TAGGER_CONFIG). The README's Configuration shows an example file.

    Example: [bold]tagger config --format json[/bold]
    """
    from tagger.config import COMMANDS
    loaded, commands = settings.config, ctx.find_root().command.commands
    builtin = {name: next(p.default for c in names or commands for p in commands[c].params
                          if p.name == name) for name, names in COMMANDS.items()}
    builtin["db"], builtin["model"] = str(builtin["db"]), builtin["model"] or "default"
    effective = loaded.settings(builtin)
    if fmt is ShowFormat.json:
        output.write_json_object({
            "config_file": {"path": str(loaded.path), "from": loaded.origin, "found": loaded.found},
            "settings": {name: {"value": s.value, "from": s.source} for name, s in effective.items()},
            "genres": loaded.genre_names})
        return
    named = {"default": "the default place", "--config": "--config"}.get(loaded.origin, loaded.origin)
    out.print(f"Config file: {output.display(str(loaded.path))} ({named}"
              + ("" if loaded.found else "; not there: the built-in defaults") + ")",
              highlight=False, markup=False)
    for rows, head in ((((n, str(s.value), s.source) for n, s in effective.items()),
                        ("Setting", "Value", "From")),
                       (((g, "; ".join(words)) for g, words in loaded.genre_names.items()),
                        ("Genre", "Written as"))):
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
        for name in head:
            table.add_column(name)
        for row in rows:
            table.add_row(*map(escape, map(output.display, row)))
        out.print()
        out.print(table)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"tagger {__version__}")
        raise typer.Exit()


@app.callback()
def root(ctx: typer.Context,
         version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                               is_eager=True, help="Print the version.")] = False,
         config: Annotated[Optional[Path], typer.Option(
             "--config", metavar="FILE", show_default=False,
             help=f"The config file: genre words and defaults (see tagger config). \\[default: "
                  f"${CONFIG_ENV_VAR}, else config.toml in the user's config folder]")] = None):
    """Genre probabilities for a local music library, from the audio itself."""
    shown.quiet = shown.verbose = False       # each command line starts loud (see Verbosity)
    use_consoles()
    if ctx.resilient_parsing:                 # shell completion
        return
    from tagger import config as configfile
    try:
        settings.config = configfile.load(config)
    except TaggerError as exc:
        err.print(f"[red]Error:[/red] {escape(output.display(str(exc)))}", highlight=False)
        raise typer.Exit(1) from None
    # the file's defaults go below the flags and environment variables (click's default_map)
    ctx.default_map = settings.config.default_map({name: [p.name for p in command.params]
                                           for name, command in ctx.command.commands.items()})


def output_failed(exc: OutputError) -> int:
    """The exit status once stdout cannot be written. A reader that stopped reading
    (`tagger query | head -1`) is no error: tagger ends quietly with 0, as ripgrep does,
    so that a script with `set -o pipefail` goes on. (Not 141, the status of `ls | head`
    killed by SIGPIPE: Python's io can report a write cut short by the closed pipe as a
    success, so tagger could not give 141 every time.) A full disk: one "Error:" line, 1."""
    output.discard_stdout()
    if exc.errno == errno.EPIPE:
        return 0
    err.print(f"[red]Error:[/red] {escape(str(exc))}", highlight=False)
    return 1


def _unraisable(hook):
    """A Ctrl-C whose KeyboardInterrupt landed where it cannot propagate (a finaliser, such
    as multiprocessing's while a decoder pool closes) stops tagger as one anywhere else does,
    instead of being printed as a traceback and ignored."""
    def handle(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            stop_now()
        hook(unraisable)
    return handle


def main() -> None:
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    if codecs.lookup(encoding).name != "utf-8" and hasattr(sys.stdout, "reconfigure"):
        # LC_ALL=C or a latin-1 terminal: a file or genre name it cannot show gets "?"
        sys.stdout.reconfigure(errors="replace")
    output.guard_stdout()
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    try:
        app(prog_name="tagger")
    except OutputError as exc:          # from any command, --version or --help
        sys.exit(output_failed(exc))
    finally:    # a Ctrl-C while the interpreter exits (atexit, finalizers) ends it by SIGINT,
        signal.signal(signal.SIGINT, signal.SIG_DFL)    # not with a KeyboardInterrupt traceback
