"""The daemon's subcommands — ``srd run``, ``srd status``, ``srd ledger …`` — for `srd.cli.main` to mount.

Handlers return an exit status and raise `SrdError`s; `srd.cli.main` maps those to exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from srd.cli.status_view import check_line, render
from srd.config import Config, check_real_folders, load_config
from srd.daemon.status import Health, assess, locate_state_dir, read_status
from srd.errors import ExitCode, LockedError, SrdError
from srd.fs.sources import move_file, report_path
from srd.ledger import Entry, Ledger, State, check_ledger, repair_ledger
from srd.logs import configure_logging
from srd.terminal import printable


def add_commands(subparsers: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``run``, ``status`` and ``ledger`` to the CLI's subparsers; return their handlers by name."""
    run = subparsers.add_parser("run", help="run the daemon: watch the inboxes until SIGTERM",
                                description="Watch the configured inboxes and process new images. SIGTERM/SIGINT "
                                            "finish running jobs and exit; SIGHUP reloads the config.")
    run.add_argument("--config", "-c", type=Path, help="YAML config (default: ./inbox → ./outbox, state in ./.srd)")
    run.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="how long SIGTERM waits for running jobs (default: 30)")

    status = subparsers.add_parser(
        "status", help="show the daemon's status: per inbox health, queued, running, done, failed, last error",
        description="Read state_dir/status.json (read-only; works while the daemon runs, and even when the config "
                    "has errors) and say whether that daemon is alive. Exit status 0: running; 3: not running. "
                    "With --check: 0 healthy, 3 not running, 9 running but unhealthy.")
    status.add_argument("--config", "-c", type=Path, help="YAML config (for state_dir)")
    status.add_argument("--state-dir", type=Path, help="read this state folder; no config needed")
    status.add_argument("--json", action="store_true",
                        help="print the status document as JSON, with alive, health and reasons added")
    status.add_argument("--check", action="store_true",
                        help="print one line (healthy / unhealthy: why / not running: why) and exit 0 / 9 / 3: "
                             "for scripts and container health checks")

    ledger = subparsers.add_parser("ledger", help="inspect, edit or repair the processing ledger",
                                   description="The ledger records every input processed. 'list', 'show' and "
                                               "'check' work while the daemon runs; it is the one writer, so stop "
                                               "it before 'retry', 'forget' or 'repair'.")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    listing = ledger_sub.add_parser("list", help="list entries, oldest change first",
                                    description="List ledger entries, oldest change first, with a header line. "
                                                "Names that are not valid UTF-8 are shown with \\xNN escapes.")
    listing.add_argument("--state", choices=[s.value for s in State], help="only entries in this state")
    listing.add_argument("--since", type=_since, metavar="WHEN",
                         help="only entries changed since WHEN: an ISO date or time (2026-12-01, "
                              "2026-12-01T08:00), or an age such as 30m, 12h, 7d")
    listing.add_argument("--inbox", metavar="PATH", help="only entries from this inbox (its path as configured)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line, no header")
    for name, text in (("show", "show one entry in full"),
                       ("retry", ("give a failed file another try: move it from the failed folder back into its "
                                  "inbox (its reason file is removed) with a fresh attempt budget")),
                       ("forget", ("remove an entry: its content will be processed again as new (into the same "
                                   "output name)"))):
        action = ledger_sub.add_parser(name, help=text, description=text)
        action.add_argument("key", help="entry key, or a unique prefix of it or of its sha256")
    ledger_sub.add_parser("check", help="read the ledger and report damage (exit 0: healthy)",
                          description="Read the snapshot and journal without changing them and list every "
                                      "problem a start would refuse. Exit status 0: healthy; 8: damaged (see "
                                      "'srd ledger repair').")
    ledger_sub.add_parser("repair", help="rebuild a damaged ledger from every intact record (daemon stopped)",
                          description="Keep every intact record (snapshot, or the previous snapshot if it is "
                                      "lost, plus each valid journal line) and write them as a new snapshot. "
                                      "Unusable lines are listed and saved as journal.jsonl.dropped-<time> in the "
                                      "state directory. Takes the lock: stop the daemon first.")
    for parser in ledger_sub.choices.values():
        parser.add_argument("--config", "-c", type=Path, help="YAML config (for state_dir)")
    return {"run": run_daemon, "status": show_status, "ledger": edit_ledger}


