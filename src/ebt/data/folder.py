"""Which files of a corpus directory are its documents (`corpus_files`), as a user means them and
as dataset loaders read a folder, and an account of what was read and left out (`CorpusFiles`).

- .txt and .jsonl files are read, whatever the case of their extension (`.TXT`, `.JSONL`);
  every other file is ignored and counted by its (lower-case) extension.
- Hidden files and folders (a name starting with ".", e.g. a notebook's .ipynb_checkpoints/
  copies) are skipped, and so is whatever ebt wrote (`ebt_output`: a run, a prepared corpus, a
  sweep), which is never text to train on.
- Symbolic links are followed to what they point at, file or folder, when it lies outside the
  corpus. A link is skipped, and reported, when it is broken, when it points inside the corpus
  (what it points at is read there, once: a second copy would put documents in both splits), when
  it points at the corpus or a folder holding it (a loop), or at what was already read through
  another link.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ebt.errors import DataError

CORPUS_SUFFIXES = (".txt", ".jsonl")

# Why a symbolic link was not followed: its key in `CorpusFiles.counts` and its words in the summary.
LINK_REASONS = {"broken_link": "broken", "link_inside": "inside the corpus, read there",
                "link_loop": "loops back to the corpus", "link_repeat": "already read at another path"}


@dataclass(frozen=True)
class CorpusFiles:
    """The files a corpus directory is read from (`corpus_files`), and what was left out and why."""

    files: tuple[Path, ...]  # read, in this order (sorted by path)
    hidden: tuple[str, ...] = ()  # hidden files and folders, relative: ".ipynb_checkpoints/", ".notes.txt"
    outputs: tuple[str, ...] = ()  # what ebt wrote, relative: "runs/a (a run directory)"
    ignored: tuple[tuple[str, int], ...] = ()  # (suffix, count) of the other files, e.g. (".md", 2)
    followed: tuple[str, ...] = ()  # links followed, relative: "shared/" (a folder), "extra.txt" (a file)
    links: tuple[tuple[str, str], ...] = ()  # (relative path, a key of LINK_REASONS): links, or paths
    # through them, not read

    def summary(self) -> str:
        """One line: "read 3 .txt/.jsonl files; skipped 1 hidden folder (.ipynb_checkpoints/) ...";
        each list names at most four paths or suffixes (beyond that, three and how many more)."""
        parts = [f"read {len(self.files)} .txt/.jsonl file{'s' * (len(self.files) != 1)}"
                 + (f" (following {len(self.followed)} link(s): {_few(self.followed)})" if self.followed else "")]
        if self.hidden:
            parts.append(f"skipped {len(self.hidden)} hidden file(s) or folder(s) ({_few(self.hidden)})")
        if self.outputs:
            parts.append(f"skipped {len(self.outputs)} ebt output(s) ({_few(self.outputs)})")
        if self.links:
            parts.append(f"skipped {len(self.links)} linked path(s) "
                         f"({_few([f'{name}: {LINK_REASONS[why]}' for name, why in self.links])})")
        if self.ignored:
            count = sum(n for _, n in self.ignored)
            parts.append(f"ignored {count} other file(s) ({_few([f'{s} ×{n}' for s, n in self.ignored])})")
        return "; ".join(parts)

    def counts(self) -> dict:
        """The summary as numbers (for `--json`): {"read": N, "followed_links": N, "skipped":
        {reason: N}, "ignored": {suffix: N}}, reasons "hidden", "ebt_output" and LINK_REASONS' keys."""
        skipped = Counter({"hidden": len(self.hidden), "ebt_output": len(self.outputs)})
        skipped.update(why for _, why in self.links)
        return {"read": len(self.files), "followed_links": len(self.followed),
                "skipped": {reason: n for reason, n in skipped.items() if n}, "ignored": dict(self.ignored)}


def _few(names) -> str:
    """Up to four names in full; more: the first three and how many more (never "and 1 more")."""
    names = list(names)
    return ", ".join(names) if len(names) <= 4 else ", ".join(names[:3]) + f", and {len(names) - 3} more"


