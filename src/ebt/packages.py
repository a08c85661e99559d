"""Packages that only some features need (trackers, plots, lm-evaluation-harness, the Austen corpus,
the scaling fit's offset), imported when a feature first uses them, and their failures as one line.

An installed package can fail to import with any exception, not only ImportError: wandb with a
mismatched protobuf raises TypeError, a package built against another numpy raises AttributeError
or ValueError, a missing shared library OSError. `import_package` turns every such failure into a
`PackageError` naming the package, what needs it, the error, where the failing copy lives and the
fix (install it; reinstall it when the installed copy is broken; remove a copy that shadows it or
that no installed distribution holds, which a reinstall cannot reach); `broken_package_line` does
the same for an import that already failed, naming the package the traceback went through (the
command line's own imports).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from pathlib import Path
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
    `pip install PIP`) or installed but broken: the error, the module that raised it, where the copy
    that failed lives, and the fix for that copy — reinstalling when it is the installed one; removing
    it when it shadows the installed one or when no installed distribution holds it (a stray folder
    on PYTHONPATH or in the working directory, which a reinstall cannot reach)."""
    tail = f", or {otherwise}" if otherwise else ""
    if not _installed(package):
        return (f"{needed_for} needs the package {package}, which is not installed; install it with: "
                f"pip install {pip or package}{tail}")
    where = _raised_in(err)
    inside = f" in {where}" if where and where.partition(".")[0] != package else ""
    copy = _copy_at(package)
    at = f" from {copy}" if copy else ""
    return (f"{needed_for} needs the package {package}, which is installed but fails to import{at} "
            f"({type(err).__name__}{inside}: {_first_line(err)}); {_fix(package, copy, pip)}{tail}")


def _fix(package: str, copy: str | None, pip: str | None) -> str:
    """How to repair the copy of `package` at `copy` (see `package_line`)."""
    dist = _distributions().get(package, [None])[0]
    if dist is None and copy:
        return (f"no installed distribution holds that copy: remove or rename it (or take its folder off "
                f"PYTHONPATH), then if needed: pip install {pip or package}")
    dist = dist or package
    installed = _installed_copy(package, dist)
    if copy and installed and _same(copy, installed) is False:
        return (f"that copy shadows the installed {dist} at {installed}, which a reinstall cannot reach: "
                f"remove or rename it, or take its folder off PYTHONPATH")
    return f"reinstall it with: pip install --force-reinstall {dist}"


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


def _distributions() -> dict[str, list[str]]:
    """Import package → the distributions pip knows it by (`{}` when the metadata is damaged)."""
    try:
        return dict(importlib.metadata.packages_distributions())
    except Exception:  # noqa: BLE001  damaged metadata: nothing is known
        return {}


def _copy_at(package: str) -> str | None:
    """Where the copy of `package` that Python imports lives: its folder (a package) or its file (a
    module), as the import system finds it; None when it cannot tell."""
    module = sys.modules.get(package)
    path = getattr(module, "__file__", None)
    if not path:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
        path = spec.origin if spec.has_location and spec.origin else (locations[0] if locations else None)
    if path and Path(path).name.startswith("__init__."):
        path = str(Path(path).parent)
    return path


def _installed_copy(package: str, dist: str) -> str | None:
    """Where distribution `dist` installed `package` (its folder or module file), None when unknown
    (an editable install, damaged metadata)."""
    try:
        found = importlib.metadata.distribution(dist)
        candidates = [Path(str(found.locate_file(package))), Path(str(found.locate_file(f"{package}.py")))]
    except Exception:  # noqa: BLE001  damaged metadata
        return None
    return next((str(c) for c in candidates if c.exists()), None)


def _same(a: str, b: str) -> bool | None:
    """Whether two paths are one file or folder; None when either cannot be looked at."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return None


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