def run_daemon(args: argparse.Namespace) -> int:
    from srd.daemon.loop import Daemon
    from srd.daemon.signals import Signals

    config = load_config(args.config)
    check_real_folders(config)
    configure_logging(config.log_level, config.log_format)
    signals = Signals()
    signals.install()  # before starting: a SIGTERM during start-up stops the daemon as soon as it runs
    daemon = Daemon.start(config, config_path=args.config, signals=signals, drain_timeout=args.drain_timeout)
    return daemon.run()


def show_status(args: argparse.Namespace) -> int:
    where = locate_state_dir(args.config, args.state_dir)
    view = assess(read_status(where.path), state_dir=where.path)
    if args.json:
        print(json.dumps({**(view.status or {}), "alive": view.alive, "health": view.health.value,
                          "reasons": list(view.reasons), "state_dir_path": str(where.path),
                          "state_dir_from": where.origin}, indent=2, sort_keys=True))
    elif args.check:
        print(printable(check_line(view)))
    else:
        print(render(view, where))
    if args.check:
        return {Health.HEALTHY: ExitCode.OK, Health.UNHEALTHY: ExitCode.UNHEALTHY,
                Health.NOT_RUNNING: ExitCode.NOT_RUNNING}[view.health]
    return ExitCode.OK if view.alive else ExitCode.NOT_RUNNING


def _open_ledger(state_dir: Path, *, read_only: bool) -> Ledger:
    try:
        return Ledger.open(state_dir, read_only=read_only, create=False)
    except LockedError as exc:
        raise LockedError(f"{exc}; stop it first to change the ledger ('srd ledger list' and 'show' work while "
                          "it runs)") from None


def _find(ledger: Ledger, wanted: str) -> Entry:
    matches = [e for e in ledger.entries() if e.key == wanted]
    if not matches:
        matches = [e for e in ledger.entries() if e.key.startswith(wanted) or e.sha256.startswith(wanted)]
    if not matches:
        raise SrdError(f"no ledger entry matches {wanted!r}")
    if len(matches) > 1:
        keys = ", ".join(e.key[:20] + "…" for e in matches[:5])
        raise SrdError(f"{wanted!r} matches {len(matches)} entries ({keys}); give more of the key")
    return matches[0]


def _describe(entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key, "state": entry.state.value, "inbox": entry.inbox, "source": str(entry.source),
        "attempts": entry.attempts, "strikes": entry.strikes, "created_at": entry.created_at,
        "updated_at": entry.updated_at, "output": None if entry.output is None else str(entry.output),
        "output_size": entry.output_size, "error": entry.error, "disposition": entry.disposition,
        "losses": list(entry.losses),
    }


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _since(text: str) -> float:
    """``--since``: an age (``12h``) or an ISO date/time (local time unless it says otherwise), as a Unix time."""
    age = _AGE.fullmatch(text.strip())
    if age is not None:
        try:
            return (datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: float(age[1])})).timestamp()
        except OverflowError:  # older than the calendar: every entry is newer
            return float("-inf")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an age (30m, 12h, 7d) nor an ISO date/time") from None


def _list(ledger: Ledger, args: argparse.Namespace) -> ExitCode:
    entries = sorted(ledger.entries(), key=lambda e: e.updated_ts)
    inbox = None if args.inbox is None else str(Path(args.inbox).expanduser().absolute())
    shown = [e for e in entries
             if (args.state is None or e.state.value == args.state)
             and (args.since is None or e.updated_ts >= args.since)
             and (inbox is None or e.inbox in (inbox, args.inbox))]
    if args.json:
        for entry in shown:
            print(json.dumps(_describe(entry)))
        return ExitCode.OK
    print(f"{'KEY':<12}  {'STATE':<8} {'TRIES':>5}  {'UPDATED':<29}  {'SOURCE':<40}  OUTPUT / ERROR")
    for entry in shown:
        where = entry.output if entry.state == State.DONE else (entry.error or "")
        print(f"{entry.key[:12]}  {entry.state.value:<8} {entry.attempts:>5}  {entry.updated_at:<29}  "
              f"{printable(f'{entry.inbox}/{entry.source}'):<40}  {printable(str(where or ''))}")
    counts = ", ".join(f"{n} {state}" for state, n in ledger.counts().items())
    print(f"shown: {len(shown)} of {len(entries)}; total: {counts}")
    return ExitCode.OK


