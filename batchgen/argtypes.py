"""Number types for command-line options, shared by `batchgen` and `batchgen emulator`:
argparse turns the ArgumentTypeError into a one-line usage error (exit 2) naming the
option, its value and the rule broken."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def number(
    text: str, kind: Callable[[str], Number], ok: Callable[[Number], bool], rule: str
) -> Number:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text} must be {rule}")
    return value


def non_negative(text: str) -> float:
    return number(text, float, lambda v: v >= 0, "0 or more")


def positive(text: str) -> float:
    return number(text, float, lambda v: v > 0, "greater than 0")


def positive_int(text: str) -> int:
    return number(text, int, lambda v: v >= 1, "at least 1")


def fraction(text: str) -> float:
    return number(text, float, lambda v: 0 <= v <= 1, "between 0 and 1")
