"""Generator of ResNet deploy prototxts in the layout of Kaiming He's Caffe
release (ResNet-50/101/152): same layer and blob names, frozen BatchNorm
(use_global_stats) followed by Scale with bias, the stride on the first 1x1
convolution of each stage, legacy ``input_dim`` header.

    python -m prototxt.resnet --depth 101 > prototxt/resnet101_deploy.prototxt

Stage depths are facts of the architecture: 50 = (3, 4, 6, 3),
101 = (3, 4, 23, 3), 152 = (3, 8, 36, 3). The deeper nets name blocks
a, b1, b2, ... where ResNet-50 uses letters.

The module also holds the small prototxt writer the detector generators
(``prototxt.rfcn``, ``prototxt.faster_rcnn``) build on: ``layer`` writes one
layer from plain Python values, and ``resnet_trunk`` writes the backbone with
the options detection needs (param specs with frozen stages, a dilated
stride-1 res5, stopping after a given stage).
"""
import argparse
import string

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTHS = (64, 128, 256, 512)  # bottleneck width; output is 4x


# -- a prototxt writer ----------------------------------------------------------

class Word(str):
    """An enum value, written bare (``pool: MAX``) instead of quoted."""


def _scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Word):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        # 1.0 -> 1, 0.0625 -> 0.0625: the shortest text that reads back equal.
        return str(int(value)) if value.is_integer() else repr(value)
    return str(int(value))


