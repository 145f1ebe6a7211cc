"""Image checks of one listing: what a usable listing image is.

A listing image is usable when all of these hold, checked in this order (the first failure is
the row's reason; every one rejects the row, never the batch):

1. **Its key names a file inside the batch, reached without a link.** No NUL character
   (``image_key_invalid``), no absolute path, drive, backslash or ``..`` part
   (``image_path_outside_batch``); no part of the path below the batch folder is a symbolic
   link, wherever it points (``image_not_regular_file: images/x.jpg is a symbolic link``); the
   file is opened with :func:`common.files.open_regular` (``O_NOFOLLOW | O_NONBLOCK``, then
   ``fstat``): a FIFO, socket, device or folder is refused, never waited on
   (``image_not_regular_file: images/x.jpg is a FIFO``).
2. **Its header** is JPEG, PNG or WebP, at most ``validate.max_image_pixels`` and at least
   ``validate.min_image_side`` (checked before any pixel is decoded).
3. **Its container is whole** (:func:`common.images.image_end`, before decoding): the file
   reaches the image's end marker (JPEG EOI, PNG IEND, the WebP RIFF size), PNG chunk CRCs
   match, JPEG restart markers come in order, and a JPEG's scans hold at least the bits its
   header's size needs (``image_truncated`` / ``image_corrupt``). At most
   ``validate.max_image_trailing_bytes`` may follow the end (``image_trailing_data: N bytes
   ...``): an appended ZIP, HTML page or video is not part of the image, and a refused image
   is not stored. The limit is 1 KiB: encoders that pad after EOI write a few bytes; none of
   the 11,149 real photos of ``shared/datasets`` has any.
4. **It decodes whole**, once, through the loader every stage shares (EXIF orientation, every
   Pillow mode to RGB, an animated image's first frame): Pillow's "image file is truncated" is
   ``image_truncated``, other decoder errors ``image_undecodable``. Pillow discards libjpeg's
   warnings ("Corrupt JPEG data: premature end of data segment") and returns the blocks it
   found no data for as mid-grey, so a decoded JPEG whose share of that grey fill
   (:func:`common.images.jpeg_fill_fraction`) exceeds ``validate.max_image_fill_fraction`` is
   ``image_truncated`` too. ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays ``False``.
5. **It is not blank**: grey-level standard deviation at least ``validate.min_image_stddev``.

Known limits: zeroed or garbled bytes that leave a JPEG's decoder in step to its last block, and
damaged WebP (VP8) data, which carries no checksum, decode to wrong pixels without a sign.

Image keys are NFC text (they come from listing ids); a file named in another normalisation
(NFD, as macOS writes names) is found by comparing NFC forms, part by part.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from PIL import Image, ImageStat

from common.files import NotRegularFileError, open_regular
from common.images import ImageReadError, image_end, jpeg_fill_fraction, open_image, to_rgb
from common.params import ValidateParams

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
"""Accepted formats (PIL names) and the extension the store gives them."""


class ImageKeyError(ValueError):
    """An image key that names no file of the batch; ``str`` is the row's reason.

    Attributes:
        reason: ``image_key_invalid``, ``image_path_outside_batch`` or ``image_not_regular_file``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def locate_image(batch_dir: Path, image_key: str) -> Path:
    """The file an image key names inside ``batch_dir``, reached without following a link.

    Every part of the key below ``batch_dir`` is checked with ``lstat``: a symbolic link is
    refused wherever it points (inside the batch too). When a part does not exist, it is
    matched to the one directory entry with the same NFC form (a key in NFC finds a file named
    in NFD). The last part is not checked for being a regular file: open it with
    :func:`common.files.open_regular`, which checks the opened file itself.

    Args:
        batch_dir: the batch folder (it may itself be reached through links above it).
        image_key: the key, relative to ``batch_dir``, POSIX separators.

    Returns:
        the path (under ``batch_dir`` resolved), or the exact path when a part is missing.

    Raises:
        ImageKeyError: ``image_key_invalid: <detail>`` (a NUL character, which no file name
            can hold), ``image_path_outside_batch`` (empty, absolute, a drive, a backslash, a
            ``..`` part), ``image_not_regular_file: <key part> is a symbolic link``.
        OSError: from ``lstat`` other than a missing part (a name too long: ``ENAMETOOLONG``).
    """
    if "\x00" in image_key:
        raise ImageKeyError("image_key_invalid", f"the key holds a NUL character (\\x00) at "
                                                 f"position {image_key.index(chr(0))}")
    if not image_key or "\\" in image_key:
        raise ImageKeyError("image_path_outside_batch")
    posix, win = PurePosixPath(image_key), PureWindowsPath(image_key)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts:
        raise ImageKeyError("image_path_outside_batch")
    root = Path(batch_dir).resolve()
    current = root
    for depth, part in enumerate(posix.parts):
        try:
            mode = os.lstat(current / part).st_mode
        except (FileNotFoundError, NotADirectoryError):
            match = _nfc_entry(current, part)
            if match is None:
                return root / posix  # missing: the caller's open says so
            part, mode = match, os.lstat(current / match).st_mode
        current = current / part
        if stat.S_ISLNK(mode):
            shown = PurePosixPath(*posix.parts[:depth + 1])
            raise ImageKeyError("image_not_regular_file", f"{shown} is a symbolic link")
    if current == root:
        raise ImageKeyError("image_path_outside_batch")
    return current


