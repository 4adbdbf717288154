"""Generator of ResNet deploy prototxts in the layout of Kaiming He's Caffe
release (ResNet-50/101/152): same layer and blob names, frozen BatchNorm
(use_global_stats) followed by Scale with bias, the stride on the first 1x1
convolution of each stage, legacy ``input_dim`` header.

    python -m prototxt.resnet --depth 101 > prototxt/resnet101_deploy.prototxt

Stage depths are facts of the architecture: 50 = (3, 4, 6, 3),
101 = (3, 4, 23, 3), 152 = (3, 8, 36, 3). The deeper nets name blocks
a, b1, b2, ... where ResNet-50 uses letters.
"""
import argparse
import string

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTHS = (64, 128, 256, 512)  # bottleneck width; output is 4x


def block_names(depth, count):
    if depth == 50:
        return list(string.ascii_lowercase[:count])
    return ["a"] + [f"b{i}" for i in range(1, count)]


def conv(name, bottom, top, num_output, kernel, stride=1, pad=0):
    return (f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{bottom}"\n'
            f'  top: "{top}"\n  convolution_param {{\n    num_output: {num_output}\n'
            f'    kernel_size: {kernel}\n    pad: {pad}\n    stride: {stride}\n'
            f'    bias_term: false\n  }}\n}}\n')


def bn_scale(suffix, blob):
    return (f'layer {{\n  name: "bn{suffix}"\n  type: "BatchNorm"\n  bottom: "{blob}"\n'
            f'  top: "{blob}"\n  batch_norm_param {{\n    use_global_stats: true\n  }}\n}}\n'
            f'layer {{\n  name: "scale{suffix}"\n  type: "Scale"\n  bottom: "{blob}"\n'
            f'  top: "{blob}"\n  scale_param {{\n    bias_term: true\n  }}\n}}\n')


def relu(name, blob):
    return f'layer {{\n  name: "{name}"\n  type: "ReLU"\n  bottom: "{blob}"\n  top: "{blob}"\n}}\n'


def conv_bn(name, suffix, bottom, num_output, kernel, stride=1, pad=0, with_relu=True):
    text = conv(name, bottom, name, num_output, kernel, stride, pad) + bn_scale(suffix, name)
    return text + (relu(f"{name}_relu", name) if with_relu else "")


def resnet_deploy(depth, size=224):
    """Prototxt text of the ResNet-``depth`` deploy net at ``size`` x ``size``."""
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, found {depth}")
    parts = [f'name: "ResNet-{depth}"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n'
             f'input_dim: {size}\ninput_dim: {size}\n',
             conv_bn("conv1", "_conv1", "data", 64, 7, 2, 3),
             'layer {\n  name: "pool1"\n  type: "Pooling"\n  bottom: "conv1"\n  top: "pool1"\n'
             '  pooling_param {\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n  }\n}\n']
    bottom = "pool1"
    for stage, (count, width) in enumerate(zip(STAGES[depth], WIDTHS), start=2):
        for i, block in enumerate(block_names(depth, count)):
            tag = f"{stage}{block}"
            stride = 2 if (i == 0 and stage > 2) else 1
            if i == 0:
                parts.append(conv_bn(f"res{tag}_branch1", f"{tag}_branch1", bottom, 4 * width,
                                     1, stride, with_relu=False))
                shortcut = f"res{tag}_branch1"
            else:
                shortcut = bottom
            parts.append(conv_bn(f"res{tag}_branch2a", f"{tag}_branch2a", bottom, width, 1, stride))
            parts.append(conv_bn(f"res{tag}_branch2b", f"{tag}_branch2b", f"res{tag}_branch2a",
                                 width, 3, 1, 1))
            parts.append(conv_bn(f"res{tag}_branch2c", f"{tag}_branch2c", f"res{tag}_branch2b",
                                 4 * width, 1, with_relu=False))
            parts.append(f'layer {{\n  name: "res{tag}"\n  type: "Eltwise"\n  bottom: "{shortcut}"\n'
                         f'  bottom: "res{tag}_branch2c"\n  top: "res{tag}"\n}}\n')
            parts.append(relu(f"res{tag}_relu", f"res{tag}"))
            bottom = f"res{tag}"
    parts.append(f'layer {{\n  name: "pool5"\n  type: "Pooling"\n  bottom: "{bottom}"\n  top: "pool5"\n'
                 '  pooling_param {\n    pool: AVE\n    kernel_size: 7\n    stride: 1\n  }\n}\n')
    parts.append('layer {\n  name: "fc1000"\n  type: "InnerProduct"\n  bottom: "pool5"\n'
                 '  top: "fc1000"\n  inner_product_param {\n    num_output: 1000\n  }\n}\n')
    parts.append('layer {\n  name: "prob"\n  type: "Softmax"\n  bottom: "fc1000"\n  top: "prob"\n}\n')
    return "".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m prototxt.resnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, choices=sorted(STAGES), default=101)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    args = parser.parse_args(argv)
    print(resnet_deploy(args.depth, args.size), end="")


if __name__ == "__main__":
    main()
