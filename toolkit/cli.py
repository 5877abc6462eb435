"""`toolkit`: the command line. Each subcommand lives in toolkit/commands/.

User errors become one line on stderr and exit code 2; so do operating-system failures
(disk full, read-only file system, permissions, names too long or not UTF-8) and Ctrl-C,
after whatever was being written has been removed (see toolkit.artifacts). Every output
path is checked before any work starts (toolkit.output_paths), and a run's temporary files
live in its own temporary folder, removed when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from models.staging import pid_alive
from toolkit.commands import (
    bench_cmd,
    compress_cmd,
    eval_cmd,
    export_cmd,
    models_cmd,
    run_cmd,
    serve_cmd,
    sweep_cmd,
    synth_cmd,
    train_cmd,
)
from toolkit.errors import USER_ERRORS
from toolkit.limits import check_seed
from toolkit.os_errors import (
    describe_os_error,
    describe_unicode_error,
    non_utf8_name_from,
    os_error_from,
)
from toolkit.output_paths import check_output_paths, output_paths, shown
from toolkit.quiet import quiet_libraries

COMMANDS = (compress_cmd, run_cmd, eval_cmd, export_cmd, bench_cmd, serve_cmd, models_cmd,
            train_cmd, synth_cmd, sweep_cmd)
EXIT_USER_ERROR = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage on a bad flag; print one line that names the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="toolkit",
        description="Edge Toolkit: compress models for on-device inference. "
                    "Run `toolkit COMMAND --help` for each command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for leaf in leaf_parsers(parser):
        if "--quiet" not in leaf._option_string_actions:  # every command accepts it
            leaf.add_argument("--quiet", action="store_true",
                              help="accepted by every command; this one draws no progress")
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something (`toolkit train vmoe`, not `toolkit train`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [leaf for sub in action.choices.values() for leaf in leaf_parsers(sub)]
    return [parser]


def check_arguments(args: argparse.Namespace) -> None:
    """What can be refused from the command line alone, before any work: every output
    path, and every seed (`--seed`, `--*-seed`) within the range torch and numpy take."""
    check_output_paths(args)
    for name, value in vars(args).items():
        if (name == "seed" or name.endswith("_seed")) and value is not None:
            check_seed(value, "--" + name.replace("_", "-"))


@contextlib.contextmanager
def run_temp_dir() -> Iterator[str | None]:
    """TMPDIR (and tempfile's default) set to a folder of this run, removed at exit, so
    compiler caches, runtime telemetry and worker scratch files leave nothing behind.
    When no temporary folder can be made the run keeps the system's."""
    _sweep_dead_run_dirs(Path(tempfile.gettempdir()))
    try:
        path = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-")
    except OSError:
        yield None
        return
    saved_env, saved_default = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = path, path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_default
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


RUN_DIR_PREFIX = "toolkit-run-"
_RUN_DIR = re.compile(rf"^{RUN_DIR_PREFIX}(\d+)-[A-Za-z0-9_]+$")


def _sweep_dead_run_dirs(folder: Path) -> None:
    """Remove the run folders of toolkit processes that were killed (SIGKILL skips the
    `finally` above): the pid in the name is gone. Never fails."""
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(RUN_DIR_PREFIX)]
    except OSError:
        return
    for entry in entries:
        match = _RUN_DIR.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            pid = int(match.group(1))
            if pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)


def _printable_stdout() -> None:
    """A path whose bytes are not UTF-8 must not crash the final print after the work is
    done: write such bytes as escapes instead."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            reconfigure(errors="backslashreplace")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"toolkit {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def run_command(args: argparse.Namespace) -> int:
    """args.run(args), with every failure a user or the system can cause as one line."""
    try:
        check_arguments(args)
        return args.run(args)
    except USER_ERRORS as exc:
        return _fail(args, str(exc))
    except KeyboardInterrupt:
        print(f"toolkit {args.command}: interrupted: nothing was written; run it again",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except UnicodeError as exc:
        return _fail(args, describe_unicode_error(exc))
    except Exception as exc:
        os_exc = os_error_from(exc)
        if os_exc is None:
            non_utf8 = non_utf8_name_from(exc)
            if non_utf8 is None:
                raise
            return _fail(args, non_utf8)
        from models.cache import toolkit_cache_dir

        outputs = [f"{flag} {shown(path)}" for flag, path, _ in output_paths(args)]
        return _fail(args, describe_os_error(os_exc, outputs, shown(toolkit_cache_dir())))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    _printable_stdout()
    with run_temp_dir():
        return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
