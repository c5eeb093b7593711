"""Loading radiographs into float32 [H, W] arrays in [0, 1]: PNG/JPEG (8 and 16 bit) and DICOM.

DICOM goes through the display pipeline a PACS viewer applies, in the standard's order:
  stored values (BitsStored bits of BitsAllocated; pydicom masks / sign-extends them)
  -> Modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence)
  -> VOI (a VOI LUT Sequence if present, else Window Center/Width with the VOI LUT Function,
     else a robust 0.5-99.5 percentile window computed on the image itself)
  -> polarity: MONOCHROME1, or a Presentation LUT Shape of INVERSE, means "high values are dark";
     such images are inverted so that bone is always bright. (DX objects pair MONOCHROME1 with
     INVERSE to mean the same thing, so the two are OR-ed, not applied twice.)

PNG/JPEG are mapped linearly from their integer range (255 or 65535) to [0, 1]. A 3-channel
image is accepted only when it is a grey image saved as RGB (channels equal within 2/255, which
tolerates JPEG chroma rounding); a real colour image is rejected, since a photo or an annotated
screenshot is not a radiograph. Every failure raises ImageError naming the file and the reason;
the returned array never contains NaN and is never constant.

Sizes are checked from the header before any pixel is decoded: a side above the pixel limit
(default 8192; environment WRISTMIR_MAX_IMAGE_SIDE) is refused, so a 28 KB 1-bit PNG declaring
13000 x 13000 pixels never allocates gigabytes. The largest radiography detectors are about
4300 px a side (43 cm at 100 um), so the limit leaves room for any real radiograph.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from wristmir_jax.errors import UserError

# Channels of an "RGB" image may differ by this much and still count as grey (JPEG rounding).
GREY_RGB_TOLERANCE = 2.0 / 255.0
# An image whose value range is below this (after mapping to [0, 1]) is treated as constant.
CONSTANT_EPS = 1e-6
PERCENTILE_WINDOW = (0.5, 99.5)
DEFAULT_MAX_SIDE = 8192
MAX_SIDE_ENV = "WRISTMIR_MAX_IMAGE_SIDE"


class ImageError(UserError):
    """An image that cannot be loaded; the message names the file and the reason."""


def _is_dicom_bytes(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def max_image_side() -> int:
    """The pixel limit per side: WRISTMIR_MAX_IMAGE_SIDE when set (a positive integer), else 8192."""
    v = os.environ.get(MAX_SIDE_ENV, "").strip()
    if not v:
        return DEFAULT_MAX_SIDE
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n <= 0:
        raise UserError(f"{MAX_SIDE_ENV}={v!r}: expected a positive integer")
    return n


def check_dimensions(width: int, height: int, path: str, max_side: int | None = None) -> None:
    """ImageError when a header declares a side above the limit (before decoding)."""
    limit = max_image_side() if max_side is None else int(max_side)
    if int(width) > limit or int(height) > limit:
        raise ImageError(f"image is {int(width)}x{int(height)} px, above the pixel limit of "
                         f"{limit} a side ({MAX_SIDE_ENV}); not decoded", path=path)


def load_image(path: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Reads a radiograph (PNG, JPEG or DICOM) as float32 [H, W] in [0, 1], bone bright.
    max_side: the pixel limit per side (default max_image_side()), checked before decoding."""
    path = os.fspath(path)
    max_side = max_image_side() if max_side is None else int(max_side)
    if not os.path.exists(path):
        raise ImageError("file not found", path=path)
    if os.path.isdir(path):
        raise ImageError("is a directory, expected an image file", path=path)
    size = os.path.getsize(path)
    if size == 0:
        raise ImageError("zero-byte file", path=path)
    with open(path, "rb") as f:
        head = f.read(132)
    if _is_dicom_bytes(head) or path.lower().endswith((".dcm", ".dicom")):
        img = _load_dicom(path, max_side)
    else:
        img = _load_raster(path, max_side)
    return _finish(img, path)


def _finish(img: np.ndarray, path: str) -> np.ndarray:
    img = np.asarray(img, np.float32)
    if img.ndim != 2 or min(img.shape) < 2:
        raise ImageError(f"expected a 2-D image, got shape {img.shape}", path=path)
    if not np.all(np.isfinite(img)):
        raise ImageError("image contains non-finite values", path=path)
    img = np.clip(img, 0.0, 1.0)
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < CONSTANT_EPS:
        raise ImageError(f"constant image (every pixel is {lo:.4g} after windowing)", path=path)
    return img


