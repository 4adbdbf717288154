"""Convolution speed against GEMM speed, measured in the same run.

    python -m bench.conv [--gpu] [--repeat N] [--rounds R] [--skip-net]

1. float32 GEMM throughput (a 2048^3 matmul, 8192^3 on a GPU; best of N):
   the yardstick.
2. The convolutions of R-FCN ResNet-101 on a 1x3x600x1000 image (stride 16,
   dilated res5): forward and forward+backward (data and weight gradients),
   best of N, as GFLOP/s and as a ratio to the GEMM throughput. Targets:
   >= 0.6 forward, >= 0.5 forward+backward for the 3x3 and 1x1 layers
   (conv1, 7x7 stride 2 on 3 channels, is reported but exempt).
   FLOPs: forward 2 * N * Cout * Ho * Wo * Cin / group * kh * kw;
   forward+backward three times that.
3. The whole ResNet-101 deploy net at 1x3x224x224, forward, through
   ``netdef.net.Net`` (reported as not available if it cannot be built).

With --gpu the same runs on GPU 0 through CuPy, against cuBLAS GEMM.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from bench.gemm import OtherLoad, array_module, best_time, gemm_gflops

# (name, Cin, Cout, H, W, kernel, stride, pad, dilation, exempt from targets)
RFCN_RESNET101 = [
    ("conv1 7x7/2 3->64", 3, 64, 600, 1000, 7, 2, 3, 1, True),
    ("res2 3x3 64->64", 64, 64, 150, 250, 3, 1, 1, 1, False),
    ("res3 3x3 128->128", 128, 128, 75, 125, 3, 1, 1, 1, False),
    ("res4 3x3 256->256", 256, 256, 38, 63, 3, 1, 1, 1, False),
    ("res5 3x3 d2 512->512", 512, 512, 38, 63, 3, 1, 2, 2, False),
    ("1x1 1024->2048", 1024, 2048, 38, 63, 1, 1, 0, 1, False),
    ("1x1 256->1024", 256, 1024, 38, 63, 1, 1, 0, 1, False),
    ("1x1 1024->256", 1024, 256, 38, 63, 1, 1, 0, 1, False),
    ("1x1/2 512->1024", 512, 1024, 75, 125, 1, 2, 0, 1, False),
]
FORWARD_TARGET = 0.6
FORWARD_BACKWARD_TARGET = 0.5
QUIET_LOAD = 0.1  # a round is quiet when other processes used <= 10% of a core
RESNET101_DEPLOY = Path(__file__).resolve().parent.parent / "prototxt" / "resnet101_deploy.prototxt"


def conv_spec(name, cout, kernel, stride, pad, dilation):
    return (f'name: "{name}" type: "Convolution" convolution_param {{ num_output: {cout} '
            f'kernel_size: {kernel} stride: {stride} pad: {pad} dilation: {dilation} '
            f'bias_term: false weight_filler {{ type: "gaussian" std: 0.01 }} }}')


def conv_flops(n, cin, cout, ho, wo, kernel, group=1):
    return 2.0 * n * cout * ho * wo * cin / group * kernel * kernel


def conv_case(row, device, xp):
    """(GFLOP, forward, forward_backward) for one layer: two closures that
    run it on a random image with a random top diff."""
    from netdef.gradcheck import build_layer, setup_layer
    name, cin, cout, h, w, kernel, stride, pad, dilation, _ = row
    layer = build_layer(conv_spec(name, cout, kernel, stride, pad, dilation),
                        device=device, dtype=np.float32)
    image = np.random.default_rng(0).standard_normal((1, cin, h, w)).astype(np.float32)
    bottoms, tops = setup_layer(layer, [xp.asarray(image)])
    tops[0].diff[...] = xp.asarray(
        np.random.default_rng(1).standard_normal(tops[0].shape).astype(np.float32))

    def forward():
        layer.forward(bottoms, tops)

    def forward_backward():
        layer.forward(bottoms, tops)
        layer.backward(tops, [True], bottoms)

    _, _, ho, wo = tops[0].shape
    return conv_flops(1, cin, cout, ho, wo, kernel) / 1e9, forward, forward_backward


def net_flops(net):
    """FLOPs (2 per multiply-add) of the net's Convolution and InnerProduct layers."""
    total = 0.0
    for layer, bottoms, tops in zip(net.layers, net.bottom_blobs, net.top_blobs):
        weight = layer.blobs[0] if layer.blobs else None
        if layer.type == "Convolution":
            # Each top element takes Cin / group * kh * kw multiply-adds.
            total += 2.0 * (weight.count / weight.shape[0]) * tops[0].count
        elif layer.type == "InnerProduct":
            # Each top element takes K multiply-adds (K * num_output = weight count).
            total += 2.0 * weight.count / layer.num_output * tops[0].count
    return total


def resnet101_prototxt():
    """Text of the ResNet-101 deploy net: the bundled file, else the
    generator of ``prototxt.resnet``; None when neither exists."""
    if RESNET101_DEPLOY.exists():
        return RESNET101_DEPLOY.read_text()
    try:
        from prototxt import resnet
    except ImportError:
        return None
    return resnet.resnet_deploy(101)


