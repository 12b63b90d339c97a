"""Reading rendered charts: the marks of a Vega SVG (vl-convert's file or
a browser's DOM) by their aria attributes."""

from __future__ import annotations

import html
import re


def svg_points(svg: str) -> list[dict]:
    """Every point mark of a rendered chart: its aria-label fields, its fill
    (attributes in any order: vl-convert's file or the browser's DOM)."""
    out = []
    for tag in re.findall(r"<path [^>]*>", svg):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if attrs.get("aria-roledescription") == "point":
            label = html.unescape(attrs["aria-label"])  # '&gt;' has a ';' of its own
            out.append(dict(f.split(": ", 1) for f in label.split("; ")) | {"fill": attrs.get("fill")})
    return out
