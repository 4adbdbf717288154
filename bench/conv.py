"""Convolution speed against GEMM speed and against PyTorch, measured in
the same run.

    python -m bench.conv [--gpu] [--repeat N] [--rounds R] [--threads T]
                         [--no-torch] [--skip-net]

1. float32 GEMM throughput (a 2048^3 matmul, 8192^3 on a GPU): the
   yardstick.
2. Every distinct convolution shape of the R-FCN ResNet-101 trunk on a
   1x3x600x1000 image (stride 16, dilated res5, plus conv_new_1), with how
   many layers have it and which gradients training needs (conv1 and res2
   are frozen: none; res3a's first two take a frozen bottom: weight only;
   the rest: weight and data). Per shape: our forward and backward times,
   GFLOP/s and ratio to GEMM; forward targets >= 0.6 of GEMM for the 3x3
   and 1x1 layers (conv1 is exempt). FLOPs: forward 2 * Cout * Ho * Wo *
   Cin * kh * kw; backward that per gradient computed.
3. With PyTorch importable (an optional, bench-only dependency) and not
   --gpu: torch.nn.functional.conv2d on the same shapes at --threads
   threads (forward under no_grad; backward by autograd for the gradients
   training needs), our time / torch's per shape and for the whole trunk
   (each shape weighted by its layer count). Ours and torch's are
   alternated in each round; medians over rounds are reported.
4. Plan choice (CPU): for every 3x3 stride-1 shape, the forward of the
   ShiftPlan (GEMM) and of the WinogradPlan, alternated in each round
   (medians), beside which one ``make_plans`` chose (the plan the tables
   above timed): the evidence for conv_plans.WINOGRAD_MIN_CHANNELS.
5. Scratch memory: what the layers' workspaces hold in all (one per layer,
   as before sharing) and the largest single one (what one shared
   Workspace holds).
6. The whole ResNet-101 deploy net at 1x3x224x224, forward, through
   ``netdef.net.Net`` (reported as not available if it cannot be built).
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from bench.gemm import OtherLoad, array_module, best_time, gemm_gflops
from layers.conv_plans import ShiftPlan
from layers.conv_winograd import WinogradPlan
from layers.workspace import Workspace

# (name, layers, Cin, Cout, H, W, kernel, stride, pad, dilation, gradients)
# gradients: "" (frozen), "w" (weight only), "wd" (weight and data).
RFCN_RESNET101 = [
    ("conv1 7x7/2 3->64", 1, 3, 64, 600, 1000, 7, 2, 3, 1, ""),
    ("res2 1x1 64->256", 4, 64, 256, 150, 250, 1, 1, 0, 1, ""),
    ("res2 1x1 64->64", 1, 64, 64, 150, 250, 1, 1, 0, 1, ""),
    ("res2 3x3 64->64", 3, 64, 64, 150, 250, 3, 1, 1, 1, ""),
    ("res2 1x1 256->64", 2, 256, 64, 150, 250, 1, 1, 0, 1, ""),
    ("res3a 1x1/2 256->512", 1, 256, 512, 150, 250, 1, 2, 0, 1, "w"),
    ("res3a 1x1/2 256->128", 1, 256, 128, 150, 250, 1, 2, 0, 1, "w"),
    ("res3 3x3 128->128", 4, 128, 128, 75, 125, 3, 1, 1, 1, "wd"),
    ("res3 1x1 128->512", 4, 128, 512, 75, 125, 1, 1, 0, 1, "wd"),
    ("res3 1x1 512->128", 3, 512, 128, 75, 125, 1, 1, 0, 1, "wd"),
    ("res4a 1x1/2 512->1024", 1, 512, 1024, 75, 125, 1, 2, 0, 1, "wd"),
    ("res4a 1x1/2 512->256", 1, 512, 256, 75, 125, 1, 2, 0, 1, "wd"),
    ("res4 3x3 256->256", 23, 256, 256, 38, 63, 3, 1, 1, 1, "wd"),
    ("res4 1x1 256->1024", 23, 256, 1024, 38, 63, 1, 1, 0, 1, "wd"),
    ("res4 1x1 1024->256", 22, 1024, 256, 38, 63, 1, 1, 0, 1, "wd"),
    ("res5a 1x1 1024->2048", 1, 1024, 2048, 38, 63, 1, 1, 0, 1, "wd"),
    ("res5a 1x1 1024->512", 1, 1024, 512, 38, 63, 1, 1, 0, 1, "wd"),
    ("res5 3x3 d2 512->512", 3, 512, 512, 38, 63, 3, 1, 2, 2, "wd"),
    ("res5 1x1 512->2048", 3, 512, 2048, 38, 63, 1, 1, 0, 1, "wd"),
    ("res5 1x1 2048->512", 2, 2048, 512, 38, 63, 1, 1, 0, 1, "wd"),
    ("conv_new_1 1x1 2048->1024", 1, 2048, 1024, 38, 63, 1, 1, 0, 1, "wd"),
]
EXEMPT = ("conv1 7x7/2 3->64",)
FORWARD_TARGET = 0.6
QUIET_LOAD = 0.1  # a round is quiet when other processes used <= 10% of a core
RESNET101_DEPLOY = Path(__file__).resolve().parent.parent / "prototxt" / "resnet101_deploy.prototxt"


def conv_spec(name, cout, kernel, stride, pad, dilation):
    return (f'name: "{name}" type: "Convolution" convolution_param {{ num_output: {cout} '
            f'kernel_size: {kernel} stride: {stride} pad: {pad} dilation: {dilation} '
            f'bias_term: false weight_filler {{ type: "gaussian" std: 0.01 }} }}')


def conv_flops(n, cin, cout, ho, wo, kernel, group=1):
    return 2.0 * n * cout * ho * wo * cin / group * kernel * kernel


class Case:
    """One trunk shape: our layer and (optionally) torch's conv2d, each as
    forward and backward closures on a random image and top diff."""

    def __init__(self, row, device, xp, torch=None):
        from netdef.gradcheck import build_layer, setup_layer
        name, self.count, cin, cout, h, w, kernel, stride, pad, dilation, grads = row
        self.name, self.grads, self.row = name, grads, row
        self.layer = build_layer(conv_spec(name, cout, kernel, stride, pad, dilation),
                                 device=device, dtype=np.float32)
        self.layer.param_propagate_down = ("w" in grads,)
        image = np.random.default_rng(0).standard_normal((1, cin, h, w)).astype(np.float32)
        self.bottoms, self.tops = setup_layer(self.layer, [xp.asarray(image)])
        diff = np.random.default_rng(1).standard_normal(self.tops[0].shape).astype(np.float32)
        self.tops[0].diff[...] = xp.asarray(diff)
        _, _, ho, wo = self.tops[0].shape
        self.gflop = conv_flops(1, cin, cout, ho, wo, kernel) / 1e9
        self.torch_forward = self.torch_backward = None
        if torch is not None:
            self._torch_closures(torch, image, diff, (stride, pad, dilation))

    def forward(self):
        self.layer.forward(self.bottoms, self.tops)

    def backward(self):
        self.layer.backward(self.tops, ["d" in self.grads], self.bottoms)

    def _torch_closures(self, torch, image, diff, geometry):
        conv2d = torch.nn.functional.conv2d
        x = torch.from_numpy(image).requires_grad_("d" in self.grads)
        w = torch.from_numpy(self.layer.blobs[0].data.copy()).requires_grad_("w" in self.grads)
        dy = torch.from_numpy(diff)

        def forward():
            with torch.no_grad():
                conv2d(x, w, None, *geometry)

        self.torch_forward = forward
        if self.grads:
            y = conv2d(x, w, None, *geometry)
            inputs = [t for t in (x, w) if t.requires_grad]
            self.torch_backward = lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)


def _measure(case, device, xp, args, measure_gemm):
    """Median times (s) over rounds of: ours fwd, ours bwd, torch fwd,
    torch bwd (None where not run); the best GEMM rate seen; whether a
    round was quiet. Each round alternates ours and torch's."""
    keys = ("forward", "backward", "torch_forward", "torch_backward")
    funcs = [case.forward, case.backward if case.grads else None,
             case.torch_forward, case.torch_backward]
    times = {k: [] for k in keys}
    gemm, quiet = 0.0, False
    for _ in range(args.rounds):
        with OtherLoad() as load:
            gemm = max(gemm, measure_gemm())
            with device.context():
                for key, func in zip(keys, funcs):
                    if func is not None:
                        times[key].append(best_time(func, xp, args.repeat))
        quiet |= load.fraction <= QUIET_LOAD
    return {k: statistics.median(v) if v else None for k, v in times.items()}, gemm, quiet


