"""Every error walletd raises sits in the tree drawn at the top of `walletd.errors`, as drawn."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re

import walletd
from walletd import errors

# Outside the tree on purpose, each named in errors.py's "Not in the tree, and why": one module's
# private control flow (a leading underscore), walletctl's exit, and the test doubles' own.
OUTSIDE = {"walletd.cli.walletctl_client.CtlError"}
OUTSIDE_PACKAGES = ("walletd.testing",)

_DRAWN = re.compile(r"^    (?P<prefix>[│├└─ ]*)(?P<name>[A-Z]\w+)\b")


def _walletd_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a walletd module, by dotted name."""
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(walletd.__path__, "walletd."):
        spec = importlib.util.find_spec(module.name)
        if module.name.endswith(".__main__") or not (spec and str(spec.origin).endswith(".py")):
            continue  # the CLI run on import; the fast-open library (not a Python module)
        mod = importlib.import_module(module.name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.name:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def _drawing() -> dict[str, str | None]:
    """The tree in errors.py's docstring: each drawn class and the class drawn as its parent."""
    doc = errors.__doc__ or ""
    block = doc.split("The hierarchy::", 1)[1].split("\n\n`", 1)[0]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in block.splitlines():
        match = _DRAWN.match(line)
        if match is None:
            continue
        depth = len(match["prefix"]) // 4
        del stack[depth:]
        parents[match["name"]] = stack[-1] if stack else None
        stack.append(match["name"])
    return parents


def test_every_error_is_defined_in_errors() -> None:
    """No module defines an error of its own, but for the ones errors.py names as outside."""
    strays = [
        name
        for name, cls in _walletd_exceptions().items()
        if cls.__module__ != "walletd.errors"
        and not cls.__name__.startswith("_")
        and name not in OUTSIDE
        and not cls.__module__.startswith(OUTSIDE_PACKAGES)
    ]
    assert strays == []


def test_the_drawing_is_the_hierarchy() -> None:
    """Every error class of errors.py is drawn once, under the class it derives from."""
    drawn = _drawing()
    defined = {
        cls.__name__: cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == "walletd.errors"
    }
    assert set(drawn) - {"ValueError"} == set(defined)
    for name, cls in defined.items():
        assert drawn[name] == cls.__bases__[0].__name__ or (
            drawn[name] is None and cls is errors.WalletdError
        ), name


def test_every_error_is_exported() -> None:
    """errors.py exports each of its error classes (the edge and the tests import them)."""
    defined = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == "walletd.errors"
    }
    assert defined <= set(errors.__all__)