def resolve_image(batch_dir: Path, image_key: str) -> Path | None:
    """The file an image key names (:func:`locate_image`), or ``None`` when the key is refused
    (NUL, outside the batch, a symbolic link on the way). A missing file's path is returned."""
    try:
        return locate_image(batch_dir, image_key)
    except (ImageKeyError, OSError):
        return None


def _nfc_entry(folder: Path, part: str) -> str | None:
    """The one entry of ``folder`` whose NFC form is ``part``'s, else ``None`` (none, two names
    differing only in normalisation, which are not guessed between, or not a folder)."""
    want = unicodedata.normalize("NFC", part)
    try:
        names = [n for n in os.listdir(folder) if unicodedata.normalize("NFC", n) == want]
    except OSError:  # not a folder, or unreadable
        return None
    return names[0] if len(names) == 1 else None


def check_image(batch_dir: Path, image_key: str | None,
                params: ValidateParams) -> tuple[str | None, str | None, str]:
    """Checks one listing image and hashes it (the module docstring says what is checked).

    The file is opened once; its header, its container walk, its one full decode and its
    SHA-256 read that one descriptor (the operating system's page cache serves the re-reads).

    Args:
        batch_dir: the batch folder; the image must be inside it, reached without a link.
        image_key: image path relative to ``batch_dir`` (POSIX separators).
        params: ``max_image_pixels`` (width * height, checked from the header before decoding),
            ``min_image_side`` (pixels), ``max_image_trailing_bytes`` (bytes after the image's
            end marker), ``max_image_fill_fraction`` (share of a JPEG that is libjpeg's grey
            fill) and ``min_image_stddev`` (0-255 grey levels).

    Returns:
        ``(error, sha256, ext)``: on success ``(None, <64 hex chars>, ".jpg" | ".png" | ".webp")``;
        on failure a short reason and ``None`` (``ext`` is the detected format's extension or
        ``""``). Reasons: ``image_key_missing``, ``image_key_invalid: <detail>``,
        ``image_path_outside_batch``, ``image_not_regular_file: <key> is a <kind>``,
        ``image_missing``, ``image_empty`` (0 bytes), ``image_format_unsupported: <FORMAT|unknown>``,
        ``image_too_large: <W>x<H>``, ``image_too_small: <W>x<H>``, ``image_truncated: <detail>``,
        ``image_corrupt: <detail>``, ``image_trailing_data: <N> bytes after ...``,
        ``image_undecodable: <detail>``, ``image_mode_unsupported: <MODE>``,
        ``image_blank: <detail>``.

    Never raises for bad image content; ``OSError`` from the filesystem other than a missing
    file is reported as ``image_unreadable: <detail>``.
    """
    if image_key is None or not str(image_key).strip():
        return "image_key_missing", None, ""
    key, fmt = str(image_key), None
    try:  # the path checks too: a name part over 255 bytes raises ENAMETOOLONG
        with open_regular(locate_image(batch_dir, key)) as fh:
            try:
                img = open_image(fh, params.max_image_pixels, params.min_image_side,
                                 tuple(FORMATS))
                fmt, ext = img.format, _ext(img.format)
                error = _trailing(fh, image_end(fh, img), fmt, params)
                if error:
                    return error, None, ext
                rgb = to_rgb(img)
            except ImageReadError as err:
                return str(err), None, _ext(err.format or fmt)
            error = _fill(rgb, fmt, params) or _blank(rgb, params)
            if error:
                return error, None, ext
            fh.seek(0)
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except ImageKeyError as err:
        return str(err), None, ""
    except NotRegularFileError as err:
        return f"image_not_regular_file: {key} is a {err.kind}", None, ""
    except (FileNotFoundError, NotADirectoryError):
        return "image_missing", None, ""
    except OSError as exc:
        return f"image_unreadable: {exc.strerror or exc}", None, ""
    return None, sha, ext


def _ext(fmt: str | None) -> str:
    # A multi-picture JPEG (MPO, some phone cameras) is a JPEG file; Pillow names it apart.
    return FORMATS.get("JPEG" if fmt == "MPO" else fmt, "")


def _trailing(fh: BinaryIO, end: int, fmt: str, params: ValidateParams) -> str | None:
    # Bytes after the end marker are no part of the picture: an appended archive, page or video.
    extra = os.fstat(fh.fileno()).st_size - end
    if extra > params.max_image_trailing_bytes:
        marker = {"PNG": "IEND chunk", "WEBP": "RIFF size"}.get(fmt, "end marker (EOI)")
        return (f"image_trailing_data: {extra} bytes after the {_ext(fmt)[1:].upper()} image's "
                f"{marker} at byte {end} (at most {params.max_image_trailing_bytes} allowed)")
    return None


def _fill(rgb: Image.Image, fmt: str, params: ValidateParams) -> str | None:
    # libjpeg's grey for blocks it found no data for (Pillow drops the warning); JPEG only.
    if fmt not in ("JPEG", "MPO"):
        return None
    share = jpeg_fill_fraction(rgb)
    if share > params.max_image_fill_fraction:
        return (f"image_truncated: {share:.1%} of the picture is the decoder's grey fill for "
                f"missing data (at most {params.max_image_fill_fraction:.1%} allowed)")
    return None


def _blank(rgb: Image.Image, params: ValidateParams) -> str | None:
    # A blank (uniform) picture shows no product: grey-level standard deviation ~ 0.
    stddev = ImageStat.Stat(rgb.convert("L")).stddev[0]
    if stddev < params.min_image_stddev:
        return f"image_blank: grey std dev {stddev:.2f} < {params.min_image_stddev}"
    return None
