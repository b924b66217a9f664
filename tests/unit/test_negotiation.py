"""WADO-RS transfer syntax negotiation with q-values and what we can produce."""

from __future__ import annotations

import pytest

from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NotAcceptable,
    parse_accept,
)
from drimbox.adapters.dicomweb.negotiation import choose_syntax, frame_media_type

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JLS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
MPEG4 = "1.2.840.10008.1.2.4.102"

DRIM_M_ITEMS = [
    f'multipart/related; type="application/dicom";transfer-syntax={ts};q={q};boundary=**'
    for ts, q in (
        (JPEG_LOSSLESS_SV1, "0.9"),
        (JLS, "0.8"),
        (J2K, "0.6"),
        (JPEG_BASELINE, "0.5"),
        (EXPLICIT_VR_LE, "0.4"),
    )
]
DRIM_M_HEADER = ",".join(DRIM_M_ITEMS) + ","  # sic: trailing comma


def _choose(headers: list[str], stored: list[str]) -> str:
    return choose_syntax(parse_accept(headers), stored)


def _part(ts: str | None = None, q: str | None = None) -> str:
    out = 'multipart/related; type="application/dicom"'
    if ts is not None:
        out += f"; transfer-syntax={ts}"
    if q is not None:
        out += f"; q={q}"
    return out


@pytest.mark.parametrize("headers", [[DRIM_M_HEADER], DRIM_M_ITEMS], ids=["joined", "several"])
def test_drim_m_consumer_gets_jpeg_ls_for_explicit_le_ct(headers: list[str]) -> None:
    # 4.70 has no Python encoder, so the next best (JPEG-LS lossless) wins
    assert _choose(headers, [EXPLICIT_VR_LE]) == JLS


def test_drim_m_consumer_stored_in_asked_syntax_gets_it_as_is() -> None:
    assert _choose([DRIM_M_HEADER], [JPEG_LOSSLESS_SV1]) == JPEG_LOSSLESS_SV1
    # a stored JPEG baseline can also be re-encoded to JPEG-LS, which has the higher q
    assert _choose([DRIM_M_HEADER], [JPEG_BASELINE]) == JLS


def test_drim_m_consumer_with_mixed_stored_syntaxes() -> None:
    # 4.70 cannot be produced from the explicit LE instance: JPEG-LS for both
    assert _choose([DRIM_M_HEADER], [JPEG_LOSSLESS_SV1, EXPLICIT_VR_LE]) == JLS
    # an undecodable stored syntax only goes as stored, which the header does not take
    with pytest.raises(NotAcceptable, match=JLS):
        _choose([DRIM_M_HEADER], [MPEG4, EXPLICIT_VR_LE])


def test_no_accept_means_explicit_le() -> None:
    assert choose_syntax([], [JLS]) == EXPLICIT_VR_LE
    assert choose_syntax([], [EXPLICIT_VR_LE, IMPLICIT_VR_LE]) == EXPLICIT_VR_LE


def test_absent_transfer_syntax_means_explicit_le() -> None:
    for header in (_part(), "application/dicom", "*/*", "multipart/related"):
        assert _choose([header], [JLS]) == EXPLICIT_VR_LE


def test_default_falls_back_to_as_stored_when_undecodable() -> None:
    # PS3.18 8.7.3.5.2: pixel data the server cannot decode goes as stored
    assert _choose([_part()], [MPEG4]) == ANY_SYNTAX
    assert choose_syntax([], [MPEG4]) == ANY_SYNTAX
    with pytest.raises(NotAcceptable):
        _choose([_part(EXPLICIT_VR_LE)], [MPEG4])


def test_wildcard_syntax_sends_as_stored() -> None:
    assert _choose([_part("*")], [JLS, EXPLICIT_VR_LE, MPEG4]) == ANY_SYNTAX


def test_highest_q_producible_wins() -> None:
    headers = [_part(J2K_LOSSLESS, "0.5"), _part(RLE, "0.7"), _part(EXPLICIT_VR_LE, "0.6")]
    assert _choose(headers, [EXPLICIT_VR_LE]) == RLE


def test_equal_q_prefers_no_transcoding_then_client_order() -> None:
    headers = [_part(JLS), _part(J2K_LOSSLESS), _part(EXPLICIT_VR_LE)]
    assert _choose(headers, [EXPLICIT_VR_LE]) == EXPLICIT_VR_LE
    assert _choose(headers, [J2K_LOSSLESS]) == J2K_LOSSLESS
    assert _choose(headers, [IMPLICIT_VR_LE]) == JLS
    # mixed stored: everything needs transcoding somewhere, so the client's order decides
    assert _choose(headers, [J2K_LOSSLESS, EXPLICIT_VR_LE]) == JLS
    assert _choose([_part(JLS), _part("*")], [EXPLICIT_VR_LE]) == ANY_SYNTAX


