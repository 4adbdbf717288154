"""A proposals file is checked whole when read: image ids strings, counts
non-negative integers (summed without int64 wrap-around), boxes and scores
finite floating point of the counted lengths. Each defect is a DataError
naming the file."""
import numpy as np
import pytest

from detection.proposals import KIND, VERSION, Proposals
from netdef.errors import DataError
from netdef.snapshot_format import save_arrays


def write(path, ids=("a", "b"), counts=(1, 2), boxes=None, scores=None):
    arrays = {"boxes": np.zeros((3, 4), np.float32) if boxes is None else boxes,
              "counts": np.asarray(counts, np.int64) if isinstance(counts, tuple) else counts}
    if scores is not None:
        arrays["scores"] = scores
    save_arrays(path, arrays, {"kind": KIND, "version": VERSION, "image_ids": list(ids)})
    return path


CASES = {
    "id numbers": (dict(ids=(1, 2)), "the image_ids of a proposals file must be strings"),
    "float counts": (dict(counts=np.array([1.0, 2.0])),
                     r"counts must be 2 non-negative integers \(one per image id\), found float64"),
    "bool counts": (dict(counts=np.array([True, True])), "found bool"),
    "negative count": (dict(counts=(4, -1)), "non-negative integers"),
    "2-D counts": (dict(counts=np.ones((2, 1), np.int64)), r"found int64 \(2, 1\)"),
    "wrapping counts": (dict(counts=(2**62, 2**62, 2**62, 2**62), ids="abcd",
                             boxes=np.zeros((0, 4), np.float32)),
                        r"counts summing to 18446744073709551616, boxes float32 \(0, 4\)"),
    "int boxes": (dict(boxes=np.zeros((3, 4), np.int32)),
                  r"boxes int32 \(3, 4\); expected float \(3, 4\)"),
    "boxes of 5": (dict(boxes=np.zeros((3, 5), np.float32)), r"boxes float32 \(3, 5\)"),
    "NaN box": (dict(boxes=np.full((3, 4), np.nan, np.float32)),
                "the proposals' boxes hold NaN or Inf"),
    "Inf score": (dict(scores=np.array([0.5, np.inf, 0.1], np.float32)),
                  "the proposals' scores hold NaN or Inf"),
    "short scores": (dict(scores=np.zeros(2, np.float32)), r"scores float32 \(2,\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_defective_proposals_file_is_a_named_data_error(tmp_path, case):
    content, message = CASES[case]
    path = write(tmp_path / "p.npz", **content)
    with pytest.raises(DataError, match=message) as info:
        Proposals.load(path)
    assert str(info.value).startswith(str(path))


def test_a_well_formed_file_still_loads(tmp_path):
    path = write(tmp_path / "p.npz", scores=np.array([0.5, 0.2, 0.1], np.float32))
    loaded = Proposals.load(path)
    assert loaded.image_ids == ["a", "b"] and [len(b) for b in loaded.boxes] == [1, 2]
    assert np.allclose(loaded.scores[1], [0.2, 0.1])
