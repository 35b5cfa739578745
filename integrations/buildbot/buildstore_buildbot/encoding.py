"""Events as the daemon reads them: one line of strict JSON each."""

from __future__ import annotations

import json
import math


def encode_event(event: dict) -> bytes:
    """``event`` as one line of strict JSON in UTF-8, the only JSON the daemon takes.

    Build properties can hold any Python value, and one the event can't carry must not cost the
    event: a ``build_started`` lost that way gets every later event of its build rejected. So a
    float that JSON has no spelling for goes as the string "NaN", "Infinity" or "-Infinity", and
    any other value JSON can't hold (an arbitrary object) as its ``str()``. The floats are
    replaced wherever they are in the event, not only in property values: that is simplest, and
    the plugin's own fields (times, offsets) never hold such floats.

    A Python string may also hold a surrogate on its own (a name decoded with surrogateescape,
    or a ``"\udc80"`` escape read back from Buildbot's database), which UTF-8 has no spelling
    for: each such one goes as U+FFFD, the way the daemon shows bytes that are not UTF-8.
    """
    try:
        line = _dumps(event)
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the event
        line = _dumps(_finite(event))
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: rare, so only then take the text apart
        return well_formed(line).encode("utf-8")


def well_formed(text: str) -> str:
    """``text`` with each surrogate on its own as U+FFFD: UTF-8 has no spelling for it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # rare: only then take the text apart
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _dumps(value) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
    )


def _finite(value):
    """``value`` with each NaN or infinite float, also as a dict key, spelled as a string."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {(_finite(k) if isinstance(k, float) else k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