def _retry(ledger: Ledger, entry: Entry, config: Config) -> None:
    """Make a failed entry eligible again and move its file back from the failed folder into the inbox."""
    if entry.state != State.FAILED:
        raise SrdError(f"entry {entry.key} is {entry.state.value}; only failed entries can be retried")
    moved = _failed_file(entry, config)
    if moved is not None:
        back = Path(entry.inbox) / entry.source
        if os.path.lexists(back):
            raise SrdError(f"cannot put {printable(str(moved))} back: {printable(str(back))} exists; move one of "
                           "them aside and try again")
        inbox_root = Path(entry.inbox)
        failed_root = next(i.failed for i in config.inboxes if str(i.path) == entry.inbox)
        source = PurePosixPath(entry.source)
        try:
            move_file(failed_root, moved, inbox_root, source.parent, name=source.name)
        except OSError as exc:
            raise SrdError(f"cannot move {moved} back to {back}: {exc.strerror or exc}; nothing was changed") from exc
    ledger.retry(entry.key)
    if moved is not None:
        with contextlib.suppress(OSError):  # a stale reason file is removed by the file's next success anyway
            report_path(moved).unlink(missing_ok=True)
        print(f"{entry.key}: moved {printable(str(moved))} back to {printable(str(Path(entry.inbox) / entry.source))};"
              " it is processed when the daemon runs")
    else:
        print(f"{entry.key}: eligible again, but its file is not in the failed folder: put it back into "
              f"{printable(entry.inbox)} yourself")


def _failed_file(entry: Entry, config: Config) -> Path | None:
    """Where the failed folder holds this entry's file: the reason file beside it names it and its sha256."""
    inbox = next((i for i in config.inboxes if str(i.path) == entry.inbox), None)
    if inbox is None:
        return None
    folder = inbox.failed / PurePosixPath(entry.source).parent
    for report in sorted(folder.glob("*.error.json")) if folder.is_dir() else ():
        try:
            details = json.loads(report.read_text(encoding="utf-8", errors="surrogateescape"))
        except (OSError, ValueError):
            continue
        moved = Path(details.get("moved_to", ""))
        if details.get("sha256") == entry.sha256 and moved.parent == folder and moved.is_file():
            return moved
    return None


def _print_problems(heading: str, problems: Sequence[str]) -> None:
    print(heading)
    for problem in problems:
        print(f"  {printable(problem)}")


def _check(config: Config) -> ExitCode:
    report = check_ledger(config.state_dir)
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items())
    if not report.problems:
        print(f"ledger {printable(str(config.state_dir))} is healthy: {counts}")
        return ExitCode.OK
    _print_problems(f"ledger {printable(str(config.state_dir))} is damaged ({len(report.problems)} problem(s)):",
                    report.problems)
    print(f"after 'srd ledger repair' it would hold: {counts}; what the damaged parts held is forgotten, and "
          "those inputs are processed again (put missing files back from a backup first to keep them)")
    return ExitCode.LEDGER


def _repair(config: Config) -> ExitCode:
    try:
        report = repair_ledger(config.state_dir)
    except LockedError as exc:
        raise LockedError(f"{exc}; stop it first to repair the ledger") from None
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items())
    if not report.problems:
        print(f"ledger {printable(str(config.state_dir))} is healthy, nothing to repair: {counts}")
        return ExitCode.OK
    _print_problems(f"ledger {printable(str(config.state_dir))} repaired; it holds {counts}. What was wrong:",
                    report.problems)
    for kept in report.dropped_to:
        print(f"the dropped lines are kept in {printable(str(kept))}")
    return ExitCode.OK


def edit_ledger(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging("warning", config.log_format)
    if args.ledger_command == "check":
        return _check(config)
    if args.ledger_command == "repair":
        return _repair(config)
    read_only = args.ledger_command in ("list", "show")  # these work beside a running daemon
    with _open_ledger(config.state_dir, read_only=read_only) as ledger:
        if args.ledger_command == "list":
            return _list(ledger, args)
        entry = _find(ledger, args.key)
        if args.ledger_command == "show":
            print(json.dumps(_describe(entry), indent=2))
        elif args.ledger_command == "retry":
            _retry(ledger, entry, config)
        else:
            ledger.forget(entry.key)
            print(f"{entry.key}: forgotten; its content will be processed again when seen")
        return ExitCode.OK
