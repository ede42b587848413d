"""The daemon's side of its inbox claims (`claim.py`): heartbeats off the loop, and which inboxes are paused
because their claim is not trusted (docs/design.md §3, "Claim").

An inbox whose claim is not trusted (lost to another daemon, or unconfirmed after a freeze) takes no new
file, and the outcomes of its jobs wait: another daemon may own its files now.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from srd.config import Config
from srd.daemon.claim import InboxClaims
from srd.daemon.inboxes import InboxRuntime
from srd.daemon.offload import Done, Offloader
from srd.executors.pool import Outcome

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HeartbeatToken:
    """An off-loop heartbeat of one inbox's claim."""

    inbox: Path


class ClaimGuard:
    """The inbox claims this daemon holds, and the inboxes (with their files and outcomes) waiting for one."""

    def __init__(self, claims: InboxClaims, offload: Offloader) -> None:
        self.inbox_claims = claims
        self._offload = offload
        # Inboxes whose claim is not trusted, with the files that wait for it, and the outcomes of their jobs,
        # finished once the claim is confirmed again.
        self.paused: dict[str, set[Path]] = {}
        self.parked: dict[str, list[Outcome]] = {}
        self._heartbeats: set[Path] = set()  # inboxes whose claim heartbeat is out in the offloader

    def heartbeat(self) -> None:
        """Send the claims' due heartbeats off the loop."""
        for inbox in self.inbox_claims.due():
            if inbox not in self._heartbeats:  # one at a time per inbox, in its own offload group: a share that
                self._heartbeats.add(inbox)  # hangs holds up its own claim (and inbox) only
                self._offload.submit(str(inbox), HeartbeatToken(inbox),
                                     functools.partial(self.inbox_claims.heartbeat, inbox))

    def heartbeat_back(self, token: HeartbeatToken, done: Done) -> None:
        self._heartbeats.discard(token.inbox)
        if done.error is not None:  # the heartbeat logs what it expects; anything else is a bug
            log.error("inbox_claim_heartbeat_crashed", inbox=str(token.inbox), error=repr(done.error))

    def keep(self, runtimes: Mapping[str, InboxRuntime], withdraw: Callable[[str], set[Path]],
             finish: Callable[[Outcome], None]) -> None:
        """Heartbeat the inbox claims when due, and pause or resume each inbox as its claim is trusted or not.

        An inbox whose claim is not trusted takes no new file, its jobs not yet started are withdrawn, and
        the outcomes of its running jobs wait: another daemon may own its files now, so none of them is
        moved, deleted or failed. Checked at every pass, so a daemon resumed after a freeze pauses before
        it touches a file.
        """
        self.heartbeat()
        for key, runtime in runtimes.items():
            trusted = self.inbox_claims.trusted(runtime.inbox.path)
            if not trusted:
                self.pause(key, withdraw)
            elif key in self.paused:
                self._resume(key, runtime, finish)
        # An inbox a reload removed while paused stays so: its parked outcomes are recorded as interrupted at
        # shutdown, or finished if a later reload brings it back and claims it.

    def pause(self, key: str, withdraw: Callable[[str], set[Path]]) -> None:
        """Pause the inbox: `withdraw` takes back its jobs not yet started, whose files then wait."""
        if key in self.paused:
            return
        waiting = self.paused[key] = set()
        withdrawn = withdraw(key)
        waiting |= withdrawn
        claim = self.inbox_claims.describe(Path(key))
        log.warning("inbox_paused_claim_untrusted", inbox=key, claim=claim["state"], reason=claim["reason"],
                    withdrawn=len(withdrawn))

    def _resume(self, key: str, runtime: InboxRuntime, finish: Callable[[Outcome], None]) -> None:
        waiting = self.paused.pop(key)
        parked = self.parked.pop(key, [])
        log.info("inbox_resumed_claim_confirmed", inbox=key, waiting=len(waiting), parked=len(parked))
        for path in waiting:
            runtime.tracker.hint(path)
        for outcome in parked:
            finish(outcome)

    def untrusted(self, inbox_key: str, inbox: Path) -> bool:
        """Whether the inbox is paused for its claim, or should be now."""
        return inbox_key in self.paused or not self.inbox_claims.trusted(inbox)

    def claim_new_inboxes(self, config: Config) -> list[Path]:
        """Claim the inboxes `config` adds; all or none (raises what `InboxClaims.acquire` raises)."""
        claimed: list[Path] = []
        try:
            for inbox in config.inboxes:
                if inbox.path not in self.inbox_claims.held:
                    self.inbox_claims.acquire(inbox.path)
                    claimed.append(inbox.path)
        except BaseException:
            for path in claimed:
                self.inbox_claims.release(path)
            raise
        return claimed
