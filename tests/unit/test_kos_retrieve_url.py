"""Retrieve URLs read from published manifests: only the DRIM-M shape over http(s)."""

from __future__ import annotations

import pytest

from drimbox.adapters.documents.retrieve_url import (
    RetrieveTarget,
    retrieve_base,
    split_retrieve_url,
)
from drimbox.domain.errors import InvalidInput


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://box.example.fr/studies/1.2.3/series/1.2.4", "https://box.example.fr"),
        (
            "https://box.example.fr/dicom-web/studies/1.2.3/series/1.2.4",
            "https://box.example.fr/dicom-web",
        ),
        (
            "http://10.0.0.5:8080/api/source/studies/1.2.3/series/1.2.4",
            "http://10.0.0.5:8080/api/source",
        ),
        ("HTTPS://Box.Example.FR/rs/studies/1.2.3/", "https://box.example.fr/rs"),
        ("https://[::1]:8443/studies/1.2.3/series/4.5", "https://[::1]:8443"),
        # a base that itself contains "studies": the last one starts the resource
        ("https://box.fr/studies/app/studies/1.2.3/series/4.5", "https://box.fr/studies/app"),
    ],
)
def test_base_of_series_and_study_urls(url: str, base: str) -> None:
    assert retrieve_base(url) == base


def test_split_gives_the_resource() -> None:
    assert split_retrieve_url("https://b.fr/rs/studies/1.2.3/series/1.2.4") == RetrieveTarget(
        "https://b.fr/rs", "1.2.3", "1.2.4"
    )
    assert split_retrieve_url("https://b.fr/studies/1.2.3").series_uid is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://box.fr/studies/1.2.3/series/1.2.4",
        "file:///etc/studies/1.2.3",
        "javascript:alert(1)//studies/1.2.3",
        "https://user:pw@box.fr/studies/1.2.3/series/1.2.4",
        "https://evil.fr@box.fr/studies/1.2.3",
        "https://box.fr/studies/1.2.3/series/1.2.4#frag",
        "https://box.fr/studies/1.2.3/series/1.2.4?x=1",
        "https://box.fr/rs/../studies/1.2.3/series/1.2.4",
        "https://box.fr/rs/./studies/1.2.3",
        "https://box.fr/rs//studies/1.2.3",
        "https://box.fr/rs/%2e%2e/studies/1.2.3",
        "https://box.fr/rs%2Fstudies/1.2.3",
        "https://box.fr/rs\\..\\studies/1.2.3",
        "https://box.fr/studies/1.2.3/series/1.2.4/instances/1.2.5",
        "https://box.fr/studies/01.2/series/1.2.4",
        "https://box.fr/studies/1.2.3/frames/1",
        "https://box.fr/wado?studyUID=1.2.3",
        "https://box.fr:99999/studies/1.2.3",
        "https://box.fr:abc/studies/1.2.3",
        "https:///studies/1.2.3",
        " https://box.fr/studies/1.2.3",
        "https://box.fr/studies/1.2.3\n",
        "https://box.fr/st udies/1.2.3",
        "",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        retrieve_base(url)
