"""The one command line of every job in `jobs/`: arguments, config loading, logging, Ray start-up and exit codes.

A job declares its arguments and a `run(args)` function; `Job.main` turns the outcome into an exit code:
0 done, 1 the run failed (traceback shown), 2 a mistake in the command or its config (one line, no traceback:
a missing file, an unknown key, a value of the wrong type). `--help` shows the job's docstring with its examples
and every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from biomedclip.config import ConfigError, load_config

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Libraries whose INFO lines are a run's diagnostics, not its story: kept for --verbose (Ray: see ray_runtime).
NOISY_LOGGERS = ("filelock", "urllib3", "botocore", "httpx", "transformers", "timm")


class UsageError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit code 2."""


class RunFailed(Exception):
    """The run did not finish, for a reason its message explains (e.g. interrupted: rerun to resume); exit code 1."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written (its usage examples keep their layout) and every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if _no_default(action.default):  # nothing to show: the help says what none means
            return action.help or ""
        return super()._get_help_string(action)


class JobParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the whole usage and exits; a job prints one line
        raise UsageError(f"{message} (see {self.prog} --help)")


@dataclasses.dataclass(frozen=True)
class Job:
    """A job's command line. `arguments` adds the job's own options; `run` does the work and returns its result.

    `user_errors` gives the job's exceptions that mean "fix your input" (exit 2, one line) rather than "the run
    broke"; a function, so that a job imports its libraries only when it runs.
    """

    doc: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    config: bool = True
    config_required: bool = False
    default_config: Path | None = None
    ray: bool = True
    user_errors: Callable[[], tuple[type[Exception], ...]] = tuple

    def parser(self) -> argparse.ArgumentParser:
        parser = JobParser(prog=_prog(), description=self.doc, formatter_class=HelpFormatter)
        self.arguments(parser)
        if self.config:
            parser.add_argument("--config", type=Path, required=self.config_required, default=self.default_config,
                                help="YAML config file")
            parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                                help="override a config value by its dotted key, e.g. --set train.epochs=2 "
                                     "(repeatable; the value is read as YAML)")
        if self.ray:
            parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                                help="Ray cluster to join (RAY_ADDRESS); none: start a local Ray for this job")
            parser.add_argument("--num-cpus", type=int, help="logical CPUs of a local Ray (none: sized for the job)")
        parser.add_argument("--verbose", action="store_true",
                            help="show every log line (Ray's included) instead of progress bars and a summary")
        return parser

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        args = self.parser().parse_args(argv)
        if self.config and args.config is not None:
            existing(args.config, "--config")  # before the job imports its (slow) libraries
        return args

    def __call__(self, argv: Sequence[str] | None = None) -> Any:
        """Parses and runs, raising on any error: what a test calls to get the job's result."""
        return self.run(self.parse(argv))

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parses and runs as a command: an exit code, errors printed for a person."""
        try:
            args = self.parse(argv)
        except UsageError as err:
            return _refuse(f"{_prog()}: error: {err}")
        configure_logging(args.verbose)
        ray_was_running = _ray_running()
        try:
            self.run(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_FAILED
        except Exception as err:
            return self._failure(err)
        finally:
            if not ray_was_running and _ray_running():  # this job started or joined it; a caller's Ray stays up
                sys.modules["ray"].shutdown()
        return EXIT_OK

    def _failure(self, err: Exception) -> int:
        """A mistake of the user in one line (exit 2); a failed run with its reason, and a traceback if unforeseen."""
        if isinstance(err, (UsageError, ConfigError)) or isinstance(err, self.user_errors()):
            return _refuse(f"{_prog()}: error: {err}")
        if isinstance(err, RunFailed):
            print(f"{_prog()} failed: {err}", file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"\n{_prog()} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


def load(cls: type[T], args: argparse.Namespace, extra_overrides: Sequence[str] = ()) -> T:
    """The job's config from --config and --set (and the job's own flags as `extra_overrides`)."""
    if args.config is not None:
        existing(args.config, "--config")
    return load_config(cls, args.config, [*args.overrides, *extra_overrides])


def existing(path: str | Path, option: str) -> Path:
    """`path` if it exists; an s3:// or other URI is taken as given (its store answers later)."""
    if "://" not in str(path) and not Path(path).exists():
        raise UsageError(f"{option} {path}: no such file or directory")
    return Path(path)


def location(uri: str, option: str) -> str:
    """`uri` (a folder or URI to write to) if its filesystem can be opened: refuses a scheme pyarrow does not know."""
    from biomedclip.io import filesystem

    try:
        filesystem(uri)
    except (ValueError, OSError) as err:
        raise UsageError(f"{option}: {err}") from None
    return uri


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def configure_logging(verbose: bool) -> None:
    """Warnings on stderr; INFO lines (the library's and other libraries') only with --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("biomedclip").setLevel(logging.WARNING)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def start_ray(args: argparse.Namespace, local_cpus: Callable[[int], int] | None = None) -> None:
    """Joins --ray-address, else starts a local Ray; Ray's own logs stay in its session folder (printed once)."""
    from biomedclip.ray_runtime import connect_or_start

    connect_or_start(local_cpus or (lambda machine_cpus: machine_cpus), args.num_cpus, address=args.ray_address,
                     verbose=args.verbose)


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> None:
    """A plain-text table, columns padded to their widest cell."""
    lines = [list(map(str, header))] if header else []
    lines += [[str(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if header and n == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


def _no_default(value: Any) -> bool:
    """None, a flag's False, an empty list: no value worth showing (0 is one)."""
    return value is None or value is False or value == [] or value == argparse.SUPPRESS


def _refuse(message: str) -> int:
    print(" ".join(line.strip() for line in message.splitlines()), file=sys.stderr)  # one line, also for YAML errors
    return EXIT_USAGE


def _prog() -> str:
    return Path(sys.argv[0]).name or "job"


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
