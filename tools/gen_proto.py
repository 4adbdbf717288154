"""Regenerate netdef/caffe_pb2.py from netdef/proto/caffe.proto.

    python tools/gen_proto.py            # rewrite netdef/caffe_pb2.py
    python tools/gen_proto.py --out DIR  # write DIR/caffe_pb2.py instead

Needs grpcio-tools (it bundles protoc). The generated module records the
protoc version it came from, so the committed file is only reproducible with
the grpcio-tools version pinned in the project's test extra;
tests/netdef/test_schema.py checks that the committed file matches.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "netdef", "proto")
PROTO_FILE = "caffe.proto"
DEFAULT_OUT = os.path.join(ROOT, "netdef")


def generate(out_dir=DEFAULT_OUT):
    """Run protoc on caffe.proto; return the path of the written module."""
    from grpc_tools import protoc

    os.makedirs(out_dir, exist_ok=True)
    status = protoc.main([
        "protoc",
        "--proto_path=" + PROTO_DIR,
        "--python_out=" + out_dir,
        os.path.join(PROTO_DIR, PROTO_FILE),
    ])
    if status != 0:
        raise SystemExit(f"protoc failed on {os.path.join(PROTO_DIR, PROTO_FILE)} "
                         f"(exit status {status})")
    return os.path.join(out_dir, "caffe_pb2.py")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="directory to write caffe_pb2.py into "
                             "(default: netdef/)")
    args = parser.parse_args(argv)
    print(generate(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
