"""A KOS Retrieve URL is data from the index: only allowed Source bases are ever called."""

from __future__ import annotations

import pytest

from drimbox.services.conso.sources import AllowedSources, SourceNotAllowed

ALLOWED = AllowedSources(["https://box-a.example:8443/dicomweb", "http://10.0.0.5/wado/"])


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://box-a.example:8443/dicomweb/studies/1.2/series/3.4",
         "https://box-a.example:8443/dicomweb"),
        ("https://BOX-A.example:8443/dicomweb/studies/1.2", "https://box-a.example:8443/dicomweb"),
        ("http://10.0.0.5:80/wado/studies/1.2/series/1", "http://10.0.0.5/wado"),
    ],
)  # fmt: skip
def test_urls_under_an_allowed_base(url: str, base: str) -> None:
    assert ALLOWED.base_for(url) == base


@pytest.mark.parametrize(
    "url",
    [
        "https://box-a.example/dicomweb/studies/1.2",  # another port
        "http://box-a.example:8443/dicomweb/studies/1.2",  # downgraded scheme
        "https://box-a.example.evil.fr:8443/dicomweb/studies/1.2",  # look-alike host
        "https://evil@box-a.example:8443/dicomweb/studies/1.2",  # credentials in the URL
        "https://box-a.example:8443/dicomwebX/studies/1.2",  # a path that only starts alike
        "https://box-a.example:8443/admin",  # not a studies path
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "https://box-a.example:8443/dicomweb/studies/1.2#frag",
        "https://box-a.example:99999/dicomweb/studies/1.2",  # invalid port
        "",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(SourceNotAllowed):
        ALLOWED.base_for(url)


def test_bad_configuration_is_refused() -> None:
    for base in ("ftp://x/dicomweb", "https://user:pw@x/dicomweb", "https:///nohost", "x"):
        with pytest.raises(ValueError, match="not a Source base URL"):
            AllowedSources([base])
    with pytest.raises(SourceNotAllowed):  # nothing configured: nothing reachable
        AllowedSources([]).base_for("https://a/studies/1")


def test_whitelisted_hosts_are_called_over_https_at_their_wado_root() -> None:
    listed = {"box-c.chu.fr"}
    allowed = AllowedSources([], listed=lambda host: host in listed)
    url = "https://box-c.chu.fr:8443/drim/dicomweb/studies/1.2/series/3.4"
    assert allowed.base_for(url) == "https://box-c.chu.fr:8443/drim/dicomweb"
    for refused in (
        "http://box-c.chu.fr/dicomweb/studies/1.2",  # listed, but not over https
        "https://box-d.chu.fr/dicomweb/studies/1.2",  # not listed
        "https://box-c.chu.fr/dicomweb/series/1.2",  # no studies path: no WADO root
        "https://box-c.chu.fr/a/../dicomweb/studies/1.2",  # dot segments
    ):
        with pytest.raises(SourceNotAllowed):
            allowed.base_for(refused)
