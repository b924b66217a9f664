import pytest

from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    NotAcceptable,
    accepts,
    choose_dicom_syntax,
    parse_accept,
)
from drimbox.adapters.dicomweb.multipart import MultipartError, parse_content_type, split_parts

JLS = "1.2.840.10008.1.2.4.80"


def test_drim_m_comma_joined_accept_with_q_values() -> None:
    header = (
        f'multipart/related; type="application/dicom"; transfer-syntax={JLS}; q=0.9; boundary=x,'
        f' multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LE}; q=0.5'
    )
    ranges = parse_accept([header])
    assert [r.transfer_syntax for r in ranges] == [JLS, EXPLICIT_VR_LE]
    assert choose_dicom_syntax(ranges) == JLS


def test_several_accept_headers_and_refusal() -> None:
    ranges = parse_accept(
        [
            f'multipart/related; type="application/dicom"; transfer-syntax={JLS}; q=0',
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.2',
        ]
    )
    assert choose_dicom_syntax(ranges) == ANY_SYNTAX
    with pytest.raises(NotAcceptable):
        choose_dicom_syntax(parse_accept(['multipart/related; type="application/dicom"; q=0']))
    with pytest.raises(NotAcceptable):
        choose_dicom_syntax(parse_accept(["application/json"]))


def test_defaults() -> None:
    assert choose_dicom_syntax([]) == EXPLICIT_VR_LE
    assert choose_dicom_syntax(parse_accept(["*/*"])) == EXPLICIT_VR_LE
    assert accepts(parse_accept(["application/*"]), "application/dicom+json")
    assert not accepts(parse_accept(["image/jpeg"]), "application/dicom+json")


@pytest.mark.parametrize(
    "bad", ["multipart/related; q=1.5", "multipart/related; q=abc", "nonsense"]
)
def test_malformed_accept(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_accept([bad])


def test_multipart_split_and_errors() -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--b\r\nContent-Type: application/dicom\r\n\r\nBB\r\n--b--\r\n"
    parts = split_parts(body, "b")
    assert [bytes(p) for _, p in parts] == [b"AAA", b"BB"]
    assert parts[0][0]["content-type"] == "application/dicom"
    with pytest.raises(MultipartError):
        split_parts(body[:-12], "b")
    with pytest.raises(MultipartError):
        parse_content_type("application/dicom")
    assert parse_content_type('multipart/related; type="application/dicom"; boundary="abc"') == (
        "multipart/related",
        "application/dicom",
        "abc",
    )
