import json
import logging
from pathlib import Path

import pytest

from drimbox import __version__
from drimbox.entrypoints.cli import main
from drimbox.log import configure_logging


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"drimbox {__version__}"


def test_synth_command_writes_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--patients",
                "2",
                "--sites",
                "2",
                "--seed",
                "3",
                "--size",
                "small",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["patients"]) == 2
    assert "2 patients" in capsys.readouterr().out
    assert list(out.rglob("*.hl7")) and list(out.rglob("*.dcm"))


def test_bad_configuration_exits_2_with_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIMBOX_PACS__PORT", "not-a-port")
    assert main(["pacs", "--storage", str(tmp_path)]) == 2
    assert "pacs.port" in capsys.readouterr().err


def test_json_logging(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("INFO", json_format=True)
        logging.getLogger("drimbox.test").info("stored %d instances", 3)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "stored 3 instances"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "drimbox.test"
