"""Installs the engine: ``pip install -e .`` (add ``[test]`` or ``[gpu]``)."""
from setuptools import find_packages, setup

setup(
    name="netdef",
    version="0.1.0",
    description="A Caffe-style declarative graph engine on NumPy and CuPy for "
                "training R-FCN and Faster R-CNN object detectors",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["netdef", "netdef.*", "layers", "layers.*",
                                    "solver", "solver.*", "detection", "detection.*",
                                    "prototxt", "bench"]),
    package_data={
        "layers": ["cuda/*.cu", "cuda/*.cuh"],
        "netdef": ["proto/*.proto"],
        "prototxt": ["*.prototxt"],
    },
    install_requires=[
        "numpy>=1.22",
        "protobuf>=7.35.1,<8",
        "pillow>=10.1",
    ],
    extras_require={
        # CuPy and the CUDA 12 libraries it loads (cuBLAS, cuRAND, NVRTC, ...)
        # as NVIDIA's wheels, through CuPy's own `ctk` extra: a machine with
        # only the NVIDIA driver runs the GPU path. CuPy 14 is the first that
        # finds those wheels. Check with: python -m netdef.device_check --gpu 0
        "gpu": ["cupy-cuda12x[ctk]>=14"],
        # NCCL for data-parallel training on several GPUs (CuPy's cupy.cuda.nccl).
        "nccl": ["cupy-cuda12x[ctk]>=14", "nvidia-nccl-cu12>=2.18"],
        # Data-parallel training and evaluation across processes and machines:
        # mpi4py and an MPI runtime (MPICH; on a cluster, the site's MPI).
        "mpi": ["mpi4py>=4", "mpich>=4"],
        # External proposals: Selective Search (OpenCV contrib) and MATLAB
        # .mat proposal files (scipy).
        "proposals": ["opencv-contrib-python-headless>=4.8", "scipy>=1.10"],
        # Caffe's data files: HDF5Data/HDF5Output and LMDB Data layers.
        "data": ["h5py>=3.8", "lmdb>=1.4"],
        # Net drawings (python -m netdef.draw); pictures also need Graphviz's
        # `dot` program (apt-get install graphviz).
        "draw": ["graphviz>=0.20"],
        # t-SNE for the embeddings picture of python -m solver.visualize.
        "viz": ["scikit-learn>=1.3"],
        # PyTorch, for the side-by-side benchmarks in bench/ only.
        "bench": ["torch>=2.1"],
        "test": [
            "pytest>=7",
            # Compile every .cu with NVRTC in the test suite, as CuPy does.
            "cuda-bindings>=12.8,<13",
            "nvidia-cuda-nvrtc-cu12>=12.8",
            # Regenerate caffe_pb2.py from caffe.proto to check it has not drifted.
            "grpcio-tools==1.85.1",
            # The COCO metric is checked against the reference implementation.
            "pycocotools>=2.0.7",
            # The optional extras, so their tests run.
            "h5py>=3.8",
            "lmdb>=1.4",
            "graphviz>=0.20",
            "scikit-learn>=1.3",
            "mpi4py>=4",
            "mpich>=4",
            "opencv-contrib-python-headless>=4.8",
            "scipy>=1.10",
        ],
    },
)
