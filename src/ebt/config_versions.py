"""Config files of earlier versions read in the current layout (`ebt.config.RunConfig.from_dict`).

Version 1 kept every modality's fields in every run and some fields in other sections
(`MOVED_KEYS`); a command line using an old key is told the new one.
"""

from __future__ import annotations

from typing import Any, Collection

from ebt.errors import ConfigError

CONFIG_VERSION = 2  # config.json files without a version (1) are migrated on load (`migrate`)

# Keys of version 1 config files and command lines, and where they live now.
MOVED_KEYS = {
    "model.vocab_size": "text.vocab_size", "data.tokenizer": "text.tokenizer",
    "data.bpe_vocab_size": "text.bpe_vocab_size",
    "model.image_size": "image.image_size", "model.channels": "image.channels",
    "model.patch_size": "image.patch_size", "model.noise_level": "image.noise_level",
    "model.latent_dim": "video.latent_dim", "data.frame_encoder": "video.frame_encoder",
    "data.encoder_dim": "video.encoder_dim", "data.clips": "video.clips",
    "train.eval_windows": "train.eval_examples",
}


def migrate(d: dict[str, Any], task_sections: Collection[str], batch_size: int) -> dict[str, Any]:
    """A config.json of any earlier version in the current layout (keys moved by MOVED_KEYS; the
    validation budget counted in examples, where images counted batches before). `task_sections`:
    the sections of one task each (text, image, video); `batch_size`: train.batch_size's default.
    ConfigError when the version is not one this library reads."""
    version = d.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(f"version = {version!r} is not a config version this library reads (1 … {CONFIG_VERSION}); "
                          "a newer library wrote it, or the file was edited")
    if version == CONFIG_VERSION:
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    task = d.get("model", {}).get("task", "text") if isinstance(d.get("model"), dict) else "text"
    for old, new in MOVED_KEYS.items():
        old_section, old_name = old.split(".")
        section, name = new.split(".")
        values = d.get(old_section)
        if not isinstance(values, dict) or old_name not in values:
            continue
        value = values.pop(old_name)
        if section in task_sections and section != task:
            continue  # version 1 kept every modality's fields in every run; only the run's own survive
        d.setdefault(section, {})[name] = value
    train = d.get("train")
    if task == "image" and isinstance(train, dict) and isinstance(train.get("eval_examples"), int):
        train["eval_examples"] *= train.get("batch_size", batch_size)  # was: batches of images
    d["version"] = CONFIG_VERSION
    return d
