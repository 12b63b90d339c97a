"""The Vega-Lite settings every figure file is written with (the report's
and the coordinate check's)."""

from __future__ import annotations

import altair as alt

# Vega-Lite version of the specs Altair writes ("v6.4.1" -> "6.4"); the bundle
# and the PNG/SVG export must compile with the same one.
VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
PNG_SCALE = 2
