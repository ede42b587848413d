"""`srd web`: a small web page to upload photos into an inbox and watch them come out (the `web` extra).

It runs as a process of its own, beside `srd run`: it only writes new files into inboxes (atomically) and
reads the ledger, the status file and the outboxes, so a crash or a flood of uploads here can't stop the
daemon. docs/design.md §13.
"""
