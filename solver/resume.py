"""What makes a solver resume exactly: the random and positional state an
iteration advances (captured at the start of every iteration, saved in
snapshots), and the checks and copies of ``restore``.

The state is JSON data::

    {"random_states": {"train": {layer: {"seed": s, "state": {...}}},
                       "test/0": {...}, ...},   # layers with random state only
     "solver_rng": the solver's NumPy bit-generator state,
     "providers": {name: provider.get_state()}}

A restore checks everything first (``check_snapshot``, with
solver.snapshot_checks), then sets the state providers (``set_providers``,
which puts them back if one refuses its state), and only then writes the
weights, history and random states, which can no longer fail.
"""
import json

from netdef.errors import WeightsError
from netdef.weights import range_problem
from solver.snapshot_checks import check_random_states

__all__ = ["json_copy", "capture_state", "set_state", "check_snapshot", "set_providers",
           "restore_history"]


def json_copy(value, what):
    """A deep copy of JSON-serialisable ``value``; errors name ``what``."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


def capture_state(nets, rng, providers):
    """The state of ``nets`` (list of ``(key, Net)``), the NumPy Generator
    ``rng`` and ``providers`` (name -> object with ``get_state()``), copied."""
    layers = {}
    for key, net in nets:
        layers[key] = {name: {"seed": layer.seed, "state": layer.random_state()}
                       for name, layer in net.layer_dict.items()
                       if layer.random_state_attributes}
    states = {name: json_copy(provider.get_state(), f"the state of provider '{name}'")
              for name, provider in providers.items()}
    return {"random_states": json_copy(layers, "a layer's random state"),
            "solver_rng": json_copy(rng.bit_generator.state, "the solver's RNG state"),
            "providers": states}


def set_state(nets, rng, providers, state, notes=None):
    """Put back what ``capture_state`` returned; layers missing on either
    side are listed in ``notes`` (a list, returned)."""
    notes = [] if notes is None else notes
    nets = dict(nets)
    for key, layers in state["random_states"].items():
        net = nets.get(key)
        if net is None:
            notes.append(f"the snapshot has random state for net '{key}', which this "
                         f"solver does not have")
            continue
        for name, entry in layers.items():
            layer = net.layer_dict.get(name)
            if layer is not None and not layer.random_state_attributes:
                # AnchorTarget / ProposalTarget kept a sampler stream before
                # their draws were keyed by the pass (Layer.keyed_rng).
                notes.append(f"{key} layer '{name}': its saved {', '.join(entry['state'])} "
                             f"state is from before draws were keyed by iteration and image "
                             f"position; ignored (the samples from here differ from those "
                             f"of the uninterrupted older run)")
                continue
            if layer is None or set(entry["state"]) != set(layer.random_state_attributes):
                notes.append(f"{key} layer '{name}': random state not restored (the layer "
                             f"is missing or of another kind)")
                continue
            layer.seed = int(entry["seed"])
            layer.set_random_state(entry["state"])
        for name, layer in net.layer_dict.items():
            if layer.random_state_attributes and name not in layers:
                notes.append(f"{key} layer '{name}': no random state in the snapshot")
    rng.bit_generator.state = state["solver_rng"]
    for name, provider in providers.items():
        provider.set_state(state["providers"][name])
    return notes


def check_snapshot(state, net, history, providers, path, nets=(), rng=None):
    """The parameter blobs of ``net`` by ``"<layer>/<i>"`` when the
    SolverState ``state`` fits them (same layers and shapes, values within
    the blobs' dtype), ``history`` (the solver's history dict) and
    ``providers`` (names), and its random states fit ``nets`` (list of
    ``(key, Net)``) and the solver's Generator ``rng`` (when given); else
    WeightsError naming ``path`` and every problem."""
    expected = {f"{name}/{i}": blob for name, layer in net.layer_dict.items()
                for i, blob in enumerate(layer.blobs)}
    problems = _array_problems(state, expected, history)
    stored, registered = set(state.providers), set(providers)
    if stored - registered:
        problems.append(f"state of provider(s) {', '.join(sorted(stored - registered))} "
                        f"but none registered under that name")
    if registered - stored:
        problems.append(f"no state for the registered provider(s) "
                        f"{', '.join(sorted(registered - stored))}")
    if rng is not None:
        problems += check_random_states(state.random_states, nets, state.solver_rng, rng)
    if problems:
        raise WeightsError(f"{path}: cannot resume net '{net.name}' from this snapshot: "
                           + "; ".join(problems))
    return expected


def _array_problems(state, expected, history):
    """Weights and history of ``state`` against the net's blobs
    ``expected`` and the solver's ``history``: presence, shapes, range."""
    problems = []
    for key, blob in expected.items():
        layer, index = key.rsplit("/", 1)
        if key not in state.weights:
            problems.append(f"no weights for layer '{layer}' parameter {index}")
        elif tuple(state.weights[key].shape) != blob.shape:
            problems.append(f"layer '{layer}' parameter {index}: the snapshot has shape "
                            f"{tuple(state.weights[key].shape)}, the net {blob.shape}")
        else:
            problems += _overflow(state.weights[key], blob.dtype,
                                  f"layer '{layer}' parameter {index}")
    extra = sorted({k.rsplit("/", 1)[0] for k in state.weights if k not in expected})
    if extra:
        problems.append(f"weights for layers the net does not have: {', '.join(extra)}")
    for key, array in state.history.items():
        if key in history and tuple(array.shape) != history[key].shape:
            problems.append(f"solver history '{key}' has shape {tuple(array.shape)}, "
                            f"the parameter {history[key].shape}")
        elif key in history:
            problems += _overflow(array, history[key].dtype, f"solver history '{key}'")
    return problems


def _overflow(array, dtype, what):
    problem = range_problem(array, dtype, what)
    return [problem] if problem else []


def set_providers(providers, states, path):
    """Give each state provider its state from ``states`` (name -> state);
    when one refuses its state (raises), the providers set so far and that
    one get their previous states back and WeightsError names ``path`` and
    the provider. Call it before anything else of a restore changes."""
    previous = {}
    for name, provider in providers.items():
        previous[name] = provider.get_state()
        try:
            provider.set_state(states[name])
        except Exception as exc:  # the caller's code: any refusal means "does not fit"
            for done, state in previous.items():
                providers[done].set_state(state)
            raise WeightsError(f"{path}: the state of provider '{name}' was refused "
                               f"({type(exc).__name__}: {exc}); nothing was restored") from exc


def restore_history(history, stored, device, rule_type):
    """Copy the snapshot's history arrays ``stored`` (key -> NumPy array)
    into the solver's ``history`` (key -> device array); those the snapshot
    lacks start at 0. Returns notes on what did not match."""
    for key, array in history.items():
        if key in stored:
            array[...] = device.asarray(stored[key], dtype=array.dtype)
        else:
            array.fill(0)
    missing = [key for key in history if key not in stored]
    unused = sorted(set(stored) - set(history))
    if missing and unused and not set(stored) & set(history):
        # e.g. an SGD snapshot resumed with type "Adam": Caffe would load the
        # momentum as Adam's moments; here the history starts over, and says so.
        return [f"the snapshot's solver history ({', '.join(unused[:2])}, ...) is not the "
                f"history of solver type '{rule_type}', whose history starts at 0"]
    notes = [f"no solver history for '{key}' (starts at 0)" for key in missing]
    if unused:
        notes.append(f"solver history of {', '.join(unused)} not used (lr_mult 0 here, or "
                     f"another solver type)")
    return notes
