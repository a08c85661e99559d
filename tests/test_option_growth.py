"""Option growth is a reviewed event: the config's fields, the command line's flags, the thinking
options and lm-eval's model_args are compared with a snapshot kept in the repository, so a new
(or removed, or renamed) field or flag changes `tests/fixtures/options.json` in the same commit.

After a deliberate change, write the snapshot again and commit it with the change:

    .venv/bin/python tests/test_option_growth.py --update
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "options.json"


def _flags(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """Every (sub)command's option strings (with their defaults) and positionals, by command name."""
    found: dict[str, list[str]] = {}
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_flags(sub, f"{prefix} {name}".strip()))
        elif not isinstance(action, argparse._HelpAction):
            name = "/".join(action.option_strings) if action.option_strings else f"<{action.dest}>"
            names.append(f"{name} (default {action.default!r})" if action.default is not None else name)
    if names:
        found[prefix or "ebt"] = sorted(names)
    return found


def current() -> dict:
    import ebt
    from ebt import config
    from ebt.cli import build_parser
    from ebt.harness import MODEL_ARGS

    sections = {"model": config.ModelConfig, "think": config.ThinkConfig, "train": config.TrainConfig,
                "data": config.DataConfig, "text": config.TextConfig, "image": config.ImageConfig,
                "video": config.VideoConfig}
    assert set(sections) == {f.name for f in dataclasses.fields(config.RunConfig)}, "a config section is missing here"
    return {"config": {name: sorted(f.name for f in dataclasses.fields(cls)) for name, cls in sections.items()},
            "flags": _flags(build_parser()),
            "thinking_options": sorted(f.name for f in dataclasses.fields(ebt.ThinkingOptions)),
            "model_args": sorted(MODEL_ARGS)}


def test_options_match_the_snapshot() -> None:
    saved = json.loads(SNAPSHOT.read_text())
    now = current()
    for part in saved.keys() | now.keys():
        assert saved.get(part) == now.get(part), (
            f"the {part} changed: {json.dumps(now.get(part), indent=1)[:2000]}\nIf the change is meant, run "
            "`.venv/bin/python tests/test_option_growth.py --update` and commit tests/fixtures/options.json with it")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    SNAPSHOT.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