def _ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def _ms(t):
    return f"{t * 1e3:.1f}" if t is not None else "-"


def print_gemm_table(results, gemm):
    header = (f"{'layer':<26} {'n':>3} {'grad':>4} {'GFLOP':>6} {'ms fwd':>8} {'GF/s':>6} {'ratio':>6} "
              f"{'ms bwd':>8} {'GF/s':>6} {'ratio':>6}  verdict")
    print(f"R-FCN ResNet-101 trunk convolutions, 1x3x600x1000 input, per shape "
          f"(target: fwd >= {FORWARD_TARGET} of GEMM)")
    print(header)
    print("-" * len(header))
    failed = False
    for case, t, quiet in results:
        rate_f = case.gflop / t["forward"]
        work = len(case.grads) * case.gflop
        rate_b = work / t["backward"] if t["backward"] else None
        ok = case.name in EXEMPT or rate_f / gemm >= FORWARD_TARGET
        failed |= not ok
        verdict = "exempt" if case.name in EXEMPT else ("PASS" if ok else "FAIL")
        print(f"{case.name:<26} {case.count:>3} {case.grads or '-':>4} {case.gflop:>6.2f} "
              f"{_ms(t['forward']):>8} {rate_f:>6.1f} {rate_f / gemm:>6.2f} {_ms(t['backward']):>8} "
              f"{rate_b or 0:>6.1f} {_ratio(rate_b, gemm):>6}  {verdict}{'' if quiet else ' *'}")
    if not all(q for _, _, q in results):
        print("* no quiet round: other processes kept using the CPU, so this ratio may be too low")
    return failed


