"""`python -m srd` is the `srd` command."""

from srd.cli import main

main()
