"""GradCheckResult.passed (netdef/gradcheck.py): a check passes only when it
compared at least one element of every non-empty blob it was asked to
check, and all compared elements agree within the tolerance."""
import numpy as np

from netdef.gradcheck import ElementCheck, GradCheckResult, check_layer


def element(label, analytic, numeric):
    return ElementCheck(label, (0,), analytic, numeric)


def test_a_blob_with_every_element_on_a_kink_fails():
    # ReLU at exactly 0: the one-sided slopes are 0 and 1, so every element
    # is skipped as a kink and nothing is compared.
    result = check_layer('type: "ReLU"', [np.zeros((2, 3))])
    assert result.checked == 0 and result.skipped_kinks == 6
    assert not result.passed
    assert result.unchecked_blobs == ["bottom 0 'bottom[0]'"]
    assert "(no element checked)  FAIL" in result.report()
    assert result.report().endswith("FAIL")


def test_one_unchecked_blob_fails_even_when_another_is_checked():
    found = GradCheckResult(1e-5, {"bottom 0 'a'": element("bottom 0 'a'", 1.0, 1.0),
                                   "bottom 1 'b'": None}, checked=4, skipped_kinks=3,
                            blob_sizes={"bottom 0 'a'": 4, "bottom 1 'b'": 3})
    assert not found.passed
    assert found.unchecked_blobs == ["bottom 1 'b'"]


def test_an_empty_blob_needs_no_element_but_a_check_of_nothing_fails():
    labels = {"bottom 0 'a'": 4, "bottom 1 'b'": 0}
    some = GradCheckResult(1e-5, {"bottom 0 'a'": element("bottom 0 'a'", 2.0, 2.0),
                                  "bottom 1 'b'": None}, 4, 0, labels)
    assert some.passed and some.unchecked_blobs == []
    assert "(empty)" in some.report()
    nothing = GradCheckResult(1e-5, {"bottom 0 'a'": None}, 0, 0, {"bottom 0 'a'": 0})
    assert not nothing.passed
    assert not GradCheckResult(1e-5, {}, 0, 0).passed


def test_checked_elements_pass_within_the_tolerance_and_fail_beyond_it():
    label = "param 0"
    close = GradCheckResult(1e-5, {label: element(label, 1.0, 1.0 + 5e-6)}, 1, 0, {label: 1})
    far = GradCheckResult(1e-5, {label: element(label, 1.0, 1.0 + 5e-5)}, 1, 0, {label: 1})
    assert close.passed and not far.passed
    result = check_layer('type: "ReLU"', [np.array([[-1.0, 0.5, 2.0]])])
    assert result.passed and result.checked == 3, result.report()
