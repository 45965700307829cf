"""Small helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (argparse
    then names the option in its error, e.g. ``--topk -5``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be an integer >= {minimum}, not {text!r}')
        return value
    return parse
