// Google's protobuf runtime as a peer: Debian's /usr/bin/python3 with python3-zmq and
// python3-protobuf runs test/peers/pb_client.py over Python modules that protoc generated into a
// temporary directory. (Not the python3 first on PATH: that may be another interpreter without
// Debian's modules.)
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { hasBinary, requireOrSkip } from './env.js';
import { repoRoot } from './relay.js';

export const DEBIAN_PYTHON = '/usr/bin/python3';
export const OUR_PROTO = join(repoRoot, 'port-control', 'virtioforwarder.proto');

/** True when protoc and Debian's python3 with zmq and google.protobuf are there (skip otherwise; CI fails). */
export function requireProtobufPeer(): boolean {
  if (!requireOrSkip(hasBinary('protoc'), 'this test needs protoc (Debian package protobuf-compiler)')) return false;
  const probe = spawnSync(DEBIAN_PYTHON, ['-c', 'import zmq, google.protobuf'], { encoding: 'utf8' });
  return requireOrSkip(
    probe.status === 0,
    `this test needs ${DEBIAN_PYTHON} with python3-zmq and python3-protobuf: ${probe.stderr?.trim() || probe.error?.message}`,
  );
}

/** Runs protoc --python_out on `proto` into `outDir`; throws with protoc's message on failure. */
export function generatePythonModule(proto: string, outDir: string): void {
  const dir = proto.slice(0, proto.lastIndexOf('/'));
  const r = spawnSync('protoc', [`--proto_path=${dir}`, `--python_out=${outDir}`, proto], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`protoc failed on ${proto}: ${r.stderr}`);
}

export interface PbRequest {
  ep: string;
  type?: string;
  msg?: Record<string, unknown>;
  raw?: string;
  frames?: string[];
  reply: string;
  timeout_ms?: number;
}

export interface PbAnswer {
  ok: boolean;
  error?: string;
  reply?: any;
  present?: string[];
  initialized?: boolean;
  bytes?: number;
}

export class PbPeer {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly waiting: ((line: string) => void)[] = [];
  private stderr = '';
  readonly dir: string;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'vio4wd-pb2-'));
    generatePythonModule(OUR_PROTO, this.dir);
    this.proc = spawn(DEBIAN_PYTHON, [join(repoRoot, 'test/peers/pb_client.py')], {
      env: { ...process.env, PB2_DIR: this.dir, PYTHONDONTWRITEBYTECODE: '1' },
    });
    this.proc.stderr.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    createInterface({ input: this.proc.stdout }).on('line', (line) => this.waiting.shift()?.(line));
  }

  request(req: PbRequest): Promise<PbAnswer> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`pb_client.py did not answer; stderr: ${this.stderr}`)), (req.timeout_ms ?? 3000) + 10_000);
      this.waiting.push((line) => {
        clearTimeout(timer);
        resolve(JSON.parse(line) as PbAnswer);
      });
      this.proc.stdin.write(`${JSON.stringify(req)}\n`);
    });
  }

  async close(): Promise<void> {
    this.proc.stdin.end();
    await new Promise<void>((resolve) => {
      if (this.proc.exitCode !== null) return resolve();
      const t = setTimeout(() => {
        this.proc.kill('SIGKILL');
        resolve();
      }, 3000);
      this.proc.on('exit', () => {
        clearTimeout(t);
        resolve();
      });
    });
    rmSync(this.dir, { recursive: true, force: true });
  }
}
