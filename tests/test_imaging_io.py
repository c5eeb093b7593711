"""Image loading: DICOMs written with pydicom inside the test, pixels checked against numpy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.io import ImageError, load_image

H, W = 24, 32


def _stored_12bit(rng, garbage_high_bits=True):
    v = rng.integers(0, 4096, size=(H, W)).astype(np.uint16)
    v[0, 0], v[0, 1] = 0, 4095
    if garbage_high_bits:  # bits above BitsStored must be ignored
        v = v | (rng.integers(0, 16, size=(H, W)).astype(np.uint16) << 12)
    return v


def _write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=12, slope=None,
                 intercept=None, window=None, voi_lut=None, presentation=None, signed=False,
                 tsyntax=ExplicitVRLittleEndian, pixel_bytes=None):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape if pixels is not None else (H, W)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [len(data), first, bits])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(t) for t in data])     # LUT Data
        ds.VOILUTSequence = Sequence([item])
    if presentation is not None:
        ds.PresentationLUTShape = presentation
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    elif pixels is not None:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    if tsyntax != ExplicitVRLittleEndian:
        ds["PixelData"].is_undefined_length = False
    ds.save_as(path, enforce_file_format=True)
    return path


def _np_linear_window(v, c, w):
    # DICOM PS3.3 C.11.2.1.2.1, written out independently of the implementation.
    out = np.empty_like(v, dtype=np.float64)
    lo = v <= c - 0.5 - (w - 1) / 2
    hi = v > c - 0.5 + (w - 1) / 2
    mid = ~(lo | hi)
    out[lo], out[hi] = 0.0, 1.0
    out[mid] = (v[mid] - (c - 0.5)) / (w - 1) + 0.5
    return out


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_12_in_16_rescale_and_window(tmp_path, photometric):
    rng = np.random.default_rng(0)
    raw = _stored_12bit(rng)
    slope, intercept, c, w = 2.0, -100.0, 3000.0, 4000.0
    path = _write_dicom(tmp_path / "a.dcm", raw, photometric, slope=slope, intercept=intercept,
                        window=(c, w))
    got = load_image(path)
    modality = (raw & 0x0FFF).astype(np.float64) * slope + intercept
    want = _np_linear_window(modality, c, w)
    if photometric == "MONOCHROME1":
        want = 1.0 - want
    assert got.dtype == np.float32 and got.shape == (H, W)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_without_window_uses_percentile_window(tmp_path, photometric):
    rng = np.random.default_rng(1)
    raw = _stored_12bit(rng)
    path = _write_dicom(tmp_path / "b.dcm", raw, photometric)
    got = load_image(path)
    v = (raw & 0x0FFF).astype(np.float64)
    lo, hi = np.percentile(v, [0.5, 99.5])
    want = np.clip((v - lo) / (hi - lo), 0, 1)
    if photometric == "MONOCHROME1":
        want = 1.0 - want
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_voi_lut_sequence(tmp_path, photometric):
    rng = np.random.default_rng(2)
    raw = _stored_12bit(rng)
    first = 100  # values below the first mapped value take the first entry, above the last
    n = 3000
    lut = np.round(np.sqrt(np.linspace(0, 1, n)) * 4095).astype(np.int64)
    path = _write_dicom(tmp_path / "c.dcm", raw, photometric, slope=1.0, intercept=0.0,
                        window=(99999.0, 2.0), voi_lut=(first, 12, lut))
    got = load_image(path)
    v = (raw & 0x0FFF).astype(np.int64)
    want = lut[np.clip(v - first, 0, n - 1)] / 4095.0  # the LUT wins over the window
    if photometric == "MONOCHROME1":
        want = 1.0 - want
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_presentation_lut_inverse_inverts_monochrome2_once(tmp_path):
    rng = np.random.default_rng(3)
    raw = _stored_12bit(rng)
    plain = load_image(_write_dicom(tmp_path / "p.dcm", raw, window=(2048.0, 4096.0)))
    inv = load_image(_write_dicom(tmp_path / "i.dcm", raw, window=(2048.0, 4096.0),
                                  presentation="INVERSE"))
    np.testing.assert_allclose(inv, 1.0 - plain, atol=1e-6)
    # MONOCHROME1 + INVERSE (the DX convention) is one inversion, not two.
    m1 = load_image(_write_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1", window=(2048.0, 4096.0),
                                 presentation="INVERSE"))
    np.testing.assert_allclose(m1, 1.0 - plain, atol=1e-6)


def test_signed_12_bit_dicom(tmp_path):
    rng = np.random.default_rng(4)
    v = rng.integers(-2048, 2048, size=(H, W)).astype(np.int16)
    path = _write_dicom(tmp_path / "s.dcm", v, signed=True, window=(0.0, 2000.0))
    got = load_image(path)
    np.testing.assert_allclose(got, _np_linear_window(v.astype(np.float64), 0.0, 2000.0), atol=1e-6)


def test_png_8_and_16_bit(tmp_path):
    rng = np.random.default_rng(5)
    a8 = rng.integers(0, 256, size=(H, W)).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    np.testing.assert_allclose(load_image(tmp_path / "a8.png"), a8 / 255.0, atol=1e-6)
    a16 = rng.integers(0, 65536, size=(H, W)).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    np.testing.assert_allclose(load_image(tmp_path / "a16.png"), a16 / 65535.0, atol=1e-6)


def test_grey_saved_as_rgb_is_accepted_colour_is_rejected(tmp_path):
    rng = np.random.default_rng(6)
    g = rng.integers(0, 256, size=(H, W)).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "grey.png")
    np.testing.assert_allclose(load_image(tmp_path / "grey.png"), g / 255.0, atol=1e-6)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "grey.jpg", quality=95)
    assert load_image(tmp_path / "grey.jpg").shape == (H, W)
    col = np.stack([g, 255 - g, g], -1)
    Image.fromarray(col).save(tmp_path / "colour.png")
    with pytest.raises(ImageError, match=r"colour\.png: 3-channel colour image"):
        load_image(tmp_path / "colour.png")


def test_bad_inputs_name_file_and_reason(tmp_path):
    assert issubclass(ImageError, UserError)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: zero-byte file"):
        load_image(tmp_path / "empty.png")

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, size=(64, 64)).astype(np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"trunc\.png: truncated or corrupt"):
        load_image(tmp_path / "trunc.png")

    (tmp_path / "junk.png").write_bytes(b"hello, not an image" * 10)
    with pytest.raises(ImageError, match=r"junk\.png: not a readable"):
        load_image(tmp_path / "junk.png")

    Image.fromarray(np.full((H, W), 77, np.uint8)).save(tmp_path / "const.png")
    with pytest.raises(ImageError, match=r"const\.png: constant image"):
        load_image(tmp_path / "const.png")

    raw = _stored_12bit(rng)
    full = _write_dicom(tmp_path / "full.dcm", raw).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[:-200])
    with pytest.raises(ImageError, match=r"cut\.dcm: truncated or corrupt"):
        load_image(tmp_path / "cut.dcm")

    _write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ImageError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        load_image(tmp_path / "nopix.dcm")

    from pydicom.encaps import encapsulate

    _write_dicom(tmp_path / "jls.dcm", raw, tsyntax=JPEGLSLossless,
                 pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64]))
    with pytest.raises(ImageError, match=r"jls\.dcm: unsupported DICOM transfer syntax JPEG-LS"):
        load_image(tmp_path / "jls.dcm")

    _write_dicom(tmp_path / "flat.dcm", np.full((H, W), 1000, np.uint16))
    with pytest.raises(ImageError, match=r"flat\.dcm: constant image"):
        load_image(tmp_path / "flat.dcm")

    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_dicom_reader_matches_pydicom_stored_values(tmp_path):
    # The test's own file really has 12 bits stored in 16 with junk above them.
    rng = np.random.default_rng(8)
    raw = _stored_12bit(rng)
    assert raw.max() > 4095
    ds = pydicom.dcmread(_write_dicom(tmp_path / "r.dcm", raw))
    assert int(ds.BitsStored) == 12
