"""Command line (docs/operations.md, "Commands"): daemon, --replay [--dry-run], --dev, --version."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import anyio
import structlog

from worker import __version__
from worker.clock import system_clock
from worker.commands.daemon import Running, run_daemon
from worker.errors import SettingsError, startup_error
from worker.logs import configure
from worker.server.listen import check_hosts
from worker.server.serving import raise_nofile_limit
from worker.settings import Settings, load_settings

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"reminder-worker: error: {message} (see --help)\n")


def _line_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a line number: {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="reminder-worker",
        description="Reminder and recurrence worker behind a Dapr sidecar. "
        "Without options it runs the daemon; settings come from the environment.",
    )
    p.add_argument("--version", action="version", version=f"reminder-worker {__version__}")
    p.add_argument("--replay", metavar="PATH",
                   help="feed a file of task events ('-' = stdin): JSON Lines, a JSON "
                        "array, or (pretty-printed) JSON objects one after another; then exit")
    p.add_argument("--from", dest="from_line", metavar="N", type=_line_number, default=1,
                   help="with --replay: start at line N (after an interruption, the "
                        "line it names)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --replay: call no sidecar, print the plan as JSON Lines")
    p.add_argument("--dev", action="store_true",
                   help="run beside an embedded development sidecar (never in production)")
    p.add_argument("--demo", action="store_true",
                   help="with --dev: publish demo tasks that show the reminder rules within 30 s")
    p.add_argument("--check", action="store_true",
                   help="ask the sidecar whether this worker can run there; one line per "
                        "check, exit 0 when all pass, 1 otherwise (with --dev: the embedded one)")
    p.add_argument("--explain", nargs=2, metavar=("USER_ID", "TASK_ID"),
                   help="show what the worker knows of one task and whether the scheduler "
                        "has its jobs; exit 0 when it has a record, 1 when not")
    p.add_argument("--json", action="store_true", help="with --explain: one JSON object")
    return p


def log_format(settings: Settings) -> str:
    """REMINDER_LOG_FORMAT when set; else readable lines on a terminal, JSON otherwise."""
    if "REMINDER_LOG_FORMAT" in os.environ:
        return settings.log_format
    return "console" if sys.stderr.isatty() else "json"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.dry_run and not args.replay:
        parser().error("--dry-run needs --replay")
    if args.demo and not args.dev:
        parser().error("--demo needs --dev")
    if args.replay and args.dev:
        parser().error("--replay and --dev cannot be combined")
    if args.json and not args.explain:
        parser().error("--json needs --explain")
    if args.explain and args.dev:
        parser().error("--explain reads a running sidecar (the development sidecar keeps "
                       "its state in the process that runs it): point DAPR_HTTP_PORT at it")
    if sum(map(bool, (args.check, args.explain, args.replay))) > 1:
        parser().error("--check, --explain and --replay are separate commands")
    try:
        settings = load_settings(None)
    except SettingsError as exc:
        print(f"reminder-worker: bad setting: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.from_line != 1 and not args.replay:
        parser().error("--from needs --replay")
    # The commands print for people; their log lines would only repeat it (a set
    # REMINDER_LOG_LEVEL still wins).
    quiet = (args.check or args.explain or args.replay) and "REMINDER_LOG_LEVEL" not in os.environ
    configure(log_format(settings), "error" if quiet else settings.log_level)
    if args.check or args.explain:
        try:
            if args.check and args.dev:
                check_ports(settings, dev=True)
            if args.check:
                from worker.commands.check import check_main

                return check_main(settings, args.dev, system_clock())
            from worker.commands.explain import explain_main

            return explain_main(settings, *args.explain, as_json=args.json, now=system_clock())
        except BaseException as exc:
            error = startup_error(exc)
            if error is None:
                raise
            print(error.line(), file=sys.stderr)
            return EXIT_USAGE
    if args.replay:
        from worker.commands.replay import replay_main

        return replay_main(settings, args.replay, dry_run=args.dry_run, start=args.from_line)
    # Each connection is a file handle: the default soft limit (often 1,024) would let
    # idle connections to the ops port starve deliveries of handles.
    nofile = raise_nofile_limit()
    structlog.get_logger("worker").debug("open file limit", nofile=nofile)
    if args.dev and not dev_sidecar_installed():
        print("reminder-worker: --dev: the development sidecar is not installed here "
              "(production images leave it out); run from a source checkout or a pip install",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        check_ports(settings, args.dev)
        return anyio.run(_serve, settings, args.dev, args.demo)
    except BaseException as exc:  # task groups wrap a start-up error in an exception group
        error = startup_error(exc)
        if error is None:
            raise
        print(error.line(), file=sys.stderr)
        return EXIT_USAGE


def check_ports(settings: Settings, dev: bool) -> None:
    """The app and ops addresses (and with `dev` the development sidecar's) can be
    listened on; else one ListenError that names every one that cannot."""
    if dev:
        from devsidecar.devrun import sidecar_address

        check_hosts(settings, [sidecar_address(settings)])
    else:
        check_hosts(settings)


def dev_sidecar_installed() -> bool:
    """The development sidecar is a separate package, absent from the image."""
    try:
        import devsidecar  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "devsidecar":
            raise
        return False
    return True


async def _serve(settings: Settings, dev: bool, demo: bool) -> int:
    running = Running()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signal, running)
        if dev:
            from devsidecar.devrun import run_dev

            await run_dev(settings, running, demo=demo)
        else:
            await run_daemon(settings, running=running)
        tg.cancel_scope.cancel()
    structlog.get_logger("worker").info("stopped")
    return 0


async def _on_signal(running: Running) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            running.stop.set()
            return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
