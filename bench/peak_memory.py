"""Peak memory of one benchmark side, in a process of its own.

    python -m bench.peak_memory {ours,torch,iteration} [--height 600 --width 1000] [--gpu]

Run by ``bench.trunk_vs_pytorch`` once per side, each in a fresh process so
that nothing the other side allocated counts:

- ours: the R-FCN ResNet-101 trunk as a TRAIN-phase Net (``build_ours``,
  keep=[output] when the Net has that option), one warm-up and one
  measured forward+backward with the seeded output diff;
- torch: the same trunk translated to PyTorch (``bench.torch_graph``, 2
  threads, weights drawn by ``TorchGraph.finite_init``: our Net is never
  built in this process), one warm-up and one measured forward+backward;
- iteration: one whole training iteration of ours on the full TRAIN net of
  prototxt/rfcn_resnet101.prototxt as ``bench.train_iteration.build`` makes
  it (RoIData at 600x1000; the reference solver: iter_size forward/backward
  passes and one update). --height/--width do not apply.

Prints one JSON line: side, peak_bytes (CPU: the peak resident set, VmHWM,
see ``resident_bytes``; --gpu: CuPy's default pool ``total_bytes`` for
ours, ``torch.cuda.max_memory_allocated`` for PyTorch), baseline_bytes
(the same measure after the imports, before anything is built), measure,
plan.
"""
import argparse
import json
import resource
import sys

from bench import train_iteration
from bench.trunk_vs_pytorch import (SEED_BLOB, TORCH_THREADS, blob_shapes, build_ours,
                                    import_torch_graph, inputs, our_device, read_trunk,
                                    trunk_output, with_seeded_loss)

PASSES = 2   # one warm-up, one measured


def resident_bytes():
    """The process's peak resident set so far, in bytes.

    Linux's ``ru_maxrss`` (RUSAGE_SELF) is carried across fork + exec: a
    child started by a process holding 2 GB reports at least 2 GB. So this
    reads the high-water mark of the process's own address space, VmHWM in
    /proc/self/status, and falls back to ``ru_maxrss`` (KiB) without /proc.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # no /proc (not Linux): ru_maxrss below is the fallback
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cupy_pool_bytes():
    """Bytes held by CuPy's default pool: it keeps freed blocks, so after a
    run this is its high-water mark."""
    import cupy
    cupy.cuda.Device(0).synchronize()
    return int(cupy.get_default_memory_pool().total_bytes())


def ours_trunk(height, width, gpu):
    """Our trunk forward+backward; returns (peak bytes, baseline, measure, plan)."""
    baseline = cupy_pool_bytes() if gpu else resident_bytes()
    trunk = read_trunk(height, width)
    output = trunk_output(trunk)
    net, plan = build_ours(with_seeded_loss(trunk), "TRAIN", our_device(gpu), keep=[output])
    shapes = blob_shapes(trunk)
    x, diff = inputs(shapes[trunk.layer[0].top[0]], shapes[output])
    net.set_input_arrays(**{trunk.layer[0].top[0]: x, SEED_BLOB: diff})
    for _ in range(PASSES):
        net.forward()
        net.backward()
    if gpu:
        return cupy_pool_bytes(), baseline, "CuPy pool total_bytes", plan
    return resident_bytes(), baseline, "VmHWM", plan


def torch_trunk(height, width, gpu):
    """PyTorch's trunk forward+backward; returns (peak bytes, baseline, measure, plan)."""
    torch_graph = import_torch_graph()
    torch = torch_graph.torch
    torch.set_num_threads(TORCH_THREADS)
    device = "cuda" if gpu else "cpu"
    baseline = torch.cuda.max_memory_allocated() if gpu else resident_bytes()
    trunk = read_trunk(height, width)
    model = torch_graph.TorchGraph(trunk).finite_init().to(device)
    shapes = blob_shapes(trunk)
    x, diff = inputs(shapes[model.input_name], shapes[model.output_name])
    x, diff = torch.from_numpy(x).to(device), torch.from_numpy(diff).to(device)
    for _ in range(PASSES):
        model(x).backward(diff)
    if gpu:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), baseline, "torch.cuda.max_memory_allocated", ""
    return resident_bytes(), baseline, "VmHWM", ""


def training_iteration(gpu):
    """One R-FCN ResNet-101 training iteration of ours; returns (peak
    bytes, baseline, measure, plan)."""
    baseline = cupy_pool_bytes() if gpu else resident_bytes()
    net, solver, data_layer = train_iteration.build(gpu)
    try:
        solver.step(1)
    finally:
        data_layer.close()
    plan = (f"training iteration: the full TRAIN net as bench.train_iteration.build makes it "
            f"(lean memory plan, as solver.train), iter_size {solver.param.iter_size} + 1 update")
    if gpu:
        return cupy_pool_bytes(), baseline, "CuPy pool total_bytes", plan
    return resident_bytes(), baseline, "VmHWM", plan


def main(argv=None):
    """Measure one side and print its JSON report."""
    parser = argparse.ArgumentParser(prog="python -m bench.peak_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=("ours", "torch", "iteration"))
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args(argv)
    if args.side == "ours":
        peak, baseline, measure, plan = ours_trunk(args.height, args.width, args.gpu)
    elif args.side == "torch":
        peak, baseline, measure, plan = torch_trunk(args.height, args.width, args.gpu)
    else:
        peak, baseline, measure, plan = training_iteration(args.gpu)
    print(json.dumps({"side": args.side, "peak_bytes": int(peak),
                      "baseline_bytes": int(baseline), "measure": measure, "plan": plan}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
