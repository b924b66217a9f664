"""Rendered and thumbnail images (PS3.18 8.3.5)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from drimbox.adapters.dicomweb.media_types import NotAcceptable, parse_accept
from drimbox.adapters.dicomweb.render import RenderOptions, parse_render_params, render
from drimbox.domain.errors import InvalidInput, NotFound
from drimbox.synth.images import CT_RESCALE_INTERCEPT, ct_slices


def _base(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "P1"
    return ds


def _ct(
    tmp_path: Path,
    *,
    rows: int = 64,
    cols: int = 96,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = (40.0, 400.0),
    compress: str | None = None,
) -> tuple[Path, npt.NDArray[np.int16]]:
    """A phantom CT (stored = HU + 1024, like drimbox.synth) with its HU values."""
    stored = np.stack(list(ct_slices("trunk", rows, cols, frames, (0.3, 0.7), seed=1)))
    ds = _base(CTImageStorage)
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = str(CT_RESCALE_INTERCEPT), "1"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = [str(window[0]), "500"], [str(window[1]), "2000"]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (stored if frames > 1 else stored[0]).astype("<i2").tobytes()
    if compress:
        ds.compress(compress)
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    hu = stored.astype(np.int16) + CT_RESCALE_INTERCEPT
    return path, hu if frames > 1 else hu[0]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pixels(data: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(_decode(data))


PNG = RenderOptions(media_type="image/png")


def test_default_render_is_jpeg_with_source_size(tmp_path: Path) -> None:
    path, _ = _ct(tmp_path)
    image = _decode(render(path, RenderOptions()))
    assert image.format == "JPEG"
    assert image.mode == "L"
    assert image.size == (96, 64)


def test_dataset_window_is_applied_exactly(tmp_path: Path) -> None:
    path, hu = _ct(tmp_path)
    out = _pixels(render(path, PNG)).astype(np.int32)
    # PS3.3 C.11.2.1.2.1 LINEAR with c=40, w=400 (the first of the dataset's windows)
    c, w = 40.0, 400.0
    expected = np.clip(((hu - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255
    assert np.abs(out - np.rint(expected)).max() <= 1
    assert (out[hu <= c - 0.5 - (w - 1) / 2] == 0).all()
    assert (out[hu > c - 0.5 + (w - 1) / 2] == 255).all()


def test_requested_window_overrides_and_narrow_window_saturates(tmp_path: Path) -> None:
    path, hu = _ct(tmp_path)
    wide = _pixels(render(path, PNG))
    narrow = _pixels(render(path, RenderOptions("image/png", window=(0.0, 2.0, "linear"))))
    assert not np.array_equal(wide, narrow)
    assert set(np.unique(narrow)) <= {0, 128, 255}
    assert (narrow[hu > 0] == 255).all() and (narrow[hu < 0] == 0).all()
    sigmoid = _pixels(render(path, RenderOptions("image/png", window=(0.0, 100.0, "sigmoid"))))
    assert sigmoid[hu == 0].size == 0 or (sigmoid[hu == 0] == 128).all()
    assert (sigmoid[hu < -500] <= 1).all() and (sigmoid[hu > 500] >= 254).all()


def test_min_max_when_no_window(tmp_path: Path) -> None:
    path, hu = _ct(tmp_path, window=None)
    out = _pixels(render(path, PNG))
    assert out[hu == hu.min()].max() == 0
    assert out[hu == hu.max()].min() == 255


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    path, _ = _ct(tmp_path)
    normal = _pixels(render(path, PNG)).astype(np.int32)
    (tmp_path / "m1").mkdir()
    inverted_path, _ = _ct(tmp_path / "m1", photometric="MONOCHROME1")
    inverted = _pixels(render(inverted_path, PNG)).astype(np.int32)
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_viewport_keeps_aspect_ratio(tmp_path: Path) -> None:
    path, _ = _ct(tmp_path)  # 96 x 64
    assert _decode(render(path, RenderOptions(viewport=(48, 48)))).size == (48, 32)
    assert _decode(render(path, RenderOptions(viewport=(300, 64)))).size == (96, 64)
    assert _decode(render(path, RenderOptions(viewport=(192, 500)))).size == (192, 128)


def test_thumbnail_defaults_to_128(tmp_path: Path) -> None:
    path, _ = _ct(tmp_path, rows=256, cols=200)
    options = parse_render_params([], [], thumbnail=True)
    assert options.viewport == (128, 128)
    image = _decode(render(path, options))
    assert image.size == (100, 128)


def test_quality_changes_jpeg_size(tmp_path: Path) -> None:
    path, _ = _ct(tmp_path, rows=128, cols=128)
    low = render(path, RenderOptions(quality=5))
    high = render(path, RenderOptions(quality=100))
    assert len(low) < len(high)


def test_multiframe_compressed_frames(tmp_path: Path) -> None:
    path, hu = _ct(tmp_path, frames=3, compress=JPEGLSLossless)
    window = RenderOptions("image/png", window=(0.0, 2.0, "linear"))
    frames = [_pixels(render(path, window, frame=n)) for n in (1, 2, 3)]
    for n in range(3):
        assert (frames[n][hu[n] > 0] == 255).all() and (frames[n][hu[n] < 0] == 0).all()
    assert not np.array_equal(frames[0], frames[2])
    for bad in (0, 4):
        with pytest.raises(NotFound):
            render(path, RenderOptions(), frame=bad)


def test_rgb_planar_and_16_bit(tmp_path: Path) -> None:
    rows, cols = 30, 40
    y, x = np.mgrid[0:rows, 0:cols]
    rgb = np.stack([x * 6, y * 8, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    ds = _base(SecondaryCaptureImageStorage)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(np.moveaxis(rgb, -1, 0)).tobytes()
    path = tmp_path / "rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = _decode(render(path, PNG))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rgb)
    assert _decode(render(path, RenderOptions(viewport=(20, 20)))).size == (20, 15)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    rows, cols = 8, 8
    ds = _base(SecondaryCaptureImageStorage)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 8, 7, 0
    ds.PixelData = np.arange(64, dtype="<u2").reshape(rows, cols).tobytes()
    item = Dataset()
    item.LUTDescriptor = [64, 0, 8]
    item.add_new(0x00283006, "US", [255 - v * 4 for v in range(64)])  # LUT Data: inverts
    ds.VOILUTSequence = Sequence([item])
    path = tmp_path / "lut.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = _pixels(render(path, PNG))
    assert out[0, 0] == 255 and out[-1, -1] == 255 - 63 * 4


def test_no_pixel_data_is_not_found(tmp_path: Path) -> None:
    ds = _base(BasicTextSRStorage)
    ds.Modality = "SR"
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NotFound):
        render(path, RenderOptions())


# -- parameters ---------------------------------------------------------------------------


def _parse(
    params: dict[str, str], accept: str | None = None, thumbnail: bool = False
) -> RenderOptions:
    ranges = parse_accept([accept]) if accept else []
    return parse_render_params(params.items(), ranges, thumbnail)


def test_parse_defaults_and_values() -> None:
    assert _parse({}) == RenderOptions()
    options = _parse({"viewport": "512,256", "window": "40,400,LINEAR", "quality": "75"})
    assert options == RenderOptions("image/jpeg", (512, 256), (40.0, 400.0, "linear"), 75)
    assert _parse({"window": "-600,1500"}).window == (-600.0, 1500.0, "linear")
    assert _parse({"window": "0,0.5,sigmoid"}).window == (0.0, 0.5, "sigmoid")
    assert _parse({"annotation": "patient", "charset": "utf-8"}) == RenderOptions()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("image/png", "image/png"),
        ("image/jpeg", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/gif, image/png;q=0.5", "image/png"),
        ("image/jpeg;q=0.4, image/png;q=0.9", "image/png"),
        ("image/jpeg;q=0, */*", "image/png"),
        ("image/jpeg;q=0.0, image/*;q=1.0", "image/png"),
    ],
)
def test_media_type_from_accept(accept: str, expected: str) -> None:
    assert _parse({}, accept).media_type == expected


def test_accept_query_parameter_overrides_header() -> None:
    assert _parse({"accept": "image/png"}, "image/jpeg").media_type == "image/png"


@pytest.mark.parametrize(
    "accept", ["image/gif", "application/dicom", "image/jpeg;q=0, image/png;q=0"]
)
def test_unsupported_media_type(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        _parse({}, accept)


@pytest.mark.parametrize(
    "params",
    [
        {"viewport": "100"},
        {"viewport": "a,b"},
        {"viewport": "0,100"},
        {"viewport": "-5,10"},
        {"viewport": "100000,100"},
        {"viewport": "100,100,0,0,10,10"},
        {"window": "40"},
        {"window": "x,400,linear"},
        {"window": "40,400,cubic"},
        {"window": "40,0.5,linear"},
        {"window": "40,0,sigmoid"},
        {"window": "nan,400"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "high"},
    ],
)
def test_bad_parameters(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        _parse(params)


def test_repeated_parameter_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        parse_render_params([("quality", "50"), ("quality", "60")], [], False)
