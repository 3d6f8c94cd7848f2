"""`python -m workflow` is the same as `mega`."""

from workflow.cli import main

main()
