"""Which files of a corpus directory are its documents (`corpus_files`), as a user means them and
as dataset loaders read a folder, and an account of what was read and left out (`CorpusFiles`).

- Files of the formats `CORPUS_SUFFIXES` names (.txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet;
  `ebt.data.formats` reads them) are read, whatever the case of their extension (`.TXT`,
  `.JSONL.GZ`); every other file is ignored and counted by its (lower-case) last extension.
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

# The extensions of the files a corpus is read from, multi-part ones whole (`corpus_suffix`).
CORPUS_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


def corpus_suffix(path: Path) -> str | None:
    """The suffix of CORPUS_SUFFIXES that `path`'s name ends with, in any case (the longest:
    "a.JSONL.gz" is ".jsonl.gz"), or None; a name that is only the suffix (".jsonl") has none."""
    name = path.name.lower()
    found = [s for s in CORPUS_SUFFIXES if name.endswith(s) and len(name) > len(s)]
    return max(found, key=len) if found else None


def allowed_suffixes() -> str:
    """CORPUS_SUFFIXES in words: ".txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet"."""
    return ", ".join(CORPUS_SUFFIXES[:-1]) + f" or {CORPUS_SUFFIXES[-1]}"

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
        """One line: "read 3 corpus files (.parquet ×2, .txt ×1); skipped 1 hidden folder
        (.ipynb_checkpoints/) ..."; each list names at most four paths or suffixes (beyond that,
        three and how many more)."""
        formats = f" ({_few([f'{s} ×{n}' for s, n in self.formats.items()])})" if self.files else ""
        parts = [f"read {len(self.files)} corpus file{'s' * (len(self.files) != 1)}{formats}"
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
        """The summary as numbers (for `--json`): {"read": N, "formats": {suffix: N}, "followed_links":
        N, "skipped": {reason: N}, "ignored": {suffix: N}}, reasons "hidden", "ebt_output" and
        LINK_REASONS' keys; formats by CORPUS_SUFFIXES (lower case), most files first."""
        skipped = Counter({"hidden": len(self.hidden), "ebt_output": len(self.outputs)})
        skipped.update(why for _, why in self.links)
        return {"read": len(self.files), "formats": self.formats, "followed_links": len(self.followed),
                "skipped": {reason: n for reason, n in skipped.items() if n}, "ignored": dict(self.ignored)}


    @property
    def formats(self) -> dict[str, int]:
        """How many files of each suffix of CORPUS_SUFFIXES are read, most first (then by suffix)."""
        counts = Counter(corpus_suffix(file) for file in self.files)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


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
    """The corpus files under directory `path` (CORPUS_SUFFIXES, any case), sorted by path,
    read as the module docstring says: hidden files and folders and ebt outputs skipped, links
    followed outside the corpus and reported where not. DataError when `path` itself is an ebt
    output."""
    kind = ebt_output(path)
    if kind is not None:
        raise DataError(f"{str(path)!r} is {kind}, not a corpus: give the folder of corpus files "
                        f"({allowed_suffixes()})"
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
        """Whether to read `where`, a folder or a corpus file or link, by where it really is
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
        elif corpus_suffix(file) and (file.is_file() or file.is_symlink()) or not file.exists():
            if self._read(file, False) and file.is_file():
                self.files.append(file)
        else:
            self.ignored[suffix or "no extension"] += 1