def print_torch_table(results, threads):
    header = (f"{'layer':<26} {'n':>3} {'ms fwd':>8} {'torch':>8} {'ratio':>6} "
              f"{'ms bwd':>8} {'torch':>8} {'ratio':>6}  plan")
    print(f"\nOurs vs PyTorch conv2d ({threads} threads), medians over rounds; ratio = ours / torch")
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(("forward", "backward", "torch_forward", "torch_backward"), 0.0)
    for case, t, _ in results:
        for key in totals:
            totals[key] += case.count * (t[key] or 0.0)
        print(f"{case.name:<26} {case.count:>3} {_ms(t['forward']):>8} {_ms(t['torch_forward']):>8} "
              f"{_ratio(t['forward'], t['torch_forward']):>6} {_ms(t['backward']):>8} "
              f"{_ms(t['torch_backward']):>8} {_ratio(t['backward'], t['torch_backward']):>6}  "
              f"{_plan_name(case)}")
    ours_fb = totals["forward"] + totals["backward"]
    torch_fb = totals["torch_forward"] + totals["torch_backward"]
    print(f"{'trunk total (x layers)':<30} {_ms(totals['forward']):>8} {_ms(totals['torch_forward']):>8} "
          f"{_ratio(totals['forward'], totals['torch_forward']):>6} {_ms(totals['backward']):>8} "
          f"{_ms(totals['torch_backward']):>8} {_ratio(totals['backward'], totals['torch_backward']):>6}")
    print(f"trunk forward+backward: ours {_ms(ours_fb)} ms, torch {_ms(torch_fb)} ms, "
          f"ratio {_ratio(ours_fb, torch_fb)}")


def _plan_name(case):
    """The forward plan make_plans chose for the case's layer (CPU)."""
    return type(case.layer.forward_plan).__name__