def time_net(device, xp, repeat):
    """(ms forward, GFLOP) of ResNet-101 at 224x224, or a reason string."""
    try:
        from netdef.net import Net
    except ImportError as exc:
        return f"not available (netdef.net.Net: {exc})"
    text = resnet101_prototxt()
    if text is None:
        return "not available (no ResNet-101 deploy prototxt)"
    try:
        net = Net(text, "TEST", device=device, dtype=np.float32)
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        inputs = {net.inputs[0]: xp.asarray(image)}
        net.forward(**inputs)
        with device.context():
            seconds = best_time(lambda: net.forward(**inputs), xp, repeat)
        return seconds * 1e3, net_flops(net) / 1e9
    except Exception as exc:  # a net that does not build yet: report, don't crash
        return f"not available ({type(exc).__name__}: {exc})"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convolution vs GEMM throughput")
    parser.add_argument("--gpu", action="store_true", help="run on GPU 0 through CuPy")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best is kept)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="at most this many timing rounds per layer, until a quiet one")
    parser.add_argument("--skip-net", action="store_true", help="do not time the whole ResNet-101")
    args = parser.parse_args(argv)

    from netdef.device import CPU, Device, gpu_available
    if args.gpu and not gpu_available():
        sys.exit("--gpu: CuPy sees no CUDA device")
    device = Device("gpu", 0) if args.gpu else CPU
    xp = array_module(args.gpu)

    # Other processes on a shared machine slow GEMM and convolution alike,
    # in bursts of seconds. Ratios use the best GEMM rate of the whole run;
    # each layer is timed in rounds (GEMM, forward, forward+backward, GEMM)
    # until a quiet one, where other processes used at most QUIET_LOAD of a
    # core, at most --rounds times, keeping its best times; '*' marks a
    # layer that never had a quiet round (its ratio may be too low).
    gemm_size = 8192 if args.gpu else 2048  # a GPU needs a larger GEMM to peak

    def measure_gemm():
        with device.context():
            return gemm_gflops(xp, size=gemm_size, repeat=args.repeat)

    gemm = measure_gemm()
    timings = []
    for row in RFCN_RESNET101:
        gflop, forward, forward_backward = conv_case(row, device, xp)
        best_f = best_fb = float("inf")
        quiet = False
        for _ in range(args.rounds):
            with OtherLoad() as load:
                gemm = max(gemm, measure_gemm())
                with device.context():
                    best_f = min(best_f, best_time(forward, xp, args.repeat))
                    best_fb = min(best_fb, best_time(forward_backward, xp, args.repeat))
                gemm = max(gemm, measure_gemm())
            if load.fraction <= QUIET_LOAD:
                quiet = True
                break
        timings.append((row, gflop, best_f, best_fb, quiet))
        print(f"  timed {row[0]}{'' if quiet else ' (no quiet round)'}", file=sys.stderr, flush=True)
    net = None
    if not args.skip_net:
        with OtherLoad() as net_load:
            net = time_net(device, xp, args.repeat)
    gemm = max(gemm, measure_gemm())

    print(f"float32 GEMM {gemm_size}^3 ({'cuBLAS' if args.gpu else 'NumPy/OpenBLAS'}), best of the run: "
          f"{gemm:.1f} GFLOP/s\n")
    header = (f"{'layer':<22} {'GFLOP':>6} {'ms fwd':>8} {'GF/s':>7} {'ratio':>6} "
              f"{'ms f+b':>8} {'GF/s':>7} {'ratio':>6}  verdict")
    print(f"R-FCN ResNet-101 convolutions, 1x3x600x1000 input "
          f"(targets: fwd >= {FORWARD_TARGET}, fwd+bwd >= {FORWARD_BACKWARD_TARGET} of GEMM)")
    print(header)
    print("-" * len(header))
    failed = False
    for row, gflop, fwd, fwd_bwd, quiet in timings:
        rate_f, rate_fb = gflop / fwd, 3 * gflop / fwd_bwd
        ratio_f, ratio_fb = rate_f / gemm, rate_fb / gemm
        if row[-1]:
            verdict = "exempt"
        else:
            ok = ratio_f >= FORWARD_TARGET and ratio_fb >= FORWARD_BACKWARD_TARGET
            failed |= not ok
            verdict = "PASS" if ok else "FAIL"
        print(f"{row[0]:<22} {gflop:>6.2f} {fwd * 1e3:>8.1f} {rate_f:>7.1f} {ratio_f:>6.2f} "
              f"{fwd_bwd * 1e3:>8.1f} {rate_fb:>7.1f} {ratio_fb:>6.2f}  {verdict}{'' if quiet else ' *'}")

    if not all(t[-1] for t in timings):
        print(f"* no quiet round in {args.rounds}: other processes kept using the CPU, "
              "so this ratio may be too low")
    if net is not None:
        print()
        if isinstance(net, str):
            print(f"ResNet-101 deploy, 1x3x224x224, forward: {net}")
        else:
            ms, gflop = net
            rate = gflop / (ms / 1e3)
            print(f"ResNet-101 deploy, 1x3x224x224, forward: {ms:.1f} ms, {gflop:.2f} GFLOP "
                  f"(conv + fc), {rate:.1f} GFLOP/s, {rate / gemm:.2f} of GEMM "
                  f"(other processes used {net_load.fraction:.2f} cores meanwhile)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
