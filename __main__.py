"""`python -m ferrumc` runs the command line."""

from .cli import main

main()
