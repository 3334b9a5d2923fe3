"""Argument checks at the boundary: one helper per kind of value, each error naming the
argument, the value it got and what to pass instead.

Every public config dataclass (:mod:`rlhf_utils.config`) checks its fields with these when
it is built, and every public entry point checks its arguments with them once, at the top,
so a bad value fails at once with a clear message -- never later, deep inside numpy, torch or
transformers, and never silently (a ``str`` where a list of prompts is expected is refused,
not read as a list of characters). Pure Python: importing it costs nothing.
"""

from __future__ import annotations

import dataclasses
import numbers


def _say(name: str, value, rule: str, fix: str = "") -> str:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return f"{name}={shown}: {rule}" + (f"; {fix}" if fix else "")


def check_int(name: str, value, low: int | None = 1, fix: str = "") -> int:
    """``value`` as an int ``>= low`` (``low=None``: any int); a bool or a float is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_say(name, value, f"must be a whole number (int), not {type(value).__name__}", fix))
    if low is not None and value < low:
        raise ValueError(_say(name, value, f"must be at least {low}", fix))
    return int(value)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, allow_inf: bool = False, fix: str = "") -> float:
    """``value`` as a float in the interval given (``low_open``: ``low`` itself excluded);
    NaN is always refused, +-inf unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_say(name, value, f"must be a number, not {type(value).__name__}", fix))
    v = float(value)
    if v != v or (v in (float("inf"), float("-inf")) and not allow_inf):
        raise ValueError(_say(name, value, "must be a finite number", fix))
    if (low is not None and (v < low or (low_open and v == low))) or \
            (high is not None and (v > high or (high_open and v == high))):
        if low is not None and high is not None:
            rule = f"is outside {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        else:
            rule = f"must be {'>' if low_open else '>='} {low:g}" if low is not None else \
                f"must be {'<' if high_open else '<='} {high:g}"
        raise ValueError(_say(name, value, rule, fix))
    return v


def check_texts(name: str, value, what: str = "texts", allow_empty: bool = False) -> list[str]:
    """``value`` as a list of str. One string is refused (it would be read as a list of its
    characters), so is a non-string item, naming its index."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of {what}, got one {type(value).__name__} {value[:40]!r}: "
                        f"wrap it in a list, [{value[:20]!r}]")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of {what} (str), got {type(value).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] is {type(item).__name__} {item!r:.60}: every one of the {what} must be a str")
    if not items and not allow_empty:
        raise ValueError(f"{name} is empty: pass at least one of the {what}")
    return items


def _check_fields(cfg, ints: str = "", ints0: str = "", positive: str = "", nonneg: str = "", unit: str = "",
                  flags: str = "", inf_ok: str = "", optional: str = "", choices: dict | None = None) -> None:
    """Check a config's fields by kind (space-separated names): ints >= 1, ints0 >= 0, positive
    and nonneg numbers (finite unless in ``inf_ok``), unit in [0, 1], flags (bool), optional
    (None or > 0), ``choices`` (name -> allowed values), and ``seed`` (any int). Each error
    names the config, the field, the value, and the field's default as an example."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    where = type(cfg).__name__

    def fix(name: str) -> str:
        return f"e.g. {where}({name}={defaults[name]!r}) (the default)"

    for name in ints.split():
        check_int(f"{where}.{name}", getattr(cfg, name), 1, fix(name))
    for name in ints0.split():
        check_int(f"{where}.{name}", getattr(cfg, name), 0, fix(name))
    for name in positive.split():
        check_number(f"{where}.{name}", getattr(cfg, name), 0, low_open=True, allow_inf=name in inf_ok.split(),
                     fix=fix(name))
    for name in nonneg.split():
        check_number(f"{where}.{name}", getattr(cfg, name), 0, fix=fix(name))
    for name in unit.split():
        check_number(f"{where}.{name}", getattr(cfg, name), 0, 1, fix=fix(name))
    for name in flags.split():
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(_say(f"{where}.{name}", getattr(cfg, name), "must be True or False", fix(name)))
    for name in optional.split():
        if getattr(cfg, name) is not None:
            check_number(f"{where}.{name}", getattr(cfg, name), 0, low_open=True, fix=f"or None; {fix(name)}")
    for name, allowed in (choices or {}).items():
        check_choice(f"{where}.{name}", getattr(cfg, name), allowed)
    if hasattr(cfg, "seed"):
        check_int(f"{where}.seed", cfg.seed, None, fix("seed"))


def _check_sizes(where: str, name: str, sizes) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(_say(f"{where}.{name}", sizes, "must be a tuple of whole numbers, e.g. (64, 64)"))
    return tuple(check_int(f"{where}.{name}[{i}]", s, 1) for i, s in enumerate(sizes))


def _divisors(n: int, up_to: int | None = None) -> list[int]:
    return [d for d in range(1, min(n, up_to or n) + 1) if n % d == 0]


def check_choice(name: str, value, choices: tuple) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(_say(name, value, "must be one of " + ", ".join(map(repr, choices))))


def check_tuples(name: str, items, n: int, what: str) -> list[tuple[str, ...]]:
    """``items`` as a list of ``n``-tuples of str (``what`` names their fields), or a clear error."""
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise TypeError(f"{name} must be a list of {what} tuples, got {type(items).__name__} {items!r:.40}")
    out = [tuple(x) if isinstance(x, (tuple, list)) else x for x in items]
    for i, x in enumerate(out):
        if not isinstance(x, tuple) or len(x) != n or not all(isinstance(t, str) for t in x):
            raise TypeError(f"{name}[{i}] is {x!r:.80}: each must be {what}, all str")
    return out


# --------------------------------------------------------------------------------------
# Command lines: a bad argument or a failed run is one line on stderr and a non-zero exit
# --------------------------------------------------------------------------------------


def cli_parser(prog: str, description: str):
    """An ``argparse`` parser whose errors are one line (``prog: error: ...``), exit status 2,
    and which takes ``--debug`` (a failed run shows its traceback)."""
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message: str):
            self.exit(2, f"{prog}: error: {message} (see --help)\n")

    parser = OneLineParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def exit_on_error(prog: str, debug: bool, run, *args):
    """``run(*args)``; an exception becomes one line on stderr and ``SystemExit``: status 2 for
    a bad input (``ValueError``, ``TypeError``, ``OSError`` such as a missing file), 1 for any
    other failure, 130 for Ctrl-C. With ``debug`` the exception propagates, traceback and all."""
    import sys

    try:
        return run(*args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        if debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {text}", file=sys.stderr)
        raise SystemExit(2 if isinstance(exc, (ValueError, TypeError, OSError)) else 1) from None
