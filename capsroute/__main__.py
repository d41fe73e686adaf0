"""`python -m capsroute` is the same as the `capsroute` command."""

from capsroute.cli import main

main()
