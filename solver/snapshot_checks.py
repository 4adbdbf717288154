"""The checks a solver snapshot passes before a restore changes anything.

``SolverState.load`` runs ``check_meta`` (the JSON fields have their
types: ``iter`` a non-negative integer, ``seed`` an integer, the loss window
finite numbers, the random states nested dicts, ...) and ``check_arrays``
(array names, floating-point dtypes, finite values). ``check_random_states``
then tries every random state the restore would set on a fresh generator of
the same kind (never on the live one), so an RNG state of another generator
or a malformed one is refused while the solver is still untouched. Every
error is a WeightsError naming the snapshot file and the field.
"""
import math

import numpy as np

from netdef.errors import WeightsError
from netdef.weights import check_param_array, group_param_keys

__all__ = ["check_meta", "check_arrays", "check_random_states", "check_generator_state"]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value):
    """A non-negative integer that fits an int64 (iterations, seeds,
    positions, counters)."""
    return _is_int(value) and 0 <= value < 2**63


_COUNT = "a non-negative integer below 2^63"


def _is_number(value):
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _shown(value):
    """``repr(value)``, cut short (a field may hold a whole JSON tree)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value):
    return "null" if value is None else type(value).__name__


#: field -> (test, what the field must be)
_FIELDS = {
    "iter": (_is_count, _COUNT),
    "seed": (_is_count, _COUNT),
    "world_size": (_is_count, _COUNT),
    "iter_size": (_is_count, _COUNT),
    "net": (lambda v: isinstance(v, str), "a string"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "caffemodel": (lambda v: isinstance(v, str), "a string"),
    "solver": (lambda v: isinstance(v, str), "a string"),
    "time": (_is_number, "a finite number"),
    "loss_window": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
                    "a list of finite numbers"),
    "solver_rng": (lambda v: isinstance(v, dict), "a dict (a NumPy bit-generator state)"),
    "providers": (lambda v: isinstance(v, dict), "a dict"),
    "metadata": (lambda v: isinstance(v, dict), "a dict"),
}


def check_meta(meta, path):
    """Raise WeightsError naming ``path`` and every field of the snapshot's
    metadata ``meta`` that is present but of the wrong type (``iter`` is
    also required)."""
    problems = []
    for name, (test, what) in _FIELDS.items():
        if name in meta and not test(meta[name]):
            problems.append(f"'{name}' is {_shown(meta[name])} ({_type_name(meta[name])}), "
                            f"expected {what}")
    if "iter" not in meta:
        problems.append("it has no iteration ('iter')")
    if "random_states" in meta:
        problems += _random_states_layout(meta["random_states"])
    if problems:
        raise WeightsError(f"{path}: malformed solver snapshot: " + "; ".join(problems))


def _random_states_layout(states):
    """Problems with ``random_states``: {net key: {layer: {"seed": int,
    "state": dict}}}."""
    if not isinstance(states, dict):
        return [f"'random_states' is {_type_name(states)}, expected a dict"]
    problems = []
    for key, layers in states.items():
        if not isinstance(layers, dict):
            problems.append(f"random_states['{key}'] is {_type_name(layers)}, expected a dict")
            continue
        for name, entry in layers.items():
            where = f"random_states['{key}']['{name}']"
            if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict):
                problems.append(f"{where} is not a dict with a 'state' dict")
            elif not _is_count(entry.get("seed")):
                problems.append(f"{where}['seed'] is {_shown(entry.get('seed'))} "
                                f"({_type_name(entry.get('seed'))}), expected {_COUNT}")
    return problems


def check_arrays(weights, history, path):
    """The snapshot's arrays: weights named ``<layer>/<index>``, weights and
    history floating point and finite (WeightsError naming ``path``)."""
    group_param_keys(weights, path)
    for group, arrays in (("weights", weights), ("history", history)):
        for key, array in arrays.items():
            check_param_array(array, f"{path}: {group} array '{key}'")


def check_generator_state(state, generator, where):
    """Why ``state`` cannot be the state of ``generator``'s bit generator
    (another kind of generator, a malformed dict), or None; tried on a fresh
    bit generator of the same kind, so ``generator`` is left alone."""
    kind = type(generator.bit_generator if isinstance(generator, np.random.Generator)
                else generator)
    try:
        kind().state = state
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
        return (f"{where}: not a state of this {kind.__name__} generator "
                f"({type(exc).__name__}: {exc})")
    return None


def check_random_states(random_states, nets, solver_rng, rng):
    """Problems with the random states a restore would set: the solver's
    ``rng`` from ``solver_rng`` and, for every layer of ``nets`` (list of
    ``(key, Net)``) the snapshot has a matching entry for, each attribute's
    value (a generator's state, or an integer position/counter)."""
    problems = []
    found = check_generator_state(solver_rng, rng, "the solver's RNG state")
    if found:
        problems.append(found)
    nets = dict(nets)
    for key, layers in random_states.items():
        net = nets.get(key)
        for name, entry in layers.items() if net is not None else ():
            layer = net.layer_dict.get(name)
            if layer is None or set(entry["state"]) != set(layer.random_state_attributes):
                continue   # not restored; set_state notes it
            for attribute, value in entry["state"].items():
                where = f"{key} layer '{name}' random state '{attribute}'"
                current = getattr(layer, attribute)
                if isinstance(current, np.random.Generator):
                    found = check_generator_state(value, current, where)
                    if found:
                        problems.append(found)
                elif not _is_count(value):
                    problems.append(f"{where} is {_shown(value)} ({_type_name(value)}), "
                                    f"expected {_COUNT}")
    return problems
