"""`python -m detrkit COMMAND ...`: the same as the `detrkit` console script.

setup.py maps this folder onto the `detrkit` namespace package; it holds no `__init__.py`, so `detrkit` stays a
namespace whose sub-packages (modeling, processing, training, ...) live in their own top-level folders.
"""
import sys

from detrkit.cli.dispatch import main

if __name__ == "__main__":
    sys.exit(main())
