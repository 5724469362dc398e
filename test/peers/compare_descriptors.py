#!/usr/bin/python3
"""Compares two FileDescriptorSets written by `protoc --descriptor_set_out` (one .proto each) on
everything that reaches the wire: package, messages, field names, numbers, labels, types, defaults,
options, enums. Comments and the file name are left out. Prints the first difference; exit 1 then."""
import sys

from google.protobuf import descriptor_pb2


def load(path):
    s = descriptor_pb2.FileDescriptorSet()
    with open(path, 'rb') as f:
        s.ParseFromString(f.read())
    if len(s.file) != 1:
        sys.exit('{}: expected one file, found {}'.format(path, len(s.file)))
    d = s.file[0]
    d.ClearField('source_code_info')
    d.ClearField('name')
    return d


a, b = load(sys.argv[1]), load(sys.argv[2])
if a == b:
    print('identical')
    sys.exit(0)
for name in ('package', 'syntax', 'message_type', 'enum_type', 'options'):
    if getattr(a, name) != getattr(b, name):
        print('differ in {}:\n{}\n----\n{}'.format(name, getattr(a, name), getattr(b, name)))
        break
sys.exit(1)
