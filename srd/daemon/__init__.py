"""`srd run`: the watch-folder daemon (docs/design.md §2).

Nothing is imported here, so that a module outside the daemon (the one-shot command's use of `outbox`,
the CLI's of `status`) imports only what it names.
"""
