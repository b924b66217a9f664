from pathlib import Path

import pytest

from drimbox.settings import BoxSettings, ConfigError, PacsSettings, load_settings


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "drimbox.toml"
    cfg.write_text(
        '[pacs]\naet = "FROMFILE"\nport = 104\n[pacs.move_destinations.ORTHANC]\nhost = "pacs.local"\nport = 4242\n'
    )
    env = {"DRIMBOX_PACS__PORT": "11112", "DRIMBOX_PACS__ALLOWED_CALLING_AETS": '["MODALITY1"]'}
    s = load_settings(PacsSettings, "pacs", cfg, {"http_port": 8080}, environ=env)
    assert (s.aet, s.port, s.http_port) == ("FROMFILE", 11112, 8080)
    assert s.allowed_calling_aets == ["MODALITY1"]
    assert s.move_destinations["ORTHANC"].port == 4242


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DRIMBOX_PACS__PORT": "70000"}, "pacs.port"),
        ({"DRIMBOX_PACS__AET": "THIS_AE_TITLE_IS_TOO_LONG"}, "pacs.aet"),
        ({"DRIMBOX_PACS__DUPLICATES": "sometimes"}, "pacs.duplicates"),
        ({"DRIMBOX_PACS__NO_SUCH_KEY": "1"}, "pacs.no_such_key"),
    ],
)
def test_bad_value_names_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(PacsSettings, "pacs", None, environ=env)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pacs\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(PacsSettings, "pacs", bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(PacsSettings, "pacs", tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("model", "section", "env", "message"),
    [
        (PacsSettings, "pacs", {"DRIMBOX_PACS__HTTP_PORT": "11112"}, "http_port and port"),
        (BoxSettings, "box", {"DRIMBOX_BOX__MLLP_PORT": "8200"}, "mllp_port and http_port"),
        (BoxSettings, "box", {"DRIMBOX_BOX__DICOM_PORT": "2575"}, "dicom_port and mllp_port"),
    ],
)
def test_one_port_per_listener(
    model: type[PacsSettings] | type[BoxSettings], section: str, env: dict[str, str], message: str
) -> None:
    # the DIMSE port is shared with SO_REUSEPORT: a clash would split traffic, not fail
    with pytest.raises(ConfigError, match=message):
        load_settings(model, section, None, environ=env)


def test_disabled_listeners_do_not_clash() -> None:
    env = {"DRIMBOX_BOX__MLLP_PORT": "0", "DRIMBOX_BOX__DICOM_PORT": "0"}
    assert load_settings(BoxSettings, "box", None, environ=env).mllp_port == 0