def plan_evidence(results, rounds, repeat):
    """[(case, ShiftPlan ms, WinogradPlan ms)] forward for each 3x3 stride-1
    shape, the two alternated in each round (medians over rounds)."""
    rows = []
    for case, _, _ in results:
        _, _, cin, cout, h, w, kernel, stride, pad, dilation, _ = case.row
        if kernel != 3 or stride != 1:
            continue
        image, weight = case.bottoms[0].data[0], case.layer.blobs[0].data
        plans = (ShiftPlan(cin, h, w, cout, (3, 3), (pad, pad), (dilation, dilation)),
                 WinogradPlan(cin, h, w, cout, (pad, pad), (dilation, dilation)))
        out = np.empty(case.tops[0].shape[1:], np.float32)
        workspace = Workspace()
        times = [[], []]
        for _ in range(rounds):
            for plan, found in zip(plans, times):
                found.append(best_time(lambda: plan.forward(workspace, image, weight, out), np, repeat))
        rows.append((case, statistics.median(times[0]), statistics.median(times[1])))
    return rows


def print_plan_evidence(rows):
    header = f"{'layer':<26} {'n':>3} {'shift ms':>9} {'winograd':>9} {'ratio':>6}  chosen"
    print("\n3x3 stride-1 forward, ShiftPlan vs WinogradPlan alternated (medians); "
          "ratio = winograd / shift")
    print(header)
    print("-" * len(header))
    for case, shift, winograd in rows:
        print(f"{case.name:<26} {case.count:>3} {_ms(shift):>9} {_ms(winograd):>9} "
              f"{_ratio(winograd, shift):>6}  {_plan_name(case)}")


def print_scratch(results):
    held = [case.layer.workspace.nbytes for case, _, _ in results]
    total = sum(case.count * b for (case, _, _), b in zip(results, held))
    print(f"\nConvolution scratch: {total / 2**20:.1f} MiB in all with a workspace per layer "
          f"(x layer counts), {max(held) / 2**20:.1f} MiB in one shared Workspace")


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


def _torch(args):
    """The torch module set to --threads, or None (not wanted / not installed)."""
    if args.gpu or args.no_torch:
        return None
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no comparison (pip install torch)", file=sys.stderr)
        return None
    torch.set_num_threads(args.threads)
    return torch


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convolution vs GEMM and PyTorch")
    parser.add_argument("--gpu", action="store_true", help="run on GPU 0 through CuPy")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per shape (median is kept)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--only", help="time only shapes whose name contains this")
    parser.add_argument("--skip-net", action="store_true", help="do not time the whole ResNet-101")
    args = parser.parse_args(argv)

    from netdef.device import CPU, Device, gpu_available
    if args.gpu and not gpu_available():
        sys.exit("--gpu: CuPy sees no CUDA device")
    device = Device("gpu", 0) if args.gpu else CPU
    xp = array_module(args.gpu)
    torch = _torch(args)
    gemm_size = 8192 if args.gpu else 2048  # a GPU needs a larger GEMM to peak

    def measure_gemm():
        with device.context():
            return gemm_gflops(xp, size=gemm_size, repeat=args.repeat)

    gemm = measure_gemm()
    results = []
    for row in RFCN_RESNET101:
        if args.only and args.only not in row[0]:
            continue
        case = Case(row, device, xp, torch)
        times, round_gemm, quiet = _measure(case, device, xp, args, measure_gemm)
        gemm = max(gemm, round_gemm)
        results.append((case, times, quiet))
        print(f"  timed {case.name}{'' if quiet else ' (no quiet round)'}", file=sys.stderr, flush=True)
    evidence = [] if args.gpu else plan_evidence(results, args.rounds, args.repeat)
    net = None
    if not args.skip_net:
        with OtherLoad() as net_load:
            net = time_net(device, xp, args.repeat)

    print(f"float32 GEMM {gemm_size}^3 ({'cuBLAS' if args.gpu else 'NumPy/OpenBLAS'}), best of the run: "
          f"{gemm:.1f} GFLOP/s\n")
    failed = print_gemm_table(results, gemm)
    if torch is not None:
        print_torch_table(results, args.threads)
    if evidence:
        print_plan_evidence(evidence)
    print_scratch(results)
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
