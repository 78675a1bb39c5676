"""load_rgb: every format and mode becomes an 8-bit RGB image; bad files raise BadImage."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.extraction.decode import BadImage, load_rgb

RED = (220, 30, 40)
BLUE = (20, 40, 230)


def _assert_rgb(im: Image.Image, size: tuple[int, int]) -> None:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.size == size
    arr = np.asarray(im)
    assert arr.dtype == np.uint8
    assert arr.shape == (size[1], size[0], 3)


def _close(a, b, tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- formats

# (extension, Pillow format, colour tolerance: lossy formats drift a little)
FORMATS = [
    ("jpg", "JPEG", 12),
    ("png", "PNG", 0),
    ("webp", "WEBP", 12),
    ("bmp", "BMP", 0),
    ("tif", "TIFF", 0),
    ("gif", "GIF", 12),
]


@pytest.mark.parametrize(("ext", "fmt", "tol"), FORMATS, ids=[f[1] for f in FORMATS])
def test_formats_decode_to_rgb(tmp_path: Path, ext: str, fmt: str, tol: int) -> None:
    path = tmp_path / f"img.{ext}"
    Image.new("RGB", (24, 16), RED).save(path, fmt)
    im = load_rgb(path)
    _assert_rgb(im, (24, 16))
    assert _close(im.getpixel((12, 8)), RED, tol), im.getpixel((12, 8))


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 12), RED), Image.new("RGB", (16, 12), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:  # the file really is animated
        assert getattr(check, "n_frames", 1) == 2
    im = load_rgb(path)
    _assert_rgb(im, (16, 12))
    px = im.getpixel((8, 6))
    assert _close(px, RED, 12), px
    assert not _close(px, BLUE, 60)


# ---------------------------------------------------------------- modes


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (10, 20), 77).save(path)
    im = load_rgb(path)
    _assert_rgb(im, (10, 20))
    assert im.getpixel((3, 3)) == (77, 77, 77)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (12, 8), (*RED, 100)).save(path)
    im = load_rgb(path)
    _assert_rgb(im, (12, 8))
    assert im.getpixel((0, 0)) == RED  # colour kept, alpha dropped (not composited)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    # CMYK (0, 255, 255, 0) is pure red; (0, 0, 0, 0) is white.
    im = Image.new("CMYK", (20, 10), (0, 255, 255, 0))
    im.paste((0, 0, 0, 0), (10, 0, 20, 10))
    im.save(path, "JPEG", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_rgb(path)
    _assert_rgb(out, (20, 10))
    assert _close(out.getpixel((2, 5)), (255, 0, 0), 20), out.getpixel((2, 5))
    assert _close(out.getpixel((17, 5)), (255, 255, 255), 20), out.getpixel((17, 5))


def _palette_image() -> Image.Image:
    im = Image.new("P", (16, 8), 0)
    im.putpalette([0, 0, 0, *RED, *BLUE] + [0] * (256 - 3) * 3)
    im.paste(1, (0, 0, 8, 8))
    im.paste(2, (8, 0, 16, 8))
    return im


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    _palette_image().save(path)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" not in check.info
    im = load_rgb(path)
    _assert_rgb(im, (16, 8))
    assert im.getpixel((2, 2)) == RED
    assert im.getpixel((12, 2)) == BLUE


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "pal_t.png"
    _palette_image().save(path, transparency=2)  # BLUE's index is transparent
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    im = load_rgb(path)
    _assert_rgb(im, (16, 8))
    assert im.getpixel((2, 2)) == RED
    assert im.getpixel((12, 2)) == BLUE  # colour of the transparent index kept, alpha dropped


def _save_16bit(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I;16B", "I"), check.mode


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    a = np.zeros((8, 12), np.uint16)
    a[:, 0:4] = 65535
    a[:, 4:8] = 32768
    a[:, 8:12] = 0
    _save_16bit(path, a)
    im = load_rgb(path)
    _assert_rgb(im, (12, 8))
    assert im.getpixel((1, 1)) == (255, 255, 255)
    mid = im.getpixel((5, 1))
    assert mid[0] == mid[1] == mid[2]
    assert abs(mid[0] - 128) <= 1, mid  # clipping would give 255
    assert im.getpixel((10, 1)) == (0, 0, 0)


def test_dark_16bit_png_is_scaled_by_16bit_range(tmp_path: Path) -> None:
    path = tmp_path / "dark16.png"
    a = np.full((8, 8), 255, np.uint16)  # 255 / 65535: almost black
    _save_16bit(path, a)
    im = load_rgb(path)
    _assert_rgb(im, (8, 8))
    assert im.getpixel((0, 0))[0] <= 2, im.getpixel((0, 0))


# ---------------------------------------------------------------- EXIF


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(path) as check:
        assert check.size == (40, 20)
        assert check.getexif().get(0x0112) == 6
    out = load_rgb(path)
    _assert_rgb(out, (20, 40))
    # rotated 90 CW: the left (blue) half ends up on top
    assert _close(out.getpixel((10, 5)), BLUE, 20), out.getpixel((10, 5))
    assert _close(out.getpixel((10, 35)), RED, 20), out.getpixel((10, 35))


def test_no_exif_keeps_size(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 20), RED).save(path, "JPEG")
    assert load_rgb(path).size == (40, 20)


# ---------------------------------------------------------------- bad files


def _reason(path: Path, **kw) -> str:
    with pytest.raises(BadImage) as info:
        load_rgb(path, **kw)
    reason = str(info.value)
    assert reason, "BadImage needs a non-empty reason"
    assert "\n" not in reason
    return reason.lower()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in _reason(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    reason = _reason(path)
    assert "truncated" in reason or "cannot decode" in reason, reason


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("this is not a picture\n" * 10)
    assert "not an image" in _reason(path)


def test_decompression_bomb(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20), RED).save(path)
    assert "decompression bomb" in _reason(path, max_pixels=100)
    assert load_rgb(path, max_pixels=400).size == (20, 20)  # at the limit: fine


def test_unreadable_missing_file(tmp_path: Path) -> None:
    assert "unreadable" in _reason(tmp_path / "does_not_exist.png")


def test_bad_image_is_an_exception() -> None:
    assert issubclass(BadImage, Exception)
    assert str(BadImage("empty file")) == "empty file"


def test_bytes_decode_as_the_file_does_and_str_paths_are_checked_like_paths(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(40, 48, 3)).save(src)
    np.testing.assert_array_equal(np.asarray(load_rgb(io.BytesIO(src.read_bytes()))), np.asarray(load_rgb(src)))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        load_rgb(str(tmp_path / "empty.jpg"))
    with pytest.raises(BadImage, match="unreadable"):
        load_rgb(str(tmp_path / "missing.jpg"))


# ---------------------------------------------------------------- --decode fast (JPEG scaled decoding)


def _noisy_jpeg(path: Path, w: int, h: int, exif_orientation: int | None = None) -> Path:
    """A photo-like JPEG: smooth colour fields plus noise (scaled decoding must not alias it)."""
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 255, (h // 64 + 2, w // 64 + 2, 3)).astype(np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.clip(np.asarray(im, np.float32) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    Image.fromarray(arr).save(path, quality=90, exif=exif.tobytes())
    return path


@pytest.mark.parametrize(("size", "at_least"), [
    ((4000, 3000), 256), ((3000, 4000), 256), ((4000, 3000), 235), ((640, 480), 256), ((257, 1000), 256),
    ((4000, 3000), (384, 384)), ((5000, 700), (224, 224)), ((300, 200), 256),
])
def test_draft_never_goes_below_the_resize_target(size, at_least) -> None:
    from featpipe.extraction.decode import draft_request

    w, h = size
    rw, rh = draft_request(size, at_least)
    scale = min(w // rw, h // rh)
    s = next(s for s in (8, 4, 2, 1) if scale >= s)  # what Pillow's JpegImageFile.draft picks
    dw, dh = -(-w // s), -(-h // s)
    if isinstance(at_least, int):
        assert min(dw, dh) >= min(at_least, w, h)
        if s < 8:  # a larger scale would have gone below the target: less than twice the target remains
            assert min(dw, dh) < 2 * at_least or s == 1
    else:
        assert dh >= min(at_least[0], h) and dw >= min(at_least[1], w)


def test_fast_decoding_decodes_fewer_pixels_and_keeps_the_target(tmp_path: Path) -> None:
    path = _noisy_jpeg(tmp_path / "camera.jpg", 2400, 1800)
    seen = []
    exact = load_rgb(path, reserve=seen.append)
    fast = load_rgb(path, at_least=256, reserve=seen.append)
    assert exact.size == (2400, 1800)
    # 1800 // 256 = 7: libjpeg scales by 1/4 (1/8 would leave 225 < 256 rows).
    assert fast.size == (600, 450)
    assert seen == [2400 * 1800, 600 * 450]  # the reservation names the pixels really decoded
    # The scaled decode is the same picture: compare with the exact one shrunk alike.
    ref = np.asarray(exact.resize((600, 450), Image.BOX), np.float32)
    assert np.abs(np.asarray(fast, np.float32) - ref).mean() < 3.0


def test_fast_decoding_of_other_formats_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), RED).save(path)
    seen = []
    assert load_rgb(path, at_least=64, reserve=seen.append).size == (1200, 900)
    assert seen == [1200 * 900]


def test_fast_decoding_squash_target_follows_exif_rotation(tmp_path: Path) -> None:
    # Stored 2000x800, shown 800x2000 (orientation 6): a squash to 300 high x 200 wide needs
    # 300 rows upright, which are 300 columns in the file.
    path = _noisy_jpeg(tmp_path / "turned.jpg", 2000, 800, exif_orientation=6)
    im = load_rgb(path, at_least=(300, 200))
    assert im.size[1] >= 300 and im.size[0] >= 200
    assert im.size[1] > im.size[0]  # turned upright
    assert im.size == (200, 500)  # min(2000 // 300, 800 // 200) = 4: 500x200 in the file, turned


def test_preprocessor_fast_gives_the_exact_crop_shape_close_to_exact(tmp_path: Path) -> None:
    from dataclasses import replace

    from featpipe.extraction.preprocess import Preprocessor
    from featpipe.models import DataConfig

    path = _noisy_jpeg(tmp_path / "camera.jpg", 3200, 2400)
    base = DataConfig(crop=(224, 224), resize=256, crop_mode="center", interpolation="bicubic",
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resampler="torch")
    exact = Preprocessor(base).load(path)
    fast = Preprocessor(replace(base, decode="fast")).load(path)
    assert exact.shape == fast.shape == (224, 224, 3)
    diff = np.abs(exact.astype(np.float32) - fast.astype(np.float32))
    assert diff.mean() < 4.0, diff.mean()


def test_pixel_budget_bounds_decodes_in_flight() -> None:
    import threading
    import time

    from featpipe.extraction.decode import PixelBudget

    budget = PixelBudget(capacity=30)
    inside = []

    def work(pixels: int) -> None:
        with budget.hold() as reserve:
            reserve(pixels)
            inside.append(budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(12,)) for _ in range(6)]
    threads.append(threading.Thread(target=work, args=(100,)))  # larger than the budget: goes alone
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert budget.used == 0
    assert 24 <= max(x for x in inside if x != 100) <= 30  # two 12s at once, never three
    assert budget.peak == 100  # the large one alone
