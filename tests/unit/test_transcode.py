"""Lossless transcoding of stored instances (WADO-RS transfer syntax negotiation)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from drimbox.adapters.dicomweb.media_types import ANY_SYNTAX, NotAcceptable
from drimbox.adapters.dicomweb.transcode import (
    can_serve_as_is,
    producible,
    transcode,
    transcode_with_syntax,
)
from drimbox.synth.images import ct_slices

LOSSLESS_TARGETS = [JPEGLSLossless, JPEG2000Lossless, RLELossless]
ALL_TARGETS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, *LOSSLESS_TARGETS]


def _instance(
    pixels: npt.NDArray[np.integer],
    *,
    bits_stored: int,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    planar: int = 0,
    syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    color = photometric == "RGB"
    ds.SOPClassUID = SecondaryCaptureImageStorage if color else CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "P1", "DUPONT^JEANNE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT" if color else "CT"
    shape = pixels.shape[1:] if frames > 1 else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = photometric
    if color:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    data = np.moveaxis(pixels, -1, -3) if color and planar == 1 else pixels
    ds.PixelData = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct(rows: int = 48, cols: int = 40) -> npt.NDArray[np.int16]:
    """A phantom CT slice in HU (signed, BitsStored 12)."""
    stored = next(ct_slices("trunk", rows, cols, 1, (0.5, 0.5), seed=3))
    return (stored.astype(np.int32) - 1024).clip(-2048, 2047).astype(np.int16)


def _rgb(frames: int, rows: int = 40, cols: int = 36) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:rows, 0:cols]
    base = np.stack([x * 6, y * 5, (x + y) * 3], axis=-1).astype(np.int32)
    out = [(base + rng.integers(0, 20, base.shape) + 30 * f) % 256 for f in range(frames)]
    arr = np.stack(out).astype(np.uint8)
    return arr if frames > 1 else arr[0]


Case = tuple[npt.NDArray[Any], dict[str, Any]]
CASES: dict[str, Callable[[], Case]] = {
    "ct_signed_12": lambda: (_ct(), {"bits_stored": 12}),
    "ct_signed_16": lambda: (
        (_ct().astype(np.int32) * 13).clip(-32768, 32767).astype(np.int16),
        {"bits_stored": 16},
    ),
    "mr_unsigned_12": lambda: ((_ct() + 1024).clip(0, 4095).astype(np.uint16), {"bits_stored": 12}),
    "unsigned_16": lambda: (
        ((_ct().astype(np.int32) + 1024) * 15).clip(0, 65535).astype(np.uint16),
        {"bits_stored": 16},
    ),
    "rgb_planar0": lambda: (_rgb(1), {"bits_stored": 8, "photometric": "RGB", "planar": 0}),
    "rgb_planar1": lambda: (_rgb(1), {"bits_stored": 8, "photometric": "RGB", "planar": 1}),
    "rgb_multiframe_planar1": lambda: (
        _rgb(3),
        {"bits_stored": 8, "photometric": "RGB", "planar": 1, "frames": 3},
    ),
    "ct_multiframe": lambda: (
        np.stack([_ct(), _ct()[::-1], -_ct()]),
        {"bits_stored": 12, "frames": 3},
    ),
}


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda u: u.name)
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_lossless(tmp_path: Path, case: str, target: str) -> None:
    pixels, kwargs = CASES[case]()
    src = _instance(pixels, **kwargs)
    path = _write(src, tmp_path / "in.dcm")
    data, syntax = transcode_with_syntax(path, target)
    assert syntax == target
    out = dcmread(io.BytesIO(data))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == src.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
    assert out.PatientName == "DUPONT^JEANNE"
    decoded = out.pixel_array
    assert decoded.dtype.kind == pixels.dtype.kind
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("stored", LOSSLESS_TARGETS, ids=lambda u: u.name)
@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda u: u.name)
def test_compressed_to_anything_is_lossless(tmp_path: Path, stored: str, target: str) -> None:
    pixels = _ct()
    first, _ = transcode_with_syntax(
        _write(_instance(pixels, bits_stored=12), tmp_path / "in.dcm"), stored
    )
    path = tmp_path / "stored.dcm"
    path.write_bytes(first)
    data, syntax = transcode_with_syntax(path, target)
    out = dcmread(io.BytesIO(data))
    assert syntax == target == out.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(out.pixel_array, pixels)


def test_color_compressed_to_native_keeps_pixels(tmp_path: Path) -> None:
    pixels = _rgb(2)
    src = _instance(pixels, bits_stored=8, photometric="RGB", frames=2)
    rle, _ = transcode_with_syntax(_write(src, tmp_path / "in.dcm"), RLELossless)
    assert dcmread(io.BytesIO(rle)).PlanarConfiguration == 1
    (tmp_path / "rle.dcm").write_bytes(rle)
    for target in (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless):
        out = dcmread(io.BytesIO(transcode(tmp_path / "rle.dcm", target)))
        assert out.PlanarConfiguration == 0
        np.testing.assert_array_equal(out.pixel_array, pixels)


def test_same_or_any_syntax_returns_stored_bytes(tmp_path: Path) -> None:
    path = _write(_instance(_ct(), bits_stored=12), tmp_path / "in.dcm")
    raw = path.read_bytes()
    assert transcode_with_syntax(path, ExplicitVRLittleEndian) == (raw, ExplicitVRLittleEndian)
    assert transcode_with_syntax(path, ANY_SYNTAX) == (raw, ExplicitVRLittleEndian)
    assert can_serve_as_is(ExplicitVRLittleEndian, ANY_SYNTAX)
    assert not can_serve_as_is(ExplicitVRLittleEndian, JPEGLSLossless)


def test_producible_from_native_and_lossless() -> None:
    lossless = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, *LOSSLESS_TARGETS}
    assert producible(ExplicitVRLittleEndian) == lossless
    assert producible(ImplicitVRLittleEndian) == lossless
    assert producible(JPEGLSLossless) == lossless
    # never encoded: lossy, or no Python encoder
    for syntax in (JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless, JPEGLosslessSV1):
        assert syntax not in producible(ExplicitVRLittleEndian)
    assert "1.2.840.10008.1.2.4.201" not in producible(ExplicitVRLittleEndian)  # no encoder


def test_producible_from_lossy_includes_itself_only_as_stored() -> None:
    out = producible(JPEGBaseline8Bit)
    assert JPEGBaseline8Bit in out  # decodable with pillow/pylibjpeg-libjpeg
    assert {ExplicitVRLittleEndian, JPEGLSLossless} <= out
    assert JPEG2000 not in out


def test_producible_when_undecodable_or_unknown() -> None:
    mpeg4 = "1.2.840.10008.1.2.4.102"
    assert producible(mpeg4) == {mpeg4}
    assert producible(ExplicitVRBigEndian) == {ExplicitVRBigEndian}
    assert producible("1.2.3.4") == {"1.2.3.4"}


def test_lossy_source_is_flagged_when_decompressed(tmp_path: Path) -> None:
    y, x = np.mgrid[0:32, 0:32]
    src = _instance(((x * 7 + y * 3) % 256).astype(np.uint8), bits_stored=8)
    # pydicom has no JPEG baseline encoder: build the stored instance with Pillow
    from PIL import Image
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(src.pixel_array).save(buf, format="JPEG", quality=90)
    src.PixelData = encapsulate([buf.getvalue()])
    src["PixelData"].VR = "OB"
    src.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = _write(src, tmp_path / "jpeg.dcm")
    out = dcmread(io.BytesIO(transcode(path, ExplicitVRLittleEndian)))
    assert out.LossyImageCompression == "01"
    assert out.SOPInstanceUID == src.SOPInstanceUID
    assert out.pixel_array.shape == (32, 32)


def _sr() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.ValueType, ds.PatientID = "SR", "CONTAINER", "P1"
    return ds


@pytest.mark.parametrize("target", [*LOSSLESS_TARGETS, JPEGLosslessSV1], ids=lambda u: u.name)
def test_non_image_asked_compressed_is_sent_explicit_le(tmp_path: Path, target: str) -> None:
    path = _write(_sr(), tmp_path / "sr.dcm")
    data, syntax = transcode_with_syntax(path, target)
    assert syntax == ExplicitVRLittleEndian
    assert data == path.read_bytes()
    implicit, syntax = transcode_with_syntax(path, ImplicitVRLittleEndian)
    assert syntax == ImplicitVRLittleEndian
    out = dcmread(io.BytesIO(implicit))
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert out.ValueType == "CONTAINER"


def test_impossible_requests_are_not_acceptable(tmp_path: Path) -> None:
    path = _write(_instance(_ct(), bits_stored=12), tmp_path / "in.dcm")
    for wanted in (JPEGLosslessSV1, JPEGBaseline8Bit, "1.2.3.4", "not-a-uid"):
        with pytest.raises(NotAcceptable):
            transcode(path, wanted)


def test_encoder_limits_become_not_acceptable(tmp_path: Path) -> None:
    # OpenJPEG uses 6 resolution levels: images under 32 pixels wide cannot be encoded
    path = _write(_instance(_ct(16, 16), bits_stored=12), tmp_path / "small.dcm")
    with pytest.raises(NotAcceptable, match="JPEG 2000"):
        transcode(path, JPEG2000Lossless)
    # bits above High Bit are dropped, as every decoder does: what a viewer sees is unchanged
    bad = _instance(np.full((32, 32), 5000, dtype=np.uint16), bits_stored=16)
    bad.BitsStored, bad.HighBit = 12, 11
    path = _write(bad, tmp_path / "bad.dcm")
    out = dcmread(io.BytesIO(transcode(path, JPEGLSLossless)))
    np.testing.assert_array_equal(out.pixel_array, dcmread(path).pixel_array)
    # 32-bit pixels do not fit JPEG-LS
    wide = _instance(np.arange(32 * 32, dtype=np.uint32).reshape(32, 32), bits_stored=32)
    with pytest.raises(NotAcceptable):
        transcode(_write(wide, tmp_path / "wide.dcm"), JPEGLSLossless)


@pytest.mark.parametrize(
    "stored", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian], ids=lambda u: u.name
)
@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, JPEGLSLossless, ImplicitVRLittleEndian])
def test_other_native_sources(tmp_path: Path, stored: str, target: str) -> None:
    pixels = _ct()
    path = _write(_instance(pixels, bits_stored=12, syntax=stored), tmp_path / "in.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == stored
    data, syntax = transcode_with_syntax(path, target)
    out = dcmread(io.BytesIO(data))
    assert syntax == target == out.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(out.pixel_array, pixels)
