"""The schema's source of truth: ``caffe.proto``.

``netdef/caffe_pb2.py`` is generated from it by ``tools/gen_proto.py``;
edit the .proto, never the generated module.
"""
import os

#: Absolute path of the schema source file.
PROTO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe.proto")
