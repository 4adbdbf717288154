"""Pure graph steps on a NetParameter, before any layer exists.

1. ``filter_net``: keep the layers whose include/exclude rules match the
   NetState (phase, level, stages), as Caffe's ``FilterNet``.
2. ``insert_splits``: a blob consumed by several layers gets a Split layer,
   so each consumer writes its own gradient and the Split sums them (Caffe's
   choice, kept for the same reason: layers overwrite bottom diffs, so a
   shared diff would lose all but one contribution).

Both return a new NetParameter plus a list of human-readable decisions.
"""
from netdef import caffe_pb2
from netdef.errors import NetDefinitionError

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def rule_matches(rule, phase, level, stages):
    """Does NetStateRule ``rule`` match the state? (All its conditions.)"""
    if rule.HasField("phase") and rule.phase != PHASES[phase]:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    if any(stage in stages for stage in rule.not_stage):
        return False
    return True


def layer_included(layer, phase, level, stages):
    """Caffe's rule: with include rules, any must match; else no exclude may."""
    if layer.include and layer.exclude:
        raise NetDefinitionError(
            f"layer '{layer.name}': specify either include or exclude rules, not both")
    if layer.include:
        return any(rule_matches(r, phase, level, stages) for r in layer.include)
    return not any(rule_matches(r, phase, level, stages) for r in layer.exclude)


def filter_net(net, phase, level=0, stages=()):
    """A copy of ``net`` holding only the layers active in this state."""
    stages = set(stages) | set(net.state.stage)
    level = level or net.state.level
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    decisions = []
    for layer in net.layer:
        if layer_included(layer, phase, level, stages):
            filtered.layer.add().CopyFrom(layer)
        else:
            decisions.append(f"layer '{layer.name}' excluded in phase {phase}"
                             f"{' with stages ' + ','.join(sorted(stages)) if stages else ''}")
    return filtered, decisions


def split_blob_name(blob, layer, top_index, split_index):
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(net, loss_weights):
    """Insert Split layers after every top consumed more than once.

    ``loss_weights[layer_index][top_index]`` is the resolved loss weight of
    each top; a top that is a loss *and* consumed by another layer counts
    the loss as one more consumer, and the loss moves to the Split's first
    top. Returns ``(new_net, new_loss_weights, decisions)``.
    """
    producer = {}           # blob name -> (layer index, top index) of its latest writer
    consumers = {}          # (layer index, top index) -> [(layer index, bottom index)]
    for li, layer in enumerate(net.layer):
        for bi, name in enumerate(layer.bottom):
            if name not in producer:
                continue  # reported with context when the Net resolves blobs
            consumers.setdefault(producer[name], []).append((li, bi))
        for ti, name in enumerate(layer.top):
            producer[name] = (li, ti)
            consumers.setdefault((li, ti), [])

    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    del result.layer[:]
    new_weights, decisions = [], []
    renamed = {}  # (consumer layer, bottom index) -> split top name
    for li, layer in enumerate(net.layer):
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer)
        for bi in range(len(copy.bottom)):
            if (li, bi) in renamed:
                copy.bottom[bi] = renamed[(li, bi)]
        weights = list(loss_weights[li])
        splits = []
        for ti, name in enumerate(layer.top):
            users = consumers.get((li, ti), [])
            is_loss = weights[ti] != 0
            if len(users) + (1 if is_loss and users else 0) <= 1:
                continue
            split = caffe_pb2.LayerParameter(name=f"{name}_{layer.name}_{ti}_split", type="Split")
            split.bottom.append(name)
            split_weights = []
            count = len(users) + (1 if is_loss else 0)
            for si in range(count):
                split.top.append(split_blob_name(name, layer.name, ti, si))
                split_weights.append(weights[ti] if (is_loss and si == 0) else 0.0)
            offset = 1 if is_loss else 0
            for si, user in enumerate(users):
                renamed[user] = split.top[si + offset]
            if is_loss:
                weights[ti] = 0.0
            splits.append((split, split_weights))
            decisions.append(f"blob '{name}' is used by {count} consumers: "
                             f"inserted Split layer '{split.name}'")
        result.layer.add().CopyFrom(copy)
        new_weights.append(weights)
        for split, split_weights in splits:
            result.layer.add().CopyFrom(split)
            new_weights.append(split_weights)
    return result, new_weights, decisions
