"""Helpers shared by the dataset reader tests (VOC, COCO)."""
import warnings

from netdef.errors import DataWarning


def quiet(fn, *args, **kwargs):
    """Call fn with DataWarnings recorded; return (result, messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
