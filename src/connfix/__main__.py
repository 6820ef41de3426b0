"""`python -m connfix`."""

from connfix.cli import main

main()