def message_lines(fields, indent=1):
    """Text-format lines of ``fields``, a dict (or list of pairs) whose
    values are scalars, dicts (sub-messages) or lists (repeated fields).
    None values are left out."""
    pad = "  " * indent
    lines = []
    for key, value in (fields.items() if isinstance(fields, dict) else fields):
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is None:
                continue
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{")
                lines += message_lines(item, indent + 1)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return lines


def layer(name, kind, bottoms=(), tops=(), **fields):
    """One ``layer { ... }`` block: name, type, bottoms, tops, then ``fields``
    in the order given (``param=[...]``, ``loss_weight=[...]``,
    ``convolution_param={...}``, ...)."""
    head = [("name", name), ("type", kind), ("bottom", list(bottoms)), ("top", list(tops))]
    return "layer {\n" + "\n".join(message_lines(head + list(fields.items()))) + "\n}\n"


def specs(*multipliers):
    """ParamSpec dicts from (lr_mult, decay_mult) pairs; decay_mult None is
    left out (Caffe's default 1)."""
    return [dict(lr_mult=float(lr), decay_mult=None if decay is None else float(decay))
            for lr, decay in multipliers]


FROZEN = (0, 0)  # a statistic or frozen weight: no learning rate, no decay


# -- ResNet pieces ----------------------------------------------------------------

def block_names(depth, count):
    """Block names of a stage of ``count`` blocks, as in Kaiming's release:
    ResNet-50 uses letters (a, b, c, ...); the deeper nets number their long
    stages (a, b1, b2, ...: res3, res4) and keep letters for the three-block
    ones (res2, res5: a, b, c), which is what their .caffemodel files and
    py-R-FCN's prototxts name.
    """
    if depth == 50 or count <= 3:
        return list(string.ascii_lowercase[:count])
    return ["a"] + [f"b{i}" for i in range(1, count)]


def conv(name, bottom, top, num_output, kernel, stride=1, pad=0, *, dilation=1, bias_term=False,
         param=()):
    """A Convolution layer; ``param`` is a list of ParamSpec dicts, ``dilation``
    is written only when it is not 1."""
    return layer(name, "Convolution", [bottom], [top], param=list(param), convolution_param=dict(
        num_output=num_output, kernel_size=kernel,
        dilation=dilation if dilation != 1 else None, pad=pad, stride=stride,
        bias_term=None if bias_term else False))


def bn_scale(suffix, blob, frozen_specs=False):
    """Frozen BatchNorm (use_global_stats) and Scale with bias, in place.
    ``frozen_specs`` also writes lr_mult 0 / decay_mult 0 for their three and
    two parameter blobs, as detection training files do."""
    bn = specs(FROZEN, FROZEN, FROZEN) if frozen_specs else []
    sc = specs(FROZEN, FROZEN) if frozen_specs else []
    return (layer(f"bn{suffix}", "BatchNorm", [blob], [blob], param=bn,
                  batch_norm_param=dict(use_global_stats=True)) +
            layer(f"scale{suffix}", "Scale", [blob], [blob], param=sc,
                  scale_param=dict(bias_term=True)))


def relu(name, blob):
    return layer(name, "ReLU", [blob], [blob])


def conv_bn(name, suffix, bottom, num_output, kernel, stride=1, pad=0, with_relu=True, *,
            dilation=1, bias_term=False, param=(), frozen_specs=False):
    text = conv(name, bottom, name, num_output, kernel, stride, pad, dilation=dilation,
                bias_term=bias_term, param=param) + bn_scale(suffix, name, frozen_specs)
    return text + (relu(f"{name}_relu", name) if with_relu else "")


def resnet_trunk(depth, *, bottom="data", last_stage=5, dilate_res5=False, frozen_stages=None,
                 conv1_bias=False):
    """The ResNet backbone from ``bottom`` through stage ``last_stage``
    (1 = conv1 + pool1, 2..5 = res2..res5).

    Returns ``(text, outputs)`` with ``outputs[stage]`` the name of the
    stage's last blob (``pool1``, ``res2c``, ..., ``res4b22`` / ``res4f``,
    ``res5c``).

    - ``dilate_res5``: res5 keeps stride 1 (its first block's 1x1
      convolutions take stride 1 instead of 2) and its 3x3 convolutions take
      dilation 2 with pad 2, so the net stays at stride 16 (R-FCN).
    - ``frozen_stages``: None writes no param specs (deploy nets); a set of
      stage numbers writes ``lr_mult: 0`` on the convolutions of those
      stages and ``lr_mult: 1`` on the others, and lr_mult 0 / decay_mult 0
      on every BatchNorm and Scale (training nets).
    - ``conv1_bias``: conv1 has a bias (Kaiming's ResNet-50 does; 101 and
      152 do not).
    """
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, found {depth}")
    if not 1 <= last_stage <= 5:
        raise ValueError(f"last_stage must be in 1..5, found {last_stage}")
    with_specs = frozen_stages is not None
    conv1_specs = specs(*[(0 if 1 in frozen_stages else 1, None)] * (2 if conv1_bias else 1)) \
        if with_specs else []
    parts = [conv_bn("conv1", "_conv1", bottom, 64, 7, 2, 3, bias_term=conv1_bias,
                     param=conv1_specs, frozen_specs=with_specs),
             layer("pool1", "Pooling", ["conv1"], ["pool1"],
                   pooling_param=dict(pool=Word("MAX"), kernel_size=3, stride=2))]
    outputs = {1: "pool1"}
    bottom = "pool1"
    for stage in range(2, last_stage + 1):
        text, bottom = resnet_stage(depth, stage, bottom, frozen_stages=frozen_stages,
                                    dilated=dilate_res5 and stage == 5)
        parts.append(text)
        outputs[stage] = bottom
    return "".join(parts), outputs


def resnet_stage(depth, stage, bottom, *, frozen_stages=None, dilated=False, first_stride=None):
    """The blocks of stage ``stage`` (2..5 = res2..res5) of ResNet-``depth``
    from ``bottom``; returns ``(text, top)``.

    ``frozen_stages`` as in ``resnet_trunk`` (None: no param specs; a set:
    lr_mult 0 on the convolutions when ``stage`` is in it, BatchNorm and
    Scale always frozen). ``dilated``: stride 1 and dilation 2 (R-FCN's
    res5). ``first_stride``: the first block's stride (default 2 for res3
    .. res5, 1 for res2 and a dilated stage), e.g. 2 for a res5 that runs
    on RoI-pooled features (Faster R-CNN ResNet)."""
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, found {depth}")
    if not 2 <= stage <= 5:
        raise ValueError(f"stage must be in 2..5, found {stage}")
    with_specs = frozen_stages is not None
    conv_specs = specs((0 if with_specs and stage in frozen_stages else 1, None)) \
        if with_specs else []
    if first_stride is None:
        first_stride = 2 if stage > 2 and not dilated else 1
    parts = []
    count, width = STAGES[depth][stage - 2], WIDTHS[stage - 2]
    for i, block in enumerate(block_names(depth, count)):
        tag = f"{stage}{block}"
        stride = first_stride if i == 0 else 1
        options = dict(param=conv_specs, frozen_specs=with_specs)
        if i == 0:
            parts.append(conv_bn(f"res{tag}_branch1", f"{tag}_branch1", bottom, 4 * width,
                                 1, stride, with_relu=False, **options))
            shortcut = f"res{tag}_branch1"
        else:
            shortcut = bottom
        parts.append(conv_bn(f"res{tag}_branch2a", f"{tag}_branch2a", bottom, width, 1, stride,
                             **options))
        parts.append(conv_bn(f"res{tag}_branch2b", f"{tag}_branch2b", f"res{tag}_branch2a",
                             width, 3, 1, 2 if dilated else 1, dilation=2 if dilated else 1,
                             **options))
        parts.append(conv_bn(f"res{tag}_branch2c", f"{tag}_branch2c", f"res{tag}_branch2b",
                             4 * width, 1, with_relu=False, **options))
        parts.append(layer(f"res{tag}", "Eltwise", [shortcut, f"res{tag}_branch2c"],
                           [f"res{tag}"]))
        parts.append(relu(f"res{tag}_relu", f"res{tag}"))
        bottom = f"res{tag}"
    return "".join(parts), bottom


def resnet_deploy(depth, size=224):
    """Prototxt text of the ResNet-``depth`` deploy net at ``size`` x ``size``,
    with the layer names of Kaiming's release (so his .caffemodel files load
    by name) and its conv1 (with a bias in ResNet-50 only)."""
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, found {depth}")
    trunk, outputs = resnet_trunk(depth, conv1_bias=(depth == 50))
    return "".join([
        f'name: "ResNet-{depth}"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n'
        f'input_dim: {size}\ninput_dim: {size}\n',
        trunk,
        layer("pool5", "Pooling", [outputs[5]], ["pool5"],
              pooling_param=dict(pool=Word("AVE"), kernel_size=7, stride=1)),
        layer("fc1000", "InnerProduct", ["pool5"], ["fc1000"],
              inner_product_param=dict(num_output=1000)),
        layer("prob", "Softmax", ["fc1000"], ["prob"]),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m prototxt.resnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, choices=sorted(STAGES), default=101)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    args = parser.parse_args(argv)
    print(resnet_deploy(args.depth, args.size), end="")


if __name__ == "__main__":
    main()