def ebt_output(path: Path) -> str | None:
    """What ebt wrote at directory `path`, in words ("a run directory", "a prepared corpus", "a
    scaling sweep"), or None: none of these is ever read as a corpus's text."""
    if (path / "config.json").is_file() and any((path / name).exists() for name in _RUN_MARKS):
        return "a run directory"
    if (path / "index.json").is_file() and ((path / "tokenizer.json").is_file() or next(path.glob("*.tokens"), None)):
        return "a prepared corpus"
    if (path / "sweep.json").is_file():
        return "a scaling sweep"
    return None


# A run directory's files besides config.json (`ebt.checkpoint`; named here, where data is read).
_RUN_MARKS = ("model.safetensors", "train_state.pt", "metrics.jsonl", "checkpoints")


def corpus_files(path: Path) -> CorpusFiles:
    """The .txt and .jsonl files under directory `path` (any case of extension), sorted by path,
    read as the module docstring says: hidden files and folders and ebt outputs skipped, links
    followed outside the corpus and reported where not. DataError when `path` itself is an ebt
    output."""
    kind = ebt_output(path)
    if kind is not None:
        raise DataError(f"{str(path)!r} is {kind}, not a corpus: give the folder of .txt or .jsonl files"
                        + (" (training reads a prepared corpus as it is)" if kind == "a prepared corpus" else ""))
    walk = _Walk(path)
    for folder, dirs, names in os.walk(path, followlinks=True):
        here = Path(folder)
        dirs[:] = [name for name in sorted(dirs) if walk.enter(here / name)]  # os.walk descends only into these
        for name in sorted(names):
            walk.take(here / name)
    return CorpusFiles(tuple(sorted(walk.files)), tuple(sorted(walk.hidden)), tuple(sorted(walk.outputs)),
                       tuple(sorted(walk.ignored.items(), key=lambda item: (-item[1], item[0]))),
                       tuple(sorted(walk.followed)), tuple(sorted(walk.links)))


class _Walk:
    """What `corpus_files` has found so far, and its decision on each folder and file."""

    def __init__(self, root: Path) -> None:
        self.root, self.real_root = root, root.resolve()
        self.files: list[Path] = []
        self.hidden: list[str] = []
        self.outputs: list[str] = []
        self.ignored: Counter = Counter()
        self.followed: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.seen = {self.real_root}  # the real paths of the folders and files read so far

    def _name(self, where: Path, folder: bool = False) -> str:
        return where.relative_to(self.root).as_posix() + ("/" if folder else "")

    def _read(self, where: Path, folder: bool) -> bool:
        """Whether to read `where`, a folder or a .txt/.jsonl file or link, by where it really is
        (noting the link followed, or why it is skipped)."""
        link, real = where.is_symlink(), where.resolve()
        why = None
        if link and not real.exists():
            why = "broken_link"
        elif link and folder and (real == self.real_root or real in self.real_root.parents):
            why = "link_loop"
        elif link and real.is_relative_to(self.real_root):
            why = "link_inside"
        elif real in self.seen:  # reached again through a link: its documents once only
            why = "link_repeat"
        if why is not None:
            self.links.append((self._name(where, folder), why))
            return False
        self.seen.add(real)
        if link:
            self.followed.append(self._name(where, folder))
        return True

    def enter(self, where: Path) -> bool:
        """Whether to read the folder `where`."""
        kind = None if where.name.startswith(".") else ebt_output(where)
        if where.name.startswith("."):
            self.hidden.append(self._name(where, True))
        elif kind is not None:
            self.outputs.append(f"{self._name(where)} ({kind})")
        else:
            return self._read(where, True)
        return False

    def take(self, file: Path) -> None:
        """Read, skip or ignore the file `file` (a broken link to a folder comes here too)."""
        suffix = file.suffix.lower()
        if file.name.startswith("."):
            self.hidden.append(self._name(file))
        elif suffix in CORPUS_SUFFIXES and (file.is_file() or file.is_symlink()) or not file.exists():
            if self._read(file, False) and file.is_file():
                self.files.append(file)
        else:
            self.ignored[suffix or "no extension"] += 1
