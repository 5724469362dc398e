#!/usr/bin/python3
"""A protobuf peer of vio4wd's ZMQ services, built on Google's protobuf runtime and pyzmq.

Reads one JSON request per line on stdin and writes one JSON answer per line on stdout, so a test
can drive many exchanges through one process. The message classes come from the module that
`protoc --python_out` generated from port-control/virtioforwarder.proto into the directory named by
the environment variable PB2_DIR.

A request line:
  {"ep": "ipc://...",                     endpoint
   "type": "PortControlRequest",          message to build with json_format.ParseDict from "msg"
   "msg": {...},
   "raw": "hex", "frames": ["hex", ...],  or bytes to send as they are (one frame, or several)
   "reply": "PortControlResponse",        how to parse the reply
   "timeout_ms": 3000}
The answer:
  {"ok": true, "reply": {...}, "present": {"field.path": true, ...}, "initialized": true, "bytes": n}
  {"ok": false, "error": "..."}           no reply, or a reply that does not parse
"present" lists every field the reply carries (proto2 presence), nested ones as dotted paths
with list indexes, so a test can tell "0" from "absent".
"""
import json
import os
import sys

import zmq
from google.protobuf import json_format

sys.path.insert(0, os.environ['PB2_DIR'])
import virtioforwarder_pb2 as pb  # noqa: E402


def present(message, prefix=''):
    out = []
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.message_type is not None:
            if field.label == field.LABEL_REPEATED:
                for i, item in enumerate(value):
                    out.append('{}[{}]'.format(name, i))
                    out.extend(present(item, '{}[{}].'.format(name, i)))
            else:
                out.append(name)
                out.extend(present(value, name + '.'))
        else:
            out.append(name)
    return out


def exchange(context, req):
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(req.get('timeout_ms', 3000)))
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.connect(req['ep'])
    try:
        if 'frames' in req:
            sock.send_multipart([bytes.fromhex(f) for f in req['frames']])
        elif 'raw' in req:
            sock.send(bytes.fromhex(req['raw']))
        else:
            msg = getattr(pb, req['type'])()
            json_format.ParseDict(req.get('msg', {}), msg)
            # Partial: a test may leave out required fields on purpose.
            sock.send(msg.SerializePartialToString())
        try:
            data = sock.recv()
        except zmq.Again:
            return {'ok': False, 'error': 'no reply within {} ms'.format(req.get('timeout_ms', 3000))}
    finally:
        sock.close()
    reply = getattr(pb, req['reply'])()
    try:
        reply.ParseFromString(data)
    except Exception as err:  # DecodeError and friends
        return {'ok': False, 'error': 'reply does not parse as {}: {}'.format(req['reply'], err), 'raw': data.hex()}
    return {
        'ok': True,
        'reply': json_format.MessageToDict(reply, preserving_proto_field_name=True),
        'present': present(reply),
        'initialized': reply.IsInitialized(),
        'bytes': len(data),
    }


def main():
    context = zmq.Context()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = exchange(context, json.loads(line))
        except Exception as err:
            answer = {'ok': False, 'error': '{}: {}'.format(type(err).__name__, err)}
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()
    context.term()


if __name__ == '__main__':
    main()
