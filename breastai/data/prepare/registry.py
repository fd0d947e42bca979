"""The preparers behind ``breastai prepare``: a small registry.

A preparer turns one dataset layout into a datalist: ``run(root, out, **options)`` writes it and
returns a :class:`~breastai.data.prepare.report.PrepareReport`. Each preparer module registers a
:class:`Preparer` when it is imported, and :mod:`breastai.data.prepare` imports them all, in the
order the command lists them.

A preparer's options are declared here as plain data (:class:`Option`), beside the function
they feed, so that a new preparer is one module and one import: the command line
(:mod:`breastai.cli.prepare`) builds a sub-command for every registered preparer without naming
any, and is the only place that knows argparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from breastai.data.prepare.report import PrepareReport

__all__ = ["Option", "Preparer", "register_preparer", "preparers", "get_preparer"]


@dataclass(frozen=True)
class Option:
    """One keyword option of a preparer, offered on the command line as ``--name-with-dashes``.

    Attributes:
        name: the keyword of :attr:`Preparer.run` it sets, e.g. ``include_normal``.
        help: one line for ``--help``.
        type: turns the command-line text into the value (``float``, ``Path``); None keeps the text.
        default: the value when the option is not given.
        choices: the values allowed, or None for any.
        switch: an on/off flag that takes no value: False unless given.
    """

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[Any, ...] | None = None
    switch: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--include-normal`` for ``include_normal``."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Preparer:
    """A dataset layout that ``breastai prepare NAME ROOT --out FILE`` turns into a datalist.

    Attributes:
        name: the sub-command, e.g. ``busi``.
        run: ``run(root, out, **options) -> PrepareReport``; ``root`` is the dataset folder and
            ``out`` the datalist to write (``.csv`` or ``.json``).
        help: one line in the list of datasets.
        description: the paragraph that ``--help`` of the sub-command shows.
        root_help: what the dataset folder holds.
        options: the keyword options of ``run`` besides ``root`` and ``out``.
    """

    name: str
    run: Callable[..., PrepareReport]
    help: str
    description: str
    root_help: str
    options: tuple[Option, ...] = ()


_PREPARERS: dict[str, Preparer] = {}


def register_preparer(preparer: Preparer) -> Preparer:
    """Add ``preparer`` (listed after those registered before it) and return it.

    Raises:
        ValueError: a preparer of that name is registered already (two datasets cannot share a
            sub-command), or the name is ``merge``.
    """
    if preparer.name == "merge":  # the command's own sub-command (breastai.data.prepare.merge)
        raise ValueError("the name 'merge' is taken by 'breastai prepare merge'")
    if preparer.name in _PREPARERS:
        raise ValueError(f"a preparer named {preparer.name!r} is registered already")
    _PREPARERS[preparer.name] = preparer
    return preparer


def preparers() -> list[Preparer]:
    """The registered preparers, in registration order."""
    return list(_PREPARERS.values())


def get_preparer(name: str) -> Preparer:
    """The preparer registered as ``name``.

    Raises:
        KeyError: no such preparer; the message lists the registered ones.
    """
    if name not in _PREPARERS:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(_PREPARERS)}")
    return _PREPARERS[name]