# ---------------------------------------------------------------------------------------------
# PNG / JPEG
# ---------------------------------------------------------------------------------------------
def _load_raster(path: str, max_side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            check_dimensions(im.size[0], im.size[1], path, max_side)
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            arr = np.array(im)
    except UnidentifiedImageError:
        raise ImageError("not a readable PNG, JPEG or DICOM file", path=path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"truncated or corrupt image ({_short(e)})", path=path) from None
    except Image.DecompressionBombError:
        raise ImageError("image is too large (decompression bomb guard)", path=path) from None

    if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
        return _grey_from_channels(arr, mode, path)
    if mode == "1":
        return arr.astype(np.float32)
    if mode == "L":
        return arr.astype(np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        a = arr.astype(np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise ImageError(f"integer image with values outside 0..65535 (mode {mode})", path=path)
        return (a / 65535.0).astype(np.float32)
    if mode == "F":
        return _percentile_window(arr.astype(np.float64), path)
    raise ImageError(f"unsupported image mode {mode!r}", path=path)


def _grey_from_channels(arr: np.ndarray, mode: str, path: str) -> np.ndarray:
    if mode == "LA":
        return arr[..., 0].astype(np.float32) / 255.0
    if mode not in ("RGB", "RGBA"):
        raise ImageError(f"unsupported colour mode {mode!r}; save the radiograph as greyscale", path=path)
    rgb = arr[..., :3].astype(np.float32) / 255.0
    spread = float(np.max(rgb.max(axis=-1) - rgb.min(axis=-1)))
    if spread > GREY_RGB_TOLERANCE:
        raise ImageError(
            f"3-channel colour image (channels differ by up to {spread * 255:.0f}/255); "
            "a radiograph must be greyscale", path=path)
    return rgb.mean(axis=-1)


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
def _load_dicom(path: str, max_side: int) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except InvalidDicomError as e:
        raise ImageError(f"not a valid DICOM file ({_short(e)})", path=path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ImageError(f"truncated or corrupt DICOM file ({_short(e)})", path=path) from None

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError("DICOM file has no pixel data (e.g. a structured report or "
                         "presentation state)", path=path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"DICOM photometric interpretation {photometric} is not a greyscale "
                         "radiograph", path=path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageError(f"DICOM has {int(ds.SamplesPerPixel)} samples per pixel; expected 1",
                         path=path)

    try:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except (TypeError, ValueError):
        raise ImageError("DICOM Rows/Columns are not integers", path=path) from None
    check_dimensions(cols, rows, path, max_side)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        name = tsyntax.name if tsyntax is not None else "unknown"
        raise ImageError(f"unsupported DICOM transfer syntax {name} ({tsyntax}): no decoder "
                         f"installed ({_short(e)})", path=path) from None
    except (ValueError, OSError, EOFError, KeyError, TypeError, AttributeError) as e:
        if tsyntax is not None and tsyntax.is_compressed and _no_decoder(tsyntax):
            raise ImageError(f"unsupported DICOM transfer syntax {tsyntax.name} ({tsyntax}): no "
                             "decoder installed", path=path) from None
        raise ImageError(f"truncated or corrupt DICOM pixel data ({_short(e)})", path=path) from None

    stored = np.asarray(stored)
    if stored.ndim == 3 and stored.shape[0] == 1:
        stored = stored[0]
    if stored.ndim != 2:
        raise ImageError(f"DICOM pixel data has shape {stored.shape}; expected one 2-D frame",
                         path=path)
    return dicom_to_display(stored, ds, path)


def _no_decoder(tsyntax) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return not get_decoder(tsyntax).is_available
    except Exception:  # an unknown syntax has no decoder at all
        return True


def dicom_to_display(stored: np.ndarray, ds, path: str = "<dicom>") -> np.ndarray:
    """Stored pixel values + their dataset -> float [H, W] in [0, 1], bone bright."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = np.asarray(stored)
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if stored.dtype.kind == "u" and bits_stored < stored.dtype.itemsize * 8:
        stored = stored & np.asarray((1 << bits_stored) - 1, stored.dtype)

    try:
        values = np.asarray(apply_modality_lut(stored, ds), np.float64)
    except Exception as e:
        raise ImageError(f"bad modality LUT / rescale attributes ({_short(e)})", path=path) from None

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        try:
            out_bits = int(item.LUTDescriptor[2])
            # apply_voi_lut indexes the LUT with the (integer) modality output.
            voi = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True),
                             np.float64)
        except Exception as e:
            raise ImageError(f"bad VOI LUT sequence ({_short(e)})", path=path) from None
        shown = voi / float((1 << out_bits) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _first(ds.WindowCenter)
        width = _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        shown = apply_window(values, center, width, function, path)
    else:
        shown = _percentile_window(values, path)

    inverse = (str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
               or str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE")
    shown = np.clip(shown, 0.0, 1.0)
    if inverse:
        shown = 1.0 - shown
    return shown.astype(np.float32)


def _first(v) -> float:
    # Window Center/Width are multi-valued when a modality offers several windows; the first
    # is the one the modality recommends.
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR",
                 path: str = "<dicom>") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing of modality values to [0, 1]."""
    v = np.asarray(values, np.float64)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageError(f"window width {width} must be > 0", path=path)
        return np.clip((v - (center - width / 2.0)) / width, 0.0, 1.0)
    if function == "SIGMOID":
        if width <= 0:
            raise ImageError(f"window width {width} must be > 0", path=path)
        return 1.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
    if function != "LINEAR":
        raise ImageError(f"unknown VOI LUT function {function!r}", path=path)
    if width < 1:
        raise ImageError(f"window width {width} must be >= 1 for LINEAR", path=path)
    if width == 1:
        return (v > center - 0.5).astype(np.float64)
    return np.clip(((v - (center - 0.5)) / (width - 1.0)) + 0.5, 0.0, 1.0)


def _percentile_window(values: np.ndarray, path: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ImageError("image has no finite pixel values", path=path)
    lo, hi = np.percentile(finite, PERCENTILE_WINDOW)
    if hi - lo <= 0:
        lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 0:
        raise ImageError(f"constant image (every pixel is {lo:.6g})", path=path)
    out = (np.nan_to_num(v, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg[:160]
