"""The daemon's subcommands — ``srd run``, ``srd status``, ``srd ledger …`` — for `srd.cli` to mount.

Handlers return an exit status and raise `SrdError`s; `srd.cli` maps those to exit codes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from srd.config import load_config
from srd.errors import LockedError, SrdError
from srd.ledger import Entry, Ledger, State
from srd.logs import configure_logging
from srd.status import pid_alive, read_status

# LSB convention for "status": 3 means the program is not running.
NOT_RUNNING = 3


def add_commands(subparsers: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``run``, ``status`` and ``ledger`` to the CLI's subparsers; return their handlers by name."""
    run = subparsers.add_parser("run", help="run the daemon: watch the inboxes until SIGTERM",
                                description="Watch the configured inboxes and process new images. SIGTERM/SIGINT "
                                            "finish running jobs and exit; SIGHUP reloads the config.")
    run.add_argument("--config", "-c", type=Path, help="YAML config (default: ./inbox → ./outbox, state in ./.srd)")
    run.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="how long SIGTERM waits for running jobs (default: 30)")

    status = subparsers.add_parser("status", help="show the daemon's status (running or not)",
                                   description="Read state_dir/status.json and say whether that daemon is alive. "
                                               "Exit status 0: running; 3: not running.")
    status.add_argument("--config", "-c", type=Path, help="YAML config (for state_dir)")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    ledger = subparsers.add_parser("ledger", help="inspect or edit the processing ledger",
                                   description="The ledger records every input processed. 'list' and 'show' work "
                                               "while the daemon runs; it is the one writer, so stop it before "
                                               "'retry' or 'forget'.")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    listing = ledger_sub.add_parser("list", help="list entries")
    listing.add_argument("--state", choices=[s.value for s in State], help="only entries in this state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, text in (("show", "show one entry in full"),
                       ("retry", "make a failed entry eligible again (move its file back into the inbox)"),
                       ("forget", "remove an entry: its content will be processed again as new")):
        action = ledger_sub.add_parser(name, help=text, description=text)
        action.add_argument("key", help="entry key, or a unique prefix of it or of its sha256")
    for parser in ledger_sub.choices.values():
        parser.add_argument("--config", "-c", type=Path, help="YAML config (for state_dir)")
    return {"run": run_daemon, "status": show_status, "ledger": edit_ledger}


def run_daemon(args: argparse.Namespace) -> int:
    from srd.daemon import Daemon

    config = load_config(args.config)
    configure_logging(config.log_level, config.log_format)
    daemon = Daemon(config, config_path=args.config, drain_timeout=args.drain_timeout)
    daemon.install_signal_handlers()
    return daemon.run()


def show_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    status = read_status(config.state_dir)
    if status is None:
        print(f"srd is not running: no status in {config.state_dir} (it has not run with this state_dir)")
        return NOT_RUNNING
    alive = pid_alive(int(status.get("pid", 0))) and status.get("state") != "stopped"
    if args.json:
        print(json.dumps({**status, "alive": alive}, indent=2, sort_keys=True))
        return 0 if alive else NOT_RUNNING
    if alive:
        started = datetime.fromisoformat(status["started_at"])
        uptime = int((datetime.now(UTC) - started).total_seconds())
        print(f"srd is {status['state']} (pid {status['pid']}, up {uptime // 3600}h{uptime // 60 % 60:02d}m"
              f"{uptime % 60:02d}s, config {status['config']})")
    else:
        print(f"srd is not running (last seen pid {status.get('pid')} {status.get('state')} at "
              f"{status.get('updated_at')}; figures below are from then)")
    pool = status.get("pool", {})
    print(f"  workers {status.get('workers')}, running {pool.get('running', 0)}, pool rebuilds "
          f"{pool.get('rebuilds', 0)}; ledger {status.get('ledger')}")
    for job in status.get("running", []):
        limit = f"limit {job['limit_s']} s" if job.get("limit_s") is not None else "no limit"
        warning = "; far longer than expected, the worker may be stuck" if job.get("stuck_suspected") else ""
        print(f"  running {job['source']} for {job['elapsed_s']} s ({limit}{warning})")
    if status.get("last_reload_error"):
        print(f"  last reload rejected: {status['last_reload_error']}")
    for inbox in status.get("inboxes", []):
        print(f"  {inbox['path']} [{inbox['health']}, {inbox['watch']}"
              + (f", degraded: {inbox['degraded']}" if inbox.get("degraded") else "") + "]")
        outbox_state = inbox.get("outbox_state") or {"state": "ok"}
        if outbox_state["state"] != "ok":
            print(f"    outbox unwritable since {outbox_state['since']}, {outbox_state['waiting']} input(s) waiting: "
                  f"{outbox_state['error']}")
        print(f"    settling {inbox['settling']}, queued {inbox['queued']}, in flight {inbox['in_flight']}, "
              f"done {inbox['done']}, failed {inbox['failed']}, duplicates {inbox['duplicates']}")
        if inbox.get("last_error"):
            err = inbox["last_error"]
            print(f"    last error {err['time']}: {err['source']}: {err['reason']}")
    return 0 if alive else NOT_RUNNING


def _open_ledger(state_dir: Path, *, read_only: bool) -> Ledger:
    try:
        return Ledger.open(state_dir, read_only=read_only)
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
        "attempts": entry.attempts, "created_at": entry.created_at, "updated_at": entry.updated_at,
        "output": None if entry.output is None else str(entry.output), "output_size": entry.output_size,
        "error": entry.error, "disposition": entry.disposition,
    }


def edit_ledger(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging("warning", config.log_format)
    read_only = args.ledger_command in ("list", "show")  # these work beside a running daemon
    with _open_ledger(config.state_dir, read_only=read_only) as ledger:
        if args.ledger_command == "list":
            entries = sorted(ledger.entries(), key=lambda e: e.updated_ts)
            for entry in entries:
                if args.state and entry.state.value != args.state:
                    continue
                if args.json:
                    print(json.dumps(_describe(entry)))
                else:
                    where = entry.output if entry.state == State.DONE else (entry.error or "")
                    print(f"{entry.key[:12]}  {entry.state.value:<8} {entry.attempts}  {entry.updated_at}  "
                          f"{entry.inbox}/{entry.source}  {where}")
            counts = ledger.counts()
            if not args.json:
                print("total: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
            return 0
        entry = _find(ledger, args.key)
        if args.ledger_command == "show":
            print(json.dumps(_describe(entry), indent=2))
        elif args.ledger_command == "retry":
            if entry.state != State.FAILED:
                raise SrdError(f"entry {entry.key} is {entry.state.value}; only failed entries can be retried")
            ledger.retry(entry.key)
            print(f"{entry.key}: eligible again; move the file from the failed folder back into {entry.inbox}")
        else:
            ledger.forget(entry.key)
            print(f"{entry.key}: forgotten; its content will be processed again when seen")
        return 0
