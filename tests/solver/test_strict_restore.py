"""A restore checks the whole snapshot before it changes anything: metadata
of the wrong type, arrays that are not finite floating point, random states
of another generator, a provider refusing its state. After each refusal the
solver's weights (views into its flat buffers), history, iteration, loss
window, random states (layers' and its own) and metadata are as before."""
import numpy as np
import pytest

from netdef.device import to_numpy
from netdef.errors import WeightsError
from netdef.snapshot_format import load_arrays, save_arrays
from solver.snapshot import SolverState
from tests.solver.test_sgd import Counter, make_solver, write_classifier


class Picky(Counter):
    """A provider that refuses positions above 100 (after taking them)."""

    def set_state(self, state):
        self.position = state["position"]
        if self.position > 100:
            raise ValueError(f"position {self.position} is past the end")


@pytest.fixture(name="pair")
def fixture_pair(tmp_path):
    """A snapshot taken at iteration 3 and a solver at iteration 1 with other
    weights, history and random states, to restore it into."""
    source = make_solver(write_classifier(tmp_path / "a"), seed=4,
                         state_providers={"a": Counter(), "b": Picky()})
    source.step(3)
    path = source.snapshot()
    target = make_solver(write_classifier(tmp_path / "b"), seed=9,
                         state_providers={"a": Counter(), "b": Picky()}, metadata={"m": 1})
    target.state_providers["a"].position = 5
    target.step(1)
    return path, target


def everything(solver):
    """Every part of the solver a restore writes, copied."""
    return {
        "weights": {f"{n}/{i}": to_numpy(b.data).copy()
                    for n, layer in solver.net.layer_dict.items()
                    for i, b in enumerate(layer.blobs)},
        "flat": [to_numpy(flat.data).copy() for flat in solver._flat],
        "history": {k: to_numpy(v).copy() for k, v in solver.history.items()},
        "iter": solver.iter, "seed": solver.seed, "loss_window": list(solver.loss_window),
        "rng": solver.rng.bit_generator.state,
        "layers": {name: layer.random_state() for name, layer in solver.net.layer_dict.items()
                   if layer.random_state_attributes},
        "providers": {k: p.get_state() for k, p in solver.state_providers.items()},
        "metadata": dict(solver.metadata), "last_snapshot": solver.last_snapshot,
    }


def assert_unchanged(solver, before):
    after = everything(solver)
    for part in ("weights", "history"):
        assert after[part].keys() == before[part].keys()
        for key in before[part]:
            assert np.array_equal(after[part][key], before[part][key]), (part, key)
    for a, b in zip(after["flat"], before["flat"]):
        assert np.array_equal(a, b)
    for part in ("iter", "seed", "loss_window", "rng", "layers", "providers", "metadata",
                 "last_snapshot"):
        assert after[part] == before[part], part


def rewrite(path, tmp_path, meta_change=None, array_change=None):
    """A copy of the snapshot ``path`` with its metadata or arrays changed."""
    arrays, meta = load_arrays(path)
    if meta_change:
        meta_change(meta)
    if array_change:
        array_change(arrays)
    target = tmp_path / "changed.solverstate.npz"
    save_arrays(target, arrays, meta)
    return target


def set_field(name, value):
    return lambda meta: meta.__setitem__(name, value)


def other_generator_state():
    """A JSON-able state of another kind of bit generator (MT19937)."""
    state = np.random.MT19937(1).state
    state["state"]["key"] = state["state"]["key"].tolist()
    return state


def first_layer_state(change):
    def apply(meta):
        entry = meta["random_states"]["train"]["data"]
        change(entry["state"])
    return apply


