"""Bad input ends in one clear error, never a bare traceback: damaged run files, prompts that are
not UTF-8, contexts the model cannot read, thinking that diverges; and run files get the mode a
plain open() would give them.

Damaged runs are copies of the session's tiny trained runs (conftest `trained_runs`), or, for
video and BPE, runs written by hand from untrained tiny models (loading needs no training).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import ebt
from conftest import tiny_config, tiny_model
from ebt.checkpoint import save_weights
from ebt.files import atomic_write
from ebt.cli import main
from ebt.data.tokenizers import ByteTokenizer, build_tokenizer, tokenizer_from_json
from ebt.data.video import FrameEncoder
from ebt.errors import CheckpointError, ConfigError, DataError, ThinkingDiverged
from ebt.generate import generate
from ebt.models import build_model
from ebt.presets import preset
from ebt.rundata.text import load_tokenizer
from ebt.think import think

DAMAGES = ("empty", "truncated", "garbage")
TEXT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # random bytes of the same length, the same every run
        path.write_bytes(random.Random(0).randbytes(len(data)))


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def video_run(out: Path) -> Path:
    """An untrained tiny video EBT run: config, a random 5-d PCA frame encoder, weights."""
    config = preset("video-ebt-tiny")
    for key, value in {"model.n_layers": "1", "model.dim": "16", "model.n_heads": "2", "model.context_len": "4",
                       "video.encoder_dim": "5"}.items():
        config = config.override(key, value)
    config.video.latent_dim = 5
    out.mkdir()
    atomic_write(out / "config.json", lambda p: p.write_text(config.to_json()))
    components = torch.linalg.qr(torch.randn(1024, 5, generator=torch.Generator().manual_seed(0)))[0].T
    FrameEncoder("pca", 32, torch.zeros(1024), 1.0, components.contiguous()).save(out / "encoder.safetensors")
    save_weights(out, build_model(config), step=0, config=config)
    return out


def text_run(out: Path, tokenizer) -> Path:
    """An untrained tiny text EBT run with the given tokenizer."""
    config = tiny_config("ebt", overrides={"model.n_layers": 1, "model.dim": 16})
    config.text.vocab_size = tokenizer.vocab_size
    config.text.tokenizer = tokenizer.kind
    out.mkdir()
    atomic_write(out / "config.json", lambda p: p.write_text(config.to_json()))
    atomic_write(out / "tokenizer.json", lambda p: p.write_text(tokenizer.to_json()))
    save_weights(out, build_model(config), step=0, config=config)
    return out


def assert_one_line_naming(err: str, file: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert file in lines[0], lines[0]


# --- A. Damaged run files ------------------------------------------------------------------------


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("file", TEXT_FILES)
def test_damaged_text_run_file_is_one_clear_error(file: str, how: str, trained_runs, tmp_path: Path, capsys) -> None:
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    ebt.load_run(run)  # the copy loads before it is damaged
    damage(run / file, how)
    with pytest.raises(CheckpointError, match=file) as info:
        ebt.load_run(run)
    assert "\n" not in str(info.value)
    for argv in (["eval", str(run)], ["generate", str(run), "--prompt", "x", "--max-new-tokens", "2"]):
        capsys.readouterr()
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert_one_line_naming(err, file)
        assert err.startswith(f"ebt {argv[0]}: error: ")


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_video_encoder_is_one_clear_error(how: str, tmp_path: Path, capsys) -> None:
    run = video_run(tmp_path / "video")
    ebt.load_run(run)
    damage(run / "encoder.safetensors", how)
    with pytest.raises(CheckpointError, match="encoder.safetensors"):
        ebt.load_run(run)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert_one_line_naming(capsys.readouterr().err, "encoder.safetensors")


@pytest.mark.parametrize("content, fragments", [
    ("[]", ["an array", "model, think, train, data"]),
    ('"x"', ["a string", "an object"]),
    ("null", ["null"]),
    ("\ufeff{}", ["not valid JSON"]),  # a byte-order mark
])
def test_config_json_that_is_not_an_object_is_a_checkpoint_error(content: str, fragments: list[str], trained_runs,
                                                                 tmp_path: Path) -> None:
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    (run / "config.json").write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match="config.json") as info:
        ebt.load_run(run)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("section, key, value, fragments", [
    ("model", None, [], ["'model'", "an object"]),
    ("model", "dim", "abc", ["model.dim = 'abc'", "an integer"]),
    ("model", "n_layers", True, ["model.n_layers", "an integer"]),
    ("think", "step_size", "fast", ["think.step_size", "a number"]),
    ("think", "learn_step_size", 1, ["think.learn_step_size", "true or false"]),
    ("model", "width", 3, ["model", "width", "dim"]),
])
def test_config_field_of_the_wrong_type_is_a_checkpoint_error_naming_it(section: str, key: str | None, value,
                                                                        fragments: list[str], trained_runs,
                                                                        tmp_path: Path) -> None:
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    saved = json.loads((run / "config.json").read_text())
    if key is None:
        saved[section] = value
    else:
        saved[section][key] = value
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="config.json") as info:
        ebt.load_run(run)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("section, key, value, trained", [
    ("model", "n_heads", 4, 2),  # the same weight shapes, another attention
    ("model", "context_len", 64, 16),  # the same weights, another window
    ("model", "rope_theta", 500.0, 10000.0),
    ("text", "tokenizer", "bpe", "'byte' tokenizer"),  # contradicts tokenizer.json
])
def test_a_config_that_contradicts_its_weights_or_tokenizer_is_refused_naming_the_field(
        section: str, key: str, value, trained, trained_runs, tmp_path: Path, capsys) -> None:
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    saved = json.loads((run / "config.json").read_text())
    saved[section][key] = value
    (run / "config.json").write_text(json.dumps(saved))
    said = f"says {section}.{key} = {value!r}"
    with pytest.raises(CheckpointError, match=r"config\.json") as info:
        ebt.load_run(run)
    assert said in str(info.value) and str(trained) in str(info.value), str(info.value)
    for argv in (["eval", str(run)], ["train", "--resume", "--out", str(run), "--quiet"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert_one_line_naming(err, said)


def test_an_export_records_its_model_and_a_hand_edit_is_refused(trained_runs, tmp_path: Path) -> None:
    export = tmp_path / "export"
    ebt.load(trained_runs["ebt"]["dir"]).save_pretrained(export)
    saved = json.loads((export / "config.json").read_text())
    saved["model"]["n_heads"] = 8
    (export / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=r"says model.n_heads = 8, but .*model.safetensors was trained with "
                                              r"model.n_heads = 2"):
        ebt.load_run(export)


def test_weights_saved_before_the_record_still_load(trained_runs, tmp_path: Path) -> None:
    """Weights whose metadata has the step only (written before the model section was recorded)
    are not checked against config.json: they load as before."""
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    _rewrite_weights(run, lambda state: state)
    assert ebt.load_run(run).step == 1


def test_a_video_config_that_contradicts_its_frame_encoder_is_refused(tmp_path: Path) -> None:
    run = video_run(tmp_path / "video")
    saved = json.loads((run / "config.json").read_text())
    saved["video"]["frame_encoder"] = "pixels"
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=r"says video.frame_encoder = 'pixels', but .*encoder.safetensors holds "
                                              r"a 'pca' encoder"):
        ebt.load_run(run)


def _rewrite_weights(run: Path, change) -> None:
    state = load_file(str(run / "model.safetensors"))
    save_file(change(state), str(run / "model.safetensors"), metadata={"step": "1"})


def test_weights_of_an_integer_dtype_or_non_finite_are_refused(trained_runs, tmp_path: Path) -> None:
    run = copy_run(trained_runs["ebt"]["dir"], tmp_path)
    name = "energy_head.weight"
    _rewrite_weights(run, lambda state: {**state, name: state[name].round().to(torch.int64)})
    with pytest.raises(CheckpointError, match=rf"model.safetensors holds {name} as torch.int64"):
        ebt.load_run(run)
    _rewrite_weights(run, lambda state: {**state, name: torch.full(state[name].shape, float("nan"))})
    with pytest.raises(CheckpointError, match=rf"model.safetensors holds non-finite values in {name}"):
        ebt.load_run(run)


def test_damaged_bpe_tokenizer_names_its_file(tmp_path: Path) -> None:
    bpe = build_tokenizer("bpe", ["the cat sat on the mat"] * 8, 260)
    run = text_run(tmp_path / "bpe", bpe)
    assert ebt.load_run(run).tokenizer.vocab_size == bpe.vocab_size
    saved = json.loads((run / "tokenizer.json").read_text())
    for inner in (saved["hf_tokenizer"][:100], "{}", None):
        (run / "tokenizer.json").write_text(json.dumps({**saved, "hf_tokenizer": inner}))
        with pytest.raises(CheckpointError, match="tokenizer.json"):
            load_tokenizer(run)
        with pytest.raises(CheckpointError, match="tokenizer.json"):
            ebt.load_run(run)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        tokenizer_from_json('{"format": "ebt-tok')


def test_frame_encoder_of_wrong_dtype_shape_or_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "encoder.safetensors"
    good = {"mean": torch.zeros(16), "scale": torch.tensor(1.0), "components": torch.eye(16)[:3].contiguous()}
    cases = [
        ({**good, "mean": torch.zeros(16, dtype=torch.int32)}, {"kind": "pca", "size": "4"}, "mean as torch.int32"),
        ({**good, "components": torch.full((3, 16), float("nan"))}, {"kind": "pca", "size": "4"},
         "non-finite values in components"),
        ({**good, "mean": torch.zeros(9)}, {"kind": "pca", "size": "4"}, r"shape \(9,\) as mean"),
        (good, {"kind": "vae", "size": "4"}, "kind = 'vae'"),
        (good, {"kind": "pca"}, "size = None"),
        ({**good, "scale": torch.tensor(0.0)}, {"kind": "pca", "size": "4"}, "scale = 0"),
    ]
    for tensors, metadata, fragment in cases:
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(CheckpointError, match=fragment):
            FrameEncoder.load(path)
    save_file(good, str(path), metadata={"kind": "pca", "size": "4"})
    assert FrameEncoder.load(path).dim == 3


# --- B. Prompts that are not UTF-8 ---------------------------------------------------------------

NOT_UTF8 = "caf\udce9"  # how Python's argv holds the bytes b"caf\xe9"


def test_byte_tokenizer_takes_any_bytes_and_refuses_a_lone_surrogate() -> None:
    byte = ByteTokenizer()
    assert byte.encode(NOT_UTF8) == [0x63, 0x61, 0x66, 0xE9]
    assert byte.encode_batch([NOT_UTF8, "é"]) == [[0x63, 0x61, 0x66, 0xE9], [0xC3, 0xA9]]
    with pytest.raises(DataError, match=r"U\+D800 at position 1"):
        byte.encode("a\ud800")


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_bpe_tokenizers_refuse_text_that_is_not_utf8_clearly(kind: str) -> None:
    try:
        tokenizer = build_tokenizer(kind, ["the cat sat on the mat"] * 8, 260)
    except DataError as e:  # gpt2 needs an installed package
        pytest.skip(str(e))
    assert tokenizer.encode("café") == tokenizer.encode_batch(["café"])[0]
    for call in (lambda t: tokenizer.encode(t), lambda t: tokenizer.encode_batch(["ok", t])):
        with pytest.raises(DataError, match=rf"not valid UTF-8 \(byte 0xE9 at position 3\).*'{kind}' tokenizer"):
            call(NOT_UTF8)
        with pytest.raises(DataError, match=r"lone surrogate U\+D800 at position 0"):
            call("\ud800x")


def test_generate_refuses_a_non_utf8_prompt_for_bpe_in_one_line(tmp_path: Path, capsys) -> None:
    run = text_run(tmp_path / "bpe", build_tokenizer("bpe", ["the cat sat on the mat"] * 8, 260))
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", NOT_UTF8, "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert_one_line_naming(err, "byte 0xE9 at position 3")


def test_generate_continues_a_non_utf8_prompt_with_the_byte_tokenizer(trained_runs, capfd) -> None:
    # capfd's stdout replaces what it cannot encode; see the strict-stdout test below.
    capfd.readouterr()
    assert main(["generate", str(trained_runs["ebt"]["dir"]), "--prompt", NOT_UTF8, "--max-new-tokens", "2",
                 "--temperature", "0"]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("caf") and err == ""


def test_generate_output_of_a_non_utf8_prompt_is_printable_on_a_strict_stdout(trained_runs, capsys) -> None:
    assert main(["generate", str(trained_runs["ebt"]["dir"]), "--prompt", NOT_UTF8, "--max-new-tokens", "2"]) == 0


# --- C. The Python API ---------------------------------------------------------------------------


def ids_of(length: int, vocab: int = 11) -> Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))


def test_a_context_longer_than_context_len_is_refused_with_the_fix() -> None:
    ebt_model, transformer = tiny_model("ebt"), tiny_model("transformer")  # context_len 8
    long = ids_of(20)
    fix = r"ids has 20 positions but the model's context_len is 8; pass the last context_len tokens \(ids\[:, -8:\]\)"
    with pytest.raises(ConfigError, match=fix):
        ebt_model.think(long)
    with pytest.raises(ConfigError, match=fix):
        ebt_model.energy(long, torch.softmax(torch.randn(1, 20, 11, dtype=torch.float64), -1))
    with pytest.raises(ConfigError, match=fix):
        transformer(long)
    past: list = []
    transformer(long[:, :6], past=past)
    with pytest.raises(ConfigError, match="ids has 3 positions after the 6 a cache holds"):
        transformer(long[:, 6:9], past=past)
    with pytest.raises(ConfigError, match="ids has 3 positions after the 6 a cache holds"):
        ebt_model.encode_context(long[:, 6:9], past=ebt_model.encode_context(long[:, :6]))
    assert ebt_model.think(long[:, -8:]).y.shape == (1, 8, 11)  # the fix works
    assert len(generate(ebt_model, long[0].tolist(), 3, temperature=0)) == 3  # generation slides its window


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_ids_of_the_wrong_dtype_or_shape_are_refused(kind: str) -> None:
    model = tiny_model(kind)
    call = model.think if kind == "ebt" else model
    for ids, fragment in [(ids_of(4).float(), "torch.float32"), (ids_of(4)[0], r"shape \(4,\)"),
                          (ids_of(0), "no positions")]:
        with pytest.raises(ConfigError, match=fragment):
            call(ids)


def test_thinking_under_inference_mode_says_to_use_no_grad() -> None:
    model = tiny_model("ebt")
    with torch.inference_mode(), pytest.raises(ConfigError, match=r"torch.inference_mode\(\).*torch.no_grad\(\)"):
        model.think(ids_of(4))
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        think(lambda p, step: p.pow(2).sum(-1), torch.ones(1, 2, 3), steps=1, step_size=0.1)
    with torch.no_grad():
        assert model.think(ids_of(4)).y.shape == (1, 4, 11)


# --- D. Thinking that diverges -------------------------------------------------------------------


def quadratic(p: Tensor, step: int) -> Tensor:
    return p.pow(2).sum(-1)


@pytest.mark.parametrize("case, fragment", [
    ("step_size inf", r"step size α = inf makes the candidate non-finite at step 0"),
    ("langevin_std inf", r"langevin_std = inf makes the candidate non-finite at step 0"),
    ("energy nan", r"the energy is not finite at step 0"),
    ("energy nan at step 2", r"the energy is not finite at step 2"),
    ("float16 step overflow", r"α·∇E overflows torch.float16 \(largest finite value 6.55e\+04\) at step 0"),
    ("float16 energy overflow", r"the energy is not finite at step 0.*overflowed torch.float16"),
    ("nan start", r"the candidate thinking starts from is not finite"),
    # Finite, but past √(float32's largest value), where the next energy's squares overflow.
    ("step_size 1e20", r"the step α·∇E makes the candidate as large as 2e\+20 at step 0 \(α = 1e\+20\).*1.845e\+19"),
    ("langevin_std 1e25", r"langevin_std = 1e\+25 makes the candidate as large as .* at step 0"),
])
def test_divergence_names_its_cause(case: str, fragment: str) -> None:
    y, energy, options = torch.ones(1, 2, 4), quadratic, {"steps": 3, "step_size": 0.1}
    if case == "step_size inf":
        options["step_size"] = float("inf")
    elif case == "langevin_std inf":
        options["langevin_std"] = float("inf")
    elif case == "step_size 1e20":
        options["step_size"] = 1e20
    elif case == "langevin_std 1e25":
        options["langevin_std"] = 1e25
    elif case == "energy nan":
        energy = lambda p, step: quadratic(p, step) + float("nan")  # noqa: E731 (∇E is finite)
    elif case == "energy nan at step 2":
        energy = lambda p, step: quadratic(p, step) * (float("nan") if step == 2 else 1.0)  # noqa: E731
    elif case == "float16 step overflow":  # |α·∇E| = 1000 · 200 > 65504
        y, options["step_size"] = torch.full((1, 2, 4), 100.0, dtype=torch.float16), 1000.0
    elif case == "float16 energy overflow":  # 4 · 300² > 65504
        y = torch.full((1, 2, 4), 300.0, dtype=torch.float16)
    elif case == "nan start":
        y = torch.full((1, 2, 4), float("nan"))
    with pytest.raises(ThinkingDiverged, match=fragment):
        think(energy, y, **options)


def test_finite_thinking_in_float16_is_not_refused() -> None:
    thought = think(quadratic, torch.full((1, 2, 4), 100.0, dtype=torch.float16), steps=3, step_size=0.25)
    assert thought.y.dtype == torch.float16 and bool(torch.isfinite(thought.y).all())


# --- E. File modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_mode_a_plain_open_gives(umask: int, mode: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "config.json", lambda p: p.write_text("{}"))
        atomic_write(tmp_path / "model.safetensors", lambda p: save_file({"w": torch.zeros(2)}, str(p)))
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "plain.txt"]
