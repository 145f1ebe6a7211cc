"""Image checks of one listing: path inside the batch, format, size (before decoding), full decode.

Pixels are read by the one loader every stage shares (:func:`common.images.open_rgb`'s steps):
the header's dimensions are checked before any pixel is decoded (a decompression bomb costs a
few bytes of reading), EXIF orientation is applied, every Pillow mode is converted to RGB
(transparency on white), and an animated PNG/WebP is judged by its first frame, the frame
training reads. The blank check runs on that RGB picture.

Image keys are NFC text (they come from listing ids); a file named in another normalisation
(NFD, as macOS writes names) is found by comparing NFC forms, part by part.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image, ImageStat

from common.images import ImageReadError, open_image, to_rgb
from common.params import ValidateParams

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
"""Accepted formats (PIL names) and the extension the store gives them."""


def resolve_image(batch_dir: Path, image_key: str) -> Path | None:
    """The file an image key names, or ``None`` when the key leaves the batch folder.

    Refused: empty keys, absolute paths (POSIX or Windows), drive letters, backslashes, any
    ``..`` part, and keys whose resolved path (symlinks followed) is outside ``batch_dir``.
    When the exact path does not exist, each part is matched to the one directory entry with
    the same NFC form (a key in NFC finds a file named in NFD); the result is checked the same
    way. Without a match the exact (missing) path is returned.
    """
    if not image_key or "\x00" in image_key or "\\" in image_key:
        return None
    posix, win = PurePosixPath(image_key), PureWindowsPath(image_key)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts:
        return None
    root = Path(batch_dir).resolve()
    path = root / posix
    if not os.path.lexists(path):
        path = _match_nfc(root, posix.parts) or path
    target = path.resolve()
    if not target.is_relative_to(root) or target == root:
        return None
    return target


def _match_nfc(root: Path, parts: tuple[str, ...]) -> Path | None:
    """``root / parts`` with every part replaced by the directory entry of the same NFC form.

    ``None`` when a part has no such entry, or two (names differing only in normalisation are
    not guessed between); a folder that resolves outside ``root`` is returned as it is.
    """
    current = root
    for part in parts:
        if os.path.lexists(current / part):
            current = current / part
            continue
        if not current.resolve().is_relative_to(root):
            return current  # never list a folder outside the batch; the caller refuses it
        want = unicodedata.normalize("NFC", part)
        try:
            names = [n for n in os.listdir(current) if unicodedata.normalize("NFC", n) == want]
        except OSError:  # not a folder, or unreadable
            return None
        if len(names) != 1:
            return None  # none, or two files differing only in normalisation: do not guess
        current = current / names[0]
    return current


def check_image(batch_dir: Path, image_key: str | None,
                params: ValidateParams) -> tuple[str | None, str | None, str]:
    """Checks one listing image and hashes it.

    Args:
        batch_dir: the batch folder; the image must resolve inside it.
        image_key: image path relative to ``batch_dir`` (POSIX separators).
        params: ``max_image_pixels`` (width * height, checked from the header before decoding)
            and ``min_image_side`` (pixels).

    Returns:
        ``(error, sha256, ext)``: on success ``(None, <64 hex chars>, ".jpg" | ".png" | ".webp")``;
        on failure a short reason and ``None`` (``ext`` is the detected format's extension or
        ``""``). Reasons: ``image_key_missing``, ``image_path_outside_batch``, ``image_missing``,
        ``image_empty`` (0 bytes), ``image_format_unsupported: <FORMAT|unknown>``,
        ``image_too_large: <W>x<H>``, ``image_too_small: <W>x<H>``,
        ``image_undecodable: <detail>``, ``image_mode_unsupported: <MODE>``,
        ``image_blank: <detail>`` (grey-level standard deviation of the loader's RGB picture
        below ``params.min_image_stddev``, 0-255 scale).

    Never raises for bad image content; ``OSError`` from the filesystem other than a missing
    file is reported as ``image_unreadable: <detail>``.
    """
    if image_key is None or not str(image_key).strip():
        return "image_key_missing", None, ""
    try:  # the path checks too: a name part over 255 bytes raises ENAMETOOLONG
        path = resolve_image(batch_dir, str(image_key))
        if path is None:
            return "image_path_outside_batch", None, ""
        if not path.is_file():  # also refuses folders, FIFOs and devices
            return "image_missing", None, ""
        with open(path, "rb") as fh:
            try:
                img = open_image(fh, params.max_image_pixels, params.min_image_side,
                                 tuple(FORMATS))
                ext = _ext(img.format)
                rgb = to_rgb(img)
            except ImageReadError as err:
                return str(err), None, _ext(err.format)
            error = _blank(rgb, params)
            if error:
                return error, None, ext
            fh.seek(0)
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        return f"image_unreadable: {exc.strerror or exc}", None, ""
    return None, sha, ext


def _ext(fmt: str | None) -> str:
    # A multi-picture JPEG (MPO, some phone cameras) is a JPEG file; Pillow names it apart.
    return FORMATS.get("JPEG" if fmt == "MPO" else fmt, "")


def _blank(rgb: Image.Image, params: ValidateParams) -> str | None:
    # A blank (uniform) picture shows no product: grey-level standard deviation ~ 0.
    stddev = ImageStat.Stat(rgb.convert("L")).stddev[0]
    if stddev < params.min_image_stddev:
        return f"image_blank: grey std dev {stddev:.2f} < {params.min_image_stddev}"
    return None
