"""Hub-style checkpoints (`ebt.hub`, `ebt.runs.Pretrained`): save_pretrained writes a loadable run
directory with a model card, from_pretrained / ebt.load read it back (or a Hub id from the
Hugging Face cache), push_to_hub uploads the same folder.

No test reaches the network: every test sets HF_HUB_OFFLINE=1 and a Hugging Face cache of its
own; the upload is a fake HfApi. Text runs are trained 2 steps (seconds); the image and video
runs are untrained (config and weights only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, constants

import ebt
import ebt.hub
import ebt.train
from conftest import random_ids, tiny_config
from ebt.checkpoint import CONFIG, DATA, ENCODER, METRICS, TOKENIZER, TRAIN_STATE, WEIGHTS, save_config, save_weights
from ebt.checkpoint import validation_rows, weights_step
from ebt.errors import CheckpointError
from ebt.models import build_model
from ebt.runs import Pretrained, PretrainedTransformerPP
from test_images import tiny_image_config
from test_input_reliability import video_run

CARD = "README.md"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash for a hand-made cache entry


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 (the variable, and huggingface_hub's copy read at import) and an empty
    Hugging Face cache of the test's own; returns the cache."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, Path]:
    """A tiny text EBT and Transformer++ trained 2 steps, each with its validation in metrics.jsonl."""
    dirs = {}
    for kind in ("ebt", "transformer"):
        dirs[kind] = tmp_path_factory.mktemp(f"hub-{kind}")
        ebt.train.train(tiny_config(kind, corpus_file, {"train.steps": 2}), dirs[kind], quiet=True)
    return dirs


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    """EBT: the logits (B, S, V) of 3 thinking steps, best of 2, from a fixed generator;
    Transformer++: its logits (B, S, V)."""
    ids = random_ids(2, 16, high=256)
    if isinstance(model, PretrainedTransformerPP):
        with torch.no_grad():
            return model(ids)
    return model.think(ids, steps=3, samples=2, generator=torch.Generator().manual_seed(0)).y


def cache_entry(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder` as the Hugging Face cache keeps a download of model `repo_id` at main: returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_save_pretrained_round_trips_weights_outputs_and_files(kind: str, runs, tmp_path: Path) -> None:
    model = ebt.load(runs[kind])
    out = tmp_path / "export"
    assert model.save_pretrained(out) is None
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG, WEIGHTS, TOKENIZER, DATA, METRICS, CARD])
    loaded = ebt.load(out)
    assert type(loaded) is type(model) and same_state(loaded, model)
    assert torch.equal(outputs(loaded), outputs(model))
    assert json.loads((out / CONFIG).read_text()) == json.loads((runs[kind] / CONFIG).read_text())
    assert weights_step(out / WEIGHTS) == weights_step(runs[kind] / WEIGHTS) == 2
    assert validation_rows(out) == validation_rows(runs[kind])


def test_load_run_reads_an_export_as_a_run_directory(runs, tmp_path: Path) -> None:
    source = ebt.load_run(runs["ebt"])
    source.model.save_pretrained(tmp_path / "export")
    run = ebt.load_run(tmp_path / "export")
    assert run.tokenizer.to_json() == source.tokenizer.to_json()
    assert (run.step, run.config, run.path) == (source.step, source.config, tmp_path / "export")
    assert run.model.run is run and same_state(run.model, source.model)


def test_from_pretrained_loads_an_export_and_checks_the_kind(runs, tmp_path: Path) -> None:
    model = ebt.load(runs["ebt"])
    model.save_pretrained(tmp_path / "export")
    export = tmp_path / "export"
    for loaded in (type(model).from_pretrained(export), Pretrained.from_pretrained(str(export))):
        assert type(loaded) is type(model) and same_state(loaded, model) and not loaded.training
    with pytest.raises(CheckpointError, match="holds a PretrainedAutoregressiveEBT .*'ebt'.*, not a PretrainedTransf"):
        PretrainedTransformerPP.from_pretrained(export)


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_model_card_has_hub_metadata_kind_recipe_and_last_validation(kind: str, runs, tmp_path: Path) -> None:
    ebt.load(runs[kind]).save_pretrained(tmp_path / "ebt-tiny")
    card = ModelCard.load(tmp_path / "ebt-tiny" / CARD)
    assert card.data.library_name == "energy-based-transformers" and card.data.license == "mit"
    assert {kind, "text", "model_hub_mixin"} <= set(card.data.tags) and card.data.pipeline_tag == "text-generation"
    last = validation_rows(runs[kind])[2]
    assert card.text.startswith("\n# ebt-tiny\n")
    for fragment in (f"| kind | `{kind}`", "arxiv.org/abs/2507.02092", "| steps | 2 |", "| batch | 8 sequences |",
                     "`synthetic.txt` (a local corpus)", "`byte`, 256 tokens", "at step 2",
                     f"| loss | {last['loss']:.6g} |", f"| ppl | {last['ppl']:.6g} |", 'ebt.load("OWNER/ebt-tiny")'):
        assert fragment in card.text, fragment
    assert ("| thinking | System 1: 2 steps; α learned from α₀ = 80" in card.text) == (kind == "ebt")
    assert "window_losses" not in card.text  # a list, not a figure


def test_model_card_credits_the_weights_with_no_later_validation(runs, tmp_path: Path) -> None:
    run = Path(shutil.copytree(runs["ebt"], tmp_path / "run"))
    with open(run / METRICS, "a") as log:  # a validation after the weights (as for a kept checkpoint)
        log.write(json.dumps({"step": 99, "split": "validation", "loss": 0.125}) + "\n")
    ebt.load(run).save_pretrained(tmp_path / "export")
    card = (tmp_path / "export" / CARD).read_text()
    assert "validation at step 2 " in card and "0.125" not in card


def test_push_to_hub_uploads_the_exported_folder(runs, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = []

    def create_repo(self, repo_id: str, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id: str, folder_path: str, repo_type: str, **kwargs) -> str:
        folder = Path(folder_path)  # a temporary folder, gone after the upload: read it now
        uploads.append({"repo_id": repo_id, "repo_type": repo_type, "files": sorted(p.name for p in folder.iterdir()),
                        "card": (folder / CARD).read_text(), "model": ebt.load(folder)})
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = ebt.load(runs["ebt"])
    assert model.push_to_hub("me/ebt-tiny") == f"https://huggingface.co/me/ebt-tiny/commit/{COMMIT}"
    upload = uploads[-1]
    assert (upload["repo_id"], upload["repo_type"]) == ("me/ebt-tiny", "model")
    assert upload["files"] == sorted([CONFIG, WEIGHTS, TOKENIZER, DATA, METRICS, CARD])
    assert "# ebt-tiny" in upload["card"] and 'ebt.load("me/ebt-tiny")' in upload["card"]
    assert same_state(upload["model"], model)


def test_save_pretrained_can_push_what_it_saved(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pushed = []
    monkeypatch.setattr(Pretrained, "push_to_hub", lambda self, repo_id, **kwargs: pushed.append(repo_id) or "url")
    model = ebt.load(runs["transformer"])
    assert model.save_pretrained(tmp_path / "tiny", push_to_hub=True, repo_id="me/tiny") == "url"
    assert pushed == ["me/tiny"] and (tmp_path / "tiny" / WEIGHTS).is_file()


def test_a_hub_id_is_read_from_the_hugging_face_cache_offline(runs, offline: Path, tmp_path: Path) -> None:
    model = ebt.load(runs["ebt"])
    model.save_pretrained(tmp_path / "export")
    snapshot = cache_entry(offline, "me/ebt-tiny", tmp_path / "export")
    run = ebt.load_run("me/ebt-tiny")
    assert run.path.resolve() == snapshot.resolve() and same_state(run.model, model)
    assert run.tokenizer.to_json() == model.run.tokenizer.to_json()
    assert same_state(ebt.load("me/ebt-tiny", revision=COMMIT), model)
    again = tmp_path / "again"  # a model from the cache exports again, with the card's figures
    run.model.save_pretrained(again)
    assert validation_rows(again) == validation_rows(runs["ebt"]) and "| loss |" in (again / CARD).read_text()


def test_a_hub_id_not_in_the_cache_offline_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"no run directory 'me/ebt-tiny' here, and the Hub model 'me/ebt-tiny' "
                                              r"is not in the Hugging Face cache .*HF_HUB_OFFLINE=1 forbids"):
        ebt.load("me/ebt-tiny")
    with pytest.raises(CheckpointError, match="'me/ebt-tiny' at revision 'v2' is not in the Hugging Face cache"):
        ebt.load_run("me/ebt-tiny", revision="v2")


def test_hub_downloads_ask_for_the_run_files_only_and_obey_the_variable(runs, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE is read when loading, not when huggingface_hub was imported."""
    ebt.load(runs["ebt"]).save_pretrained(tmp_path / "export")
    calls = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append((repo_id, kwargs))
        return str(tmp_path / "export")

    monkeypatch.setattr(ebt.hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if imported before the variable was set
    ebt.load("me/ebt-tiny", revision="v1")
    repo_id, kwargs = calls[-1]
    assert (repo_id, kwargs["revision"], kwargs["local_files_only"]) == ("me/ebt-tiny", "v1", True)
    assert {CONFIG, WEIGHTS, TOKENIZER, ENCODER} <= set(kwargs["allow_patterns"])
    assert TRAIN_STATE not in kwargs["allow_patterns"]
    with pytest.raises(CheckpointError, match="keeps no weights of step 1"):
        ebt.load_run("me/ebt-tiny", step=1)
    assert "checkpoints/step-1.safetensors" in calls[-1][1]["allow_patterns"]
    (tmp_path / "export" / CONFIG).unlink()
    with pytest.raises(CheckpointError, match="the Hub model 'me/ebt-tiny' is not an ebt run: it has no config.json"):
        ebt.load("me/ebt-tiny")


@pytest.mark.parametrize("path, message", [
    ("no/such/run", "run directory 'no/such/run' does not exist"),  # not an owner/name id: a local path
    ("missing-run", "run directory 'missing-run' does not exist"),
    (Path("me/ebt-tiny"), "run directory 'me/ebt-tiny' does not exist"),  # a Path is always local
])
def test_a_missing_local_path_keeps_its_error(path, message: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        ebt.load(path)


def test_revision_applies_to_hub_ids_only(runs) -> None:
    with pytest.raises(CheckpointError, match="revision = 'main' applies to a Hub id; .* is a local path"):
        ebt.load(runs["ebt"], revision="main")


def test_save_pretrained_refuses_a_training_run_a_file_and_a_config(runs, tmp_path: Path) -> None:
    model = ebt.load(runs["ebt"])
    before = {p.name: p.read_bytes() for p in runs["ebt"].iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match=r"holds a training run \(train_state.pt\)"):
        model.save_pretrained(runs["ebt"])
    assert {p.name: p.read_bytes() for p in runs["ebt"].iterdir() if p.is_file()} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="writes a directory; .*'.*file' is a file"):
        model.save_pretrained(tmp_path / "file")
    with pytest.raises(CheckpointError, match="config= is not accepted"):
        model.save_pretrained(tmp_path / "export", config={"model": {}})
    assert not (tmp_path / "export").exists()
    mine = tmp_path / "my-project"  # a folder of the user's own files is not written over
    mine.mkdir()
    (mine / "README.md").write_text("# my project\n")
    (mine / CONFIG).write_text('{"mine": true}\n')
    with pytest.raises(CheckpointError, match=r"holds files that are not an export of a model \(README.md, config"):
        model.save_pretrained(mine)
    assert (mine / "README.md").read_text() == "# my project\n"
    (mine / "README.md").unlink(), (mine / CONFIG).unlink()
    (mine / ".git").mkdir()  # a clone of an empty Hub repository: only hidden files
    model.save_pretrained(mine)
    assert ebt.load(mine).run.step == model.run.step
    del model.run
    with pytest.raises(CheckpointError, match="has no run"):
        model.save_pretrained(tmp_path / "export")


def test_an_export_overwrites_an_earlier_one_and_drops_its_stale_files(runs, tmp_path: Path) -> None:
    out = tmp_path / "export"
    ebt.load(runs["ebt"]).save_pretrained(out)
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # not ours: kept
    video = ebt.load_run(video_run(tmp_path / "video"))
    video.model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".gitattributes", CONFIG, WEIGHTS, ENCODER, CARD])
    loaded = ebt.load_run(out)
    assert loaded.config.model.task == "video" and same_state(loaded.model, video.model)
    assert torch.equal(loaded.frame_encoder.components, video.frame_encoder.components)
    card = (out / CARD).read_text()
    assert "next-frame prediction on video" in card and "held no validation" in card


@pytest.mark.parametrize("kind", ["ebt", "dit"])
def test_image_models_export_and_load(kind: str, tmp_path: Path) -> None:
    config = tiny_image_config(kind)
    run = tmp_path / "run"
    run.mkdir()
    save_config(run, config)
    save_weights(run, build_model(config), step=7, config=config)
    model = ebt.load(run)
    model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted([CONFIG, WEIGHTS, CARD])
    loaded = ebt.load_run(tmp_path / "export")
    assert type(loaded.model) is type(model) and same_state(loaded.model, model) and loaded.step == 7
    card = ModelCard.load(tmp_path / "export" / CARD)
    assert card.data.pipeline_tag == "image-to-image" and f"| kind | `{kind}`" in card.text
