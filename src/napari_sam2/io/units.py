"""Physical units: spellings found in files (OME-XML, ImageJ, NIfTI, napari/pint) → the UDUNITS-2 names that
OME-Zarr 0.5 axes carry ("micrometer", "second", ...), and short symbols for table column names ("um", "s")."""

from __future__ import annotations

__all__ = ["SPACE_UNITS", "TIME_UNITS", "normalise_unit", "symbol"]

SPACE_UNITS = {  # UDUNITS-2 name: symbol
    "angstrom": "A",
    "picometer": "pm",
    "nanometer": "nm",
    "micrometer": "um",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
}
TIME_UNITS = {
    "picosecond": "ps",
    "nanosecond": "ns",
    "microsecond": "us",
    "millisecond": "ms",
    "second": "s",
    "minute": "min",
    "hour": "h",
    "day": "d",
}
_ALIASES = {
    "å": "angstrom",
    "Å": "angstrom",
    "pm": "picometer",
    "nm": "nanometer",
    "µm": "micrometer",
    "μm": "micrometer",  # Greek mu as well as the micro sign
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "ps": "picosecond",
    "ns": "nanosecond",
    "µs": "microsecond",
    "μs": "microsecond",
    "us": "microsecond",
    "usec": "microsecond",
    "ms": "millisecond",
    "msec": "millisecond",
    "s": "second",
    "sec": "second",
    "min": "minute",
    "h": "hour",
    "hr": "hour",
    "d": "day",
}


def normalise_unit(text) -> str | None:
    """A unit as written by a file or napari (e.g. "µm", "micron", "sec", pint's Unit('micrometer')) → its
    UDUNITS-2 name ("micrometer"), or None when it is missing, unknown, or only "pixel"."""
    if text is None:
        return None
    word = str(text).strip()
    if not word:
        return None
    name = _ALIASES.get(word) or _ALIASES.get(word.lower()) or word.lower().replace("metre", "meter")
    if name.endswith("s") and name[:-1] in SPACE_UNITS | TIME_UNITS:
        name = name[:-1]  # plurals: "seconds", "micrometers"
    return name if name in SPACE_UNITS or name in TIME_UNITS else None


def symbol(unit: str | None) -> str:
    """Short symbol of a UDUNITS-2 name for column names ("micrometer" → "um"); "phys" when unknown."""
    return SPACE_UNITS.get(unit or "") or TIME_UNITS.get(unit or "") or "phys"
