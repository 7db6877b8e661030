"""runtime.images: every on-disk mode decodes to HxWx3 uint8 RGB / HxW bool, bad files name themselves."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from PIL import Image

from runtime.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    decode_image,
    is_image_file,
    read_image,
    read_mask,
)


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
GRAY = np.array(Image.fromarray(RGB).convert("L"))


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_channel_order_and_dtype(tmp_path):
    out = read_image(_save(Image.fromarray(RGB), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, RGB)  # RGB, not OpenCV's BGR


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_roundtrip(tmp_path, suffix):
    kw = {"lossless": True} if suffix == ".webp" else {}
    np.testing.assert_array_equal(read_image(_save(Image.fromarray(RGB), tmp_path / f"a{suffix}", **kw)), RGB)


def test_jpeg_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    smooth[..., 0] = 200
    out = read_image(_save(Image.fromarray(smooth), tmp_path / "a.JPG", quality=95))
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 3
    assert out[..., 0].mean() > 190  # red stays in channel 0


def test_gray_gray_alpha_rgba(tmp_path):
    expect_gray = np.repeat(GRAY[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_image(_save(Image.fromarray(GRAY), tmp_path / "l.png")), expect_gray)
    la = Image.fromarray(RGB).convert("L").convert("LA")
    np.testing.assert_array_equal(read_image(_save(la, tmp_path / "la.png")), expect_gray)
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])  # nearly transparent: alpha dropped
    np.testing.assert_array_equal(read_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png")), RGB)


def test_palette_and_one_bit(tmp_path):
    pal = Image.fromarray(RGB).convert("P")
    np.testing.assert_array_equal(read_image(_save(pal, tmp_path / "p.png")), np.array(pal.convert("RGB")))
    bits = np.zeros((6, 9), bool)
    bits[1:3, 2:7] = True
    out = read_image(_save(Image.fromarray(bits).convert("1"), tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 0], bits.astype(np.uint8) * 255)
    assert out.shape == (6, 9, 3)


def test_sixteen_bit_scaled(tmp_path):
    v16 = np.array([[0, 257, 65535, 32896, 128, 129]], np.uint16)  # 32896 = 128*257
    cv2.imwrite(str(tmp_path / "g16.png"), v16)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[..., 1], [[0, 1, 255, 128, 0, 1]])
    rgb16 = RGB.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), RGB)


def test_non_ascii_path(tmp_path):
    d = tmp_path / "fotos_ärger_画像"
    d.mkdir()
    np.testing.assert_array_equal(read_image(_save(Image.fromarray(RGB), d / "bild_ü.png")), RGB)
    assert read_mask(d / "bild_ü.png").shape == (5, 7)


def test_decode_image_bytes():
    ok, buf = cv2.imencode(".png", RGB[..., ::-1])
    np.testing.assert_array_equal(decode_image(buf.tobytes(), "cam0"), RGB)
    with pytest.raises(ImageReadError, match="cam0"):
        decode_image(b"\x00\x01garbage", "cam0")


def test_errors_name_file_and_reason(tmp_path):
    with pytest.raises(ImageReadError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(ImageReadError, match=r"notes\.png: cannot decode") as e:
        read_image(tmp_path / "notes.png")
    assert "object at 0x" not in str(e.value)  # the message names the file, not a decoder's buffer
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match=r"missing_mask\.png: file not found"):
        read_mask(tmp_path / "missing_mask.png")
    assert issubclass(ImageReadError, ValueError)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_rejected(tmp_path, ext):
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, big)
    p = tmp_path / f"cut{ext}"
    p.write_bytes(buf.tobytes()[: len(buf) * 2 // 3])
    with pytest.raises(ImageReadError, match=f"cut\\{ext}"):
        read_image(p)


def test_masks_every_mode(tmp_path):
    m = np.zeros((6, 9), bool)
    m[2:5, 1:4] = True
    m[0, 8] = True
    u8 = m.astype(np.uint8)
    cases = {
        "one_bit.png": Image.fromarray(m).convert("1"),
        "l255.png": Image.fromarray(u8 * 255),
        "l01.png": Image.fromarray(u8),
        "rgb.png": Image.fromarray(np.dstack([np.zeros_like(u8), u8 * 200, np.zeros_like(u8)])),
        # Opaque alpha everywhere must not turn the whole mask on.
        "rgba.png": Image.fromarray(np.dstack([u8 * 255] * 3 + [np.full_like(u8, 255)])),
    }
    for name, img in cases.items():
        out = read_mask(_save(img, tmp_path / name))
        assert out.dtype == np.bool_, name
        np.testing.assert_array_equal(out, m, err_msg=name)
    cv2.imwrite(str(tmp_path / "m16.png"), m.astype(np.uint16) * 1)  # value 1 in 16-bit
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), m)


def test_real_one_bit_mask(shared_datasets):
    mask_dir = shared_datasets / "mvtec_ad" / "hazelnut_reduced" / "ground_truth" / "crack"
    p = sorted(mask_dir.glob("*_mask.png"))[0]
    assert Image.open(p).mode == "1"
    m = read_mask(p)
    np.testing.assert_array_equal(m, np.array(Image.open(p)))
    assert 0 < m.sum() < m.size


def test_is_image_file():
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
    assert is_image_file("a/B.PNG") and is_image_file("x.tiff") and is_image_file("x.webp")
    assert not is_image_file("a.txt") and not is_image_file("png") and not is_image_file(".hidden.png")


def _opencv_pixels(data: bytes) -> np.ndarray:
    """The pixels OpenCV's libpng gives, as the runtime returned them before libspng."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_libspng_path_gives_opencvs_pixels(level):
    """8-bit RGB PNGs (every zlib level, OpenCV's and Pillow's filters) decode through libspng to the
    same pixels OpenCV gives; the fast path is the one taken."""
    from runtime import images

    pytest.importorskip("pyspng")
    img = np.random.default_rng(level).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    img[20:60, 30:90] = (200, 10, 30)  # flat areas make the encoder pick other filters
    for data in (cv2.imencode(".png", img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes(),
                 _pil_png(img, level)):
        assert images._is_png_rgb8(data)
        fast = images._decode_png_rgb8(data)
        assert fast is not None and np.array_equal(fast, img)
        assert np.array_equal(decode_image(data, "x.png"), _opencv_pixels(data))


def _pil_png(img: np.ndarray, level: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def test_libspng_path_not_taken_for_other_pngs(tmp_path):
    """Interlaced, 16-bit, grey, palette and RGBA PNGs go through OpenCV; a truncated RGB PNG too,
    and OpenCV's error names the file."""
    from runtime import images

    import zlib

    rgb = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    whole = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    ihdr = whole[12:28] + b"\x01"  # the same header, marked Adam7-interlaced, with its CRC
    interlaced = whole[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + whole[33:]
    others = [interlaced,
              cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])[1].tobytes(),
              cv2.imencode(".png", rgb[..., 0])[1].tobytes(),
              cv2.imencode(".png", np.dstack([rgb, rgb[..., :1]]))[1].tobytes()]
    for data in others:
        assert not images._is_png_rgb8(data)
        assert images._decode_png_rgb8(data) is None
    assert np.array_equal(decode_image(others[1], "16.png"), rgb)
    assert images._is_png_rgb8(whole)
    with pytest.raises(ImageReadError, match="cut.png"):
        decode_image(whole[: len(whole) * 2 // 3], "cut.png")


def test_libspng_path_on_real_images(shared_datasets):
    """Every bottle image (8-bit RGB PNGs from a line camera) decodes to OpenCV's pixels."""
    pytest.importorskip("pyspng")
    files = sorted((shared_datasets / "mvtec_ad" / "bottle").glob("*/*/*.png"))
    if not files:
        pytest.skip(f"no bottle images under {shared_datasets}/mvtec_ad/bottle (see ../shared/datasets/README.md)")
    for f in files[::7]:
        data = f.read_bytes()
        assert np.array_equal(decode_image(data, f.name), _opencv_pixels(data)), f
