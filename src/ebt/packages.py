"""Packages that only some features need (trackers, plots, lm-evaluation-harness, the Austen corpus,
the scaling fit's offset), imported when a feature first uses them, and their failures as one line.

An installed package can fail to import with any exception, not only ImportError: wandb with a
mismatched protobuf raises TypeError, a package built against another numpy raises AttributeError
or ValueError, a missing shared library OSError. `import_package` turns every such failure into a
`PackageError` naming the package, what needs it, the error and the fix (install it, or reinstall
it when it is installed but broken); `broken_package_line` does the same for an import that already
failed, naming the package the traceback went through (the command line's own imports).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from types import ModuleType

from ebt.errors import EBTError


class PackageError(EBTError, ImportError):
    """A package a feature needs is not installed, or is installed but fails to import. An
    ImportError too, so that code which tolerates a missing package tolerates a broken one."""


def import_package(module: str, *, needed_for: str, package: str | None = None, pip: str | None = None,
                   otherwise: str = "", field: str | None = None) -> ModuleType:
    """`importlib.import_module(module)`, or PackageError in one line whatever the import raised.

    `package`: the import name of the distribution (default: `module`'s first part; e.g.
    "tensorboard" for "torch.utils.tensorboard"); `pip`: what to install (default `package`);
    `needed_for`: what needs it, in the API's words ("train.log_to = 'wandb'"); `otherwise`: an
    alternative that needs no package ("set train.log_to to 'none'"); `field`: the API field. A
    broken install is reinstalled by its distribution's name (PIL: Pillow), whatever `pip` says."""
    package = package or module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except (Exception, SystemExit) as err:  # noqa: BLE001  a broken install raises anything
        raise PackageError(package_line(package, err, needed_for=needed_for, pip=pip, otherwise=otherwise),
                           field=field) from None


def package_line(package: str, err: BaseException, *, needed_for: str, pip: str | None = None,
                 otherwise: str = "") -> str:
    """The one line for `package` failing to import with `err`: not installed (install it with
    `pip install PIP`) or installed but broken (the error, where it was raised, and how to reinstall)."""
    tail = f", or {otherwise}" if otherwise else ""
    if not _installed(package):
        return (f"{needed_for} needs the package {package}, which is not installed; install it with: "
                f"pip install {pip or package}{tail}")
    where = _raised_in(err)
    inside = f" in {where}" if where and where.partition(".")[0] != package else ""
    return (f"{needed_for} needs the package {package}, which is installed but fails to import "
            f"({type(err).__name__}{inside}: {_first_line(err)}); reinstall it with: "
            f"pip install --force-reinstall {_distribution(package)}{tail}")


def broken_package_line(err: BaseException, what: str = "ebt") -> str | None:
    """The one line for an import of ours that failed inside a third-party package (the first
    module outside ebt that the traceback went through), or None when it failed in ebt itself."""
    names = [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(err.__traceback__)]
    outside = [n for n in names if n and n != "__main__" and n.partition(".")[0] not in ("ebt", "importlib")]
    if not outside:
        missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
        if not missing or missing.partition(".")[0] == "ebt":
            return None
        outside = [missing]
    package = outside[0].partition(".")[0]
    return package_line(package, err, needed_for=what)


def _installed(package: str) -> bool:
    if package in sys.modules:
        return sys.modules[package] is not None  # None: imports of it are blocked, as if not installed
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without a spec
        return True


def _distribution(package: str) -> str:
    """The name pip knows the distribution that holds import package `package` by."""
    try:
        return importlib.metadata.packages_distributions().get(package, [package])[0]
    except Exception:  # noqa: BLE001  damaged metadata: the import name is the best guess
        return package


def _raised_in(err: BaseException) -> str | None:
    """The module whose code raised `err` (the traceback's last frame), for a broken package's line."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    names = [f.f_globals.get("__name__", "") for f in frames if not f.f_globals.get("__name__", "").startswith("importlib")]
    if isinstance(err, ModuleNotFoundError) and err.name:
        return None  # the message names the missing module
    return names[-1] if names else None


def _first_line(err: BaseException, limit: int = 200) -> str:
    """`err`'s message on one line: its first non-blank line, cut at `limit` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else "no message"
    return line if len(line) <= limit else line[: limit - 1] + "…"
