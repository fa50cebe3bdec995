"""Title cards for the templates that need LTX-2 files (``workflows/<name>.jpg``): the template
browser asks every template for a thumbnail, and without the 19B model there is no frame of its
stream to show, so the card says what the template makes. (The demo's thumbnail is a frame of
its own stream: ``python -m benchmarks.thumbnails``.)

    python docs/template_cards.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SIZE = (384, 256)  # as the demo's thumbnail
CARDS = {
    "omniforcing_t2av_5s": ("Text to audio + video", ["LTX-2 19B, streamed", "5 s at 512x768, quality 4-step",
                                                      "needs the LTX-2 files (see the note)"]),
    "omniforcing_realtime_3step": ("Real-time preset", ["LTX-2 19B, 3 steps per block", "faster, a little less quality",
                                                        "needs the LTX-2 files (see the note)"]),
    "omniforcing_long_stream_60s": ("60 s stream", ["8 s rolling window, rebased positions",
                                                   "prompt switch at 30 s, blended over 2 s",
                                                   "needs the LTX-2 files (see the note)"]),
}


def font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size)


def card(title: str, lines: list[str]) -> Image.Image:
    image = Image.new("RGB", SIZE, (18, 20, 28))
    draw = ImageDraw.Draw(image)
    # A strip of one-second blocks, the way the stream arrives.
    for n in range(6):
        shade = 60 + 25 * n
        draw.rounded_rectangle((24 + n * 57, 28, 24 + n * 57 + 50, 78), radius=6, fill=(shade // 2, shade // 2, shade))
    draw.text((24, 100), "OmniForcing", font=font(15), fill=(150, 160, 190))
    draw.text((24, 122), title, font=font(26, bold=True), fill=(240, 240, 245))
    for n, line in enumerate(lines):
        draw.text((24, 166 + 22 * n), line, font=font(15), fill=(190, 195, 210))
    return image


if __name__ == "__main__":
    for name, (title, lines) in CARDS.items():
        card(title, lines).save(WORKFLOWS / f"{name}.jpg", quality=90)
        print(WORKFLOWS / f"{name}.jpg")
