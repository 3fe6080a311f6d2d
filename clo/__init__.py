"""Cross-Lingual Optimization (CLO, Lee et al., ACL 2025) as a small library.

    from clo.config import Recipe
    from clo.train.run import train
    train(Recipe.load("recipes/demo.yaml"))

or from the shell: `python -m clo prepare|train --help`.
"""

from pathlib import Path

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parent.parent  # the project folder: recipes/, assets/, adapters/, models/


class CLOError(Exception):
    """A problem with the user's input or environment, explained in one sentence.

    The command line prints the message and exits with status 2; no traceback.
    """


def _quiet_known_noise() -> None:
    import logging

    # bitsandbytes' CPU backend tries to fetch an optional kernel from the hub at import and warns when it
    # cannot; its own fallback kernel is used, so the warning says nothing a user can act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


_quiet_known_noise()
