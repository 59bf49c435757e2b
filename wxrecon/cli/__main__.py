"""``python -m wxrecon.cli``: the same as the ``wxrecon`` console script."""

from wxrecon.cli import main

main()
