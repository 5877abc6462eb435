"""`toolkit`: the command line. Each subcommand lives in toolkit/commands/.

User errors become one line on stderr and exit code 2; Ctrl-C too, after whatever was
being written has been removed (see toolkit.artifacts).
"""

from __future__ import annotations

import argparse
import sys

from toolkit.commands import (
    bench_cmd,
    compress_cmd,
    eval_cmd,
    export_cmd,
    models_cmd,
    run_cmd,
    train_cmd,
)
from toolkit.errors import USER_ERRORS
from toolkit.quiet import quiet_libraries

COMMANDS = (compress_cmd, run_cmd, eval_cmd, export_cmd, bench_cmd, models_cmd, train_cmd)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        print(f"toolkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"toolkit {args.command}: interrupted: nothing was written; run it again",
              file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