META_CASES = {
    "iter string": (set_field("iter", "abc"), r"'iter' is 'abc' \(str\), expected a non-negative"),
    "iter negative": (set_field("iter", -3), r"'iter' is -3 \(int\)"),
    "iter 2^63": (set_field("iter", 2**63), r"'iter' is 9223372036854775808 \(int\), expected "
                                            r"a non-negative integer below 2\^63"),
    "seed negative": (set_field("seed", -1), r"'seed' is -1 \(int\)"),
    "iter bool": (set_field("iter", True), r"'iter' is True \(bool\)"),
    "iter missing": (lambda meta: meta.pop("iter"), "it has no iteration"),
    "seed null": (set_field("seed", None), r"'seed' is None \(null\), expected a non-negative"),
    "seed float": (set_field("seed", 1.5), r"'seed' is 1.5 \(float\)"),
    "loss window text": (set_field("loss_window", [1.0, "x"]),
                         "'loss_window' .* expected a list of finite numbers"),
    "loss window NaN": (set_field("loss_window", [float("nan")]), "'loss_window'"),
    "loss window dict": (set_field("loss_window", {"a": 1}), "'loss_window'"),
    "solver rng list": (set_field("solver_rng", [1, 2]), r"'solver_rng' is \[1, 2\] \(list\)"),
    "solver rng of MT19937": (set_field("solver_rng", other_generator_state()),
                              "the solver's RNG state: not a state of this PCG64 generator"),
    "solver rng garbage": (set_field("solver_rng", {"bit_generator": "PCG64", "state": 3}),
                           "the solver's RNG state: not a state of this PCG64"),
    "layer rng of MT19937": (
        first_layer_state(lambda s: s.__setitem__("generator", other_generator_state())),
        "train layer 'data' random state 'generator': not a state of this PCG64"),
    "layer counter text": (
        lambda meta: meta["random_states"]["train"]["drop"]["state"].__setitem__(
            "mask_draws", "many"),
        "train layer 'drop' random state 'mask_draws' is 'many' \\(str\\), expected a non-neg"),
    "layer counter negative": (
        lambda meta: meta["random_states"]["train"]["drop"]["state"].__setitem__(
            "mask_draws", -2),
        "train layer 'drop' random state 'mask_draws' is -2 \\(int\\)"),
    "layer seed null": (
        lambda meta: meta["random_states"]["train"]["drop"].__setitem__("seed", None),
        r"random_states\['train'\]\['drop'\]\['seed'\] is None \(null\), expected a non-neg"),
    "layer seed negative": (
        lambda meta: meta["random_states"]["train"]["drop"].__setitem__("seed", -5),
        r"random_states\['train'\]\['drop'\]\['seed'\] is -5"),
    "random states list": (set_field("random_states", []), "'random_states' is list"),
    "random states entry": (
        lambda meta: meta["random_states"]["train"].__setitem__("drop", [1]),
        r"random_states\['train'\]\['drop'\] is not a dict"),
    "metadata list": (set_field("metadata", [1]), r"'metadata' is \[1\] \(list\)"),
    "providers text": (set_field("providers", "x"), r"'providers' is 'x' \(str\)"),
    "net number": (set_field("net", 3), r"'net' is 3 \(int\), expected a string"),
    "time NaN": (set_field("time", float("nan")), "'time' is nan"),
    "version": (set_field("version", "1"), "solver snapshot version '1' is not supported"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_metadata_of_the_wrong_type_changes_nothing(pair, tmp_path, case):
    path, target = pair
    change, message = META_CASES[case]
    bad = rewrite(path, tmp_path, meta_change=change)
    before = everything(target)
    with pytest.raises(WeightsError, match=message) as info:
        target.restore(bad)
    assert str(info.value).startswith(str(bad))
    assert_unchanged(target, before)


def set_array(key, value):
    return lambda arrays: arrays.__setitem__(key, value)


def with_value(key, value):
    def apply(arrays):
        array = arrays[key].copy()
        array.flat[1] = value
        arrays[key] = array
    return apply


ARRAY_CASES = {
    "bool bias": (lambda a: a.__setitem__("weights/ip1/1", np.ones(6, bool)),
                  "weights array 'ip1/1': dtype bool; parameter values must be floating"),
    "int weights": (lambda a: a.__setitem__("weights/ip2/0", np.ones((3, 6), np.int32)),
                    "weights array 'ip2/0': dtype int32"),
    "complex history": (lambda a: a.__setitem__("history/ip1/0", np.ones((6, 5), complex)),
                        "history array 'ip1/0': dtype complex128"),
    "NaN weight": (with_value("weights/ip1/0", np.nan),
                   r"weights array 'ip1/0': 1 of 30 values are NaN or Inf \(the first at "
                   r"index \(0, 1\)"),
    "Inf history": (with_value("history/ip2/0", -np.inf), "history array 'ip2/0': 1 of 18"),
    "float64 beyond float32": (
        lambda a: a.__setitem__("weights/ip1/1", np.full(6, 1e300)),
        "layer 'ip1' parameter 1 holds 1e\\+300, beyond the range of float32"),
    "weights without index": (lambda a: a.__setitem__("weights/ip1", np.zeros(6)),
                              "array 'ip1' is not named '<layer>/<index>'"),
    "wrong shape": (lambda a: a.__setitem__("weights/ip2/0", np.zeros((3, 7))),
                    r"layer 'ip2' parameter 0: the snapshot has shape \(3, 7\), the net \(3, 6\)"),
    "history shape": (lambda a: a.__setitem__("history/ip2/0", np.zeros(18)),
                      r"solver history 'ip2/0' has shape \(18,\)"),
    "foreign array": (lambda a: a.__setitem__("optimizer/x", np.zeros(1)),
                      "unexpected array 'optimizer/x'"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_bad_arrays_change_nothing(pair, tmp_path, case):
    path, target = pair
    change, message = ARRAY_CASES[case]
    if case == "float64 beyond float32":
        target = make_solver(write_classifier(tmp_path / "c"), seed=2, dtype=np.float32,
                             state_providers={"a": Counter(), "b": Picky()})
    bad = rewrite(path, tmp_path, array_change=change)
    before = everything(target)
    with pytest.raises(WeightsError, match=message):
        target.restore(bad)
    assert_unchanged(target, before)


def test_a_provider_refusing_its_state_puts_the_others_back(pair, tmp_path):
    path, target = pair
    bad = rewrite(path, tmp_path, meta_change=lambda meta: meta["providers"].update(
        a={"position": 7}, b={"position": 1000}))
    before = everything(target)
    with pytest.raises(WeightsError, match="the state of provider 'b' was refused \\(ValueError: "
                       "position 1000 is past the end\\); nothing was restored"):
        target.restore(bad)
    assert_unchanged(target, before)
    assert target.state_providers["a"].position == 5


def test_a_good_snapshot_still_restores_everything(pair):
    path, target = pair
    target.restore(path)
    state = SolverState.load(path)
    assert target.iter == 3 and target.seed == 4
    assert target.rng.bit_generator.state == state.solver_rng
    assert target.net.layer_dict["data"].random_state() == \
        state.random_states["train"]["data"]["state"]
    for key, array in state.weights.items():
        layer, index = key.rsplit("/", 1)
        assert np.array_equal(to_numpy(target.net.params[layer][int(index)].data), array)
    for key, array in state.history.items():
        assert np.array_equal(to_numpy(target.history[key]), array)
    # The blobs are still views into the solver's flat buffers.
    (flat,) = target._flat
    for lp in flat.params:
        assert np.shares_memory(lp.blob.data, flat.data)
    assert float(np.abs(flat.data).sum()) == pytest.approx(
        sum(float(np.abs(state.weights[f"{lp.layer}/{lp.index}"]).sum()) for lp in flat.params))


def test_deeply_nested_metadata_is_a_named_error(pair, tmp_path):
    path, target = pair
    deep = []
    for _ in range(70):
        deep = [deep]
    bad = rewrite(path, tmp_path, meta_change=set_field("metadata", {"x": deep}))
    before = everything(target)
    with pytest.raises(WeightsError, match="nests lists and objects more than 64 levels deep"):
        target.restore(bad)
    assert_unchanged(target, before)
