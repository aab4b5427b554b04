"""``python -m jobworker.cli``, the same as the ``jobworker`` console script."""

from . import main

main()