def test_lossy_syntax_only_when_stored() -> None:
    assert _choose([_part(J2K)], [J2K]) == J2K
    with pytest.raises(NotAcceptable):
        _choose([_part(J2K)], [EXPLICIT_VR_LE])
    with pytest.raises(NotAcceptable):
        _choose([_part(JPEG_BASELINE)], [JLS])


@pytest.mark.parametrize("zero", ["0", "0.0", "0.000"])
def test_q_zero_refuses_even_the_stored_syntax(zero: str) -> None:
    headers = [_part(JLS, zero), _part(EXPLICIT_VR_LE, "0.5")]
    assert _choose(headers, [JLS]) == EXPLICIT_VR_LE
    with pytest.raises(NotAcceptable):
        _choose([_part(JLS, zero)], [JLS])
    # a refusal beats a wildcard that would otherwise cover it
    assert _choose([_part(JLS, zero), _part("*")], [JLS]) == EXPLICIT_VR_LE
    assert _choose([_part(EXPLICIT_VR_LE, zero), "*/*", _part(RLE, "0.1")], [JLS]) == RLE


def test_refused_wildcard_type_refuses_nothing_named() -> None:
    assert _choose([_part(), "*/*;q=0"], [JLS]) == EXPLICIT_VR_LE
    assert _choose([_part(JLS), "*/*;q=0"], [EXPLICIT_VR_LE]) == JLS
    with pytest.raises(NotAcceptable):
        _choose([_part(q="0"), "*/*"], [JLS])


def test_refused_wildcard_does_not_refuse_named_syntaxes() -> None:
    headers = [_part("*", "0"), _part(JLS, "0.3")]
    assert _choose(headers, [EXPLICIT_VR_LE]) == JLS
    assert _choose(headers, [JLS]) == JLS
    with pytest.raises(NotAcceptable):
        _choose([_part("*", "0")], [EXPLICIT_VR_LE])


@pytest.mark.parametrize("one", ["1", "1.0", "1.000", None])
def test_q_one_forms(one: str | None) -> None:
    headers = [_part(EXPLICIT_VR_LE, "0.9"), _part(JLS, one)]
    assert _choose(headers, [EXPLICIT_VR_LE]) == JLS


def test_ignores_ranges_for_other_media_types() -> None:
    headers = [
        f"application/octet-stream; transfer-syntax={RLE}",
        f'multipart/related; type="application/dicom+json"; transfer-syntax={RLE}',
        f'multipart/related; type="image/jls"; transfer-syntax={JLS}',
        _part(J2K_LOSSLESS, "0.2"),
    ]
    assert _choose(headers, [EXPLICIT_VR_LE]) == J2K_LOSSLESS


def test_not_acceptable_names_what_was_asked() -> None:
    with pytest.raises(NotAcceptable, match="application/json"):
        _choose(["application/json"], [EXPLICIT_VR_LE])
    with pytest.raises(NotAcceptable, match=rf"{JPEG_LOSSLESS_SV1} \(JPEG Lossless"):
        _choose([_part(JPEG_LOSSLESS_SV1)], [EXPLICIT_VR_LE])
    with pytest.raises(NotAcceptable, match="bogus"):
        _choose([_part("bogus")], [EXPLICIT_VR_LE])


def test_unknown_stored_list_is_unconstrained() -> None:
    assert _choose([_part(JPEG_LOSSLESS_SV1)], []) == JPEG_LOSSLESS_SV1


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [
        (JLS, "image/jls"),
        ("1.2.840.10008.1.2.4.81", "image/jls"),
        (J2K_LOSSLESS, "image/jp2"),
        (J2K, "image/jp2"),
        (JPEG_BASELINE, "image/jpeg"),
        ("1.2.840.10008.1.2.4.51", "image/jpeg"),
        ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        (JPEG_LOSSLESS_SV1, "image/jpeg"),
        (RLE, "image/dicom-rle"),
        ("1.2.840.10008.1.2.4.201", "image/jphc"),
        ("1.2.840.10008.1.2.4.202", "image/jphc"),
        ("1.2.840.10008.1.2.4.203", "image/jphc"),
        (EXPLICIT_VR_LE, "application/octet-stream"),
        (IMPLICIT_VR_LE, "application/octet-stream"),
        ("1.2.840.10008.1.2.1.99", "application/octet-stream"),
    ],
)
def test_frame_media_type(syntax: str, media_type: str) -> None:
    assert frame_media_type(syntax) == media_type
