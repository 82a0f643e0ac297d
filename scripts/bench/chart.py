"""The results chart as a PNG, with nothing but the standard library (zlib): matplotlib is not a
dependency of frontgate and the benchmark should not pull it in for one picture.

One horizontal bar per headline comparison, on a log scale centred on parity: a bar to the right
of the ×1 line means frontgate is that many times better (higher throughput, or lower latency or
memory), to the left that it is worse. Text uses a built-in 5×7 bitmap font.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

# 5x7 glyphs ('#' = ink), rows separated by '/'; a glyph of 9 rows has a descender.
_FONT_SRC = {
    "A": ".###./#...#/#...#/#####/#...#/#...#/#...#", "B": "####./#...#/#...#/####./#...#/#...#/####.",
    "C": ".###./#...#/#..../#..../#..../#...#/.###.", "D": "####./#...#/#...#/#...#/#...#/#...#/####.",
    "E": "#####/#..../#..../####./#..../#..../#####", "F": "#####/#..../#..../####./#..../#..../#....",
    "G": ".###./#...#/#..../#.###/#...#/#...#/.####", "H": "#...#/#...#/#...#/#####/#...#/#...#/#...#",
    "I": ".###./..#../..#../..#../..#../..#../.###.", "J": "..###/...#./...#./...#./...#./#..#./.##..",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#", "L": "#..../#..../#..../#..../#..../#..../#####",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#", "N": "#...#/#...#/##..#/#.#.#/#..##/#...#/#...#",
    "O": ".###./#...#/#...#/#...#/#...#/#...#/.###.", "P": "####./#...#/#...#/####./#..../#..../#....",
    "Q": ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#", "R": "####./#...#/#...#/####./#.#../#..#./#...#",
    "S": ".####/#..../#..../.###./....#/....#/####.", "T": "#####/..#../..#../..#../..#../..#../..#..",
    "U": "#...#/#...#/#...#/#...#/#...#/#...#/.###.", "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "W": "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.", "X": "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    "Y": "#...#/#...#/.#.#./..#../..#../..#../..#..", "Z": "#####/....#/...#./..#../.#.../#..../#####",
    "0": ".###./#...#/#..##/#.#.#/##..#/#...#/.###.", "1": "..#../.##../..#../..#../..#../..#../.###.",
    "2": ".###./#...#/....#/...#./..#../.#.../#####", "3": "#####/...#./..#../...#./....#/#...#/.###.",
    "4": "...#./..##./.#.#./#..#./#####/...#./...#.", "5": "#####/#..../####./....#/....#/#...#/.###.",
    "6": "..##./.#.../#..../####./#...#/#...#/.###.", "7": "#####/....#/...#./..#../.#.../.#.../.#...",
    "8": ".###./#...#/#...#/.###./#...#/#...#/.###.", "9": ".###./#...#/#...#/.####/....#/...#./.##..",
    "a": "...../...../.###./....#/.####/#...#/.####", "b": "#..../#..../#.##./##..#/#...#/#...#/####.",
    "c": "...../...../.###./#..../#..../#...#/.###.", "d": "....#/....#/.##.#/#..##/#...#/#...#/.####",
    "e": "...../...../.###./#...#/#####/#..../.###.", "f": "..##./.#..#/.#.../###../.#.../.#.../.#...",
    "g": "...../...../.####/#...#/#...#/#...#/.####/....#/.###.",
    "h": "#..../#..../#.##./##..#/#...#/#...#/#...#", "i": "..#../...../.##../..#../..#../..#../.###.",
    "j": "...#./...../..##./...#./...#./...#./...#./#..#./.##..",
    "k": "#..../#..../#..#./#.#../##.../#.#../#..#.", "l": ".##../..#../..#../..#../..#../..#../.###.",
    "m": "...../...../##.#./#.#.#/#.#.#/#...#/#...#", "n": "...../...../#.##./##..#/#...#/#...#/#...#",
    "o": "...../...../.###./#...#/#...#/#...#/.###.",
    "p": "...../...../####./#...#/#...#/#...#/####./#..../#....",
    "q": "...../...../.####/#...#/#...#/#...#/.####/....#/....#",
    "r": "...../...../#.##./##..#/#..../#..../#....", "s": "...../...../.####/#..../.###./....#/####.",
    "t": ".#.../.#.../###../.#.../.#.../.#..#/..##.", "u": "...../...../#...#/#...#/#...#/#..##/.##.#",
    "v": "...../...../#...#/#...#/#...#/.#.#./..#..", "w": "...../...../#...#/#...#/#.#.#/#.#.#/.#.#.",
    "x": "...../...../#...#/.#.#./..#../.#.#./#...#",
    "y": "...../...../#...#/#...#/#...#/#...#/.####/....#/.###.",
    "z": "...../...../#####/...#./..#../.#.../#####",
    " ": "...../...../...../...../...../...../.....", ".": "...../...../...../...../...../.##../.##..",
    ",": "...../...../...../...../.##../..#../.#...", ":": "...../.##../.##../...../.##../.##../.....",
    ";": "...../.##../.##../...../.##../..#../.#...",
    "%": "##.../##..#/...#./..#../.#.../#..##/...##", "(": "...#./..#../.#.../.#.../.#.../..#../...#.",
    ")": ".#.../..#../...#./...#./...#./..#../.#...", "/": "...../....#/...#./..#../.#.../#..../.....",
    "-": "...../...../...../.###./...../...../.....", "+": "...../..#../..#../#####/..#../..#../.....",
    "=": "...../...../#####/...../#####/...../.....", "×": "...../#...#/.#.#./..#../.#.#./#...#/.....",
    "_": "...../...../...../...../...../...../#####", "<": "...#./..#../.#.../#..../.#.../..#../...#.",
    ">": ".#.../..#../...#./....#/...#./..#../.#...", "!": "..#../..#../..#../..#../..#../...../..#..",
    "?": ".###./#...#/....#/...#./..#../...../..#..", "'": "..#../..#../...../...../...../...../.....",
}
_FONT = {ch: [row for row in src.split("/")] for ch, src in _FONT_SRC.items()}
_ALIASES = {"–": "-", "—": "-", "·": "."}
GLYPH_W, GLYPH_H, CELL_W, CELL_H = 5, 9, 6, 11

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (120, 120, 120), (225, 225, 225)
GREEN, RED = (46, 139, 87), (200, 64, 64)


class Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.px = bytearray(WHITE * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        x0, x1 = sorted((max(0, x0), min(self.w, x1)))
        y0, y1 = sorted((max(0, y0), min(self.h, y1)))
        line = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.w + x0) * 3
            self.px[start:start + len(line)] = line

    def text(self, x: int, y: int, s: str, color=BLACK, scale: int = 2) -> int:
        """Draw `s` with its top-left at (x, y); returns the x after it."""
        for ch in s:
            rows = _FONT.get(_ALIASES.get(ch, ch)) or _FONT["?"]
            for r, row in enumerate(rows):
                for c, bit in enumerate(row):
                    if bit == "#":
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale, y + (r + 1) * scale, color)
            x += CELL_W * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)   # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + \
            chunk(b"IEND", b"")


def text_width(s: str, scale: int = 2) -> int:
    return len(s) * CELL_W * scale


def bar_chart(title: str, subtitle: str, bars: list[tuple[str, float | None]]) -> bytes:
    """`bars`: (label, advantage) where advantage > 1 means frontgate is better; None = not measured."""
    scale, row_h, top = 2, 30, 80
    label_w = max([text_width(label) for label, _ in bars] + [200]) + 30
    plot_w = 560
    width = label_w + plot_w + 130
    height = top + row_h * len(bars) + 60
    known = [a for _, a in bars if a]
    hi = max([4.0, *known])
    lo = min([0.25, *known])
    lo_exp, hi_exp = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    x_of = lambda v: label_w + round((math.log2(v) - lo_exp) / (hi_exp - lo_exp) * plot_w)

    cv = Canvas(width, height)
    cv.text(20, 14, title, scale=scale)
    cv.text(20, 44, subtitle, GREY, scale=scale)
    bottom = top + row_h * len(bars)
    for e in range(lo_exp, hi_exp + 1):           # grid: x1/4, x1/2, x1, x2, x4, ...
        x = x_of(2.0 ** e)
        cv.rect(x, top - 6, x + 1, bottom, BLACK if e == 0 else LIGHT)
        tick = f"×{2 ** e:g}" if e >= 0 else f"×1/{2 ** -e:g}"
        cv.text(x - text_width(tick) // 2, bottom + 10, tick, GREY, scale=scale)
    one = x_of(1.0)
    for i, (label, adv) in enumerate(bars):
        y = top + i * row_h
        cv.text(20, y + 6, label, scale=scale)
        if not adv:
            cv.text(one + 8, y + 6, "not measured", GREY, scale=scale)
            continue
        x = x_of(min(max(adv, 2.0 ** lo_exp), 2.0 ** hi_exp))
        cv.rect(min(one, x), y + 5, max(one, x) + 1, y + row_h - 5, GREEN if adv >= 1 else RED)
        value = f"×{adv:.2f}"
        cv.text(max(one, x) + 8 if adv >= 1 else one + 8, y + 6, value, scale=scale)
    return cv.png()


def render(results, scenarios, path: Path) -> Path | None:
    """The headline comparisons of a run as `path` (PNG); None when nothing was compared."""
    from scripts.bench.report import comparisons   # report imports scenarios; keep this module light
    rows = comparisons(results, scenarios)
    if not rows:
        return None
    bars = [(f"{c.scenario.id}. {c.metric.label}: {c.ours.short} vs {c.ref.short}", c.advantage) for c in rows]
    png = bar_chart("frontgate vs stunnel + HAProxy, same machine",
                    "times better than the reference, log scale (right of x1: frontgate wins)", bars)
    path.write_bytes(png)
    return path
