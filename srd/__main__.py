"""`python -m srd` is the `srd` command."""

from srd.cli.main import main

main()
