// Sharing an interface with other XDP programs through libxdp's dispatcher (libxdp1, loaded only
// when needed). The dispatcher is one XDP program that calls up to ten others in turn by
// priority; xdp-loader, xdp-filter and libxdp's AF_XDP sockets put theirs there. When a VF
// already has a dispatcher, an AF_XDP port joins it with libxdp's own default AF_XDP program
// (xsk_def_xdp_prog.o: redirect to the socket of the frame's receive queue, else pass on),
// loaded as a separate instance with its own socket map, instead of attaching ours beside it,
// which the kernel refuses.
//
// libxdp pins what it attaches in bpffs, so such a program outlives a daemon killed by SIGKILL
// (unlike ours, which goes with its bpf_link fd). Each joined program is therefore recorded in
// STATE_DIR with the daemon's pid; the next port opened on that interface removes the programs
// whose recorded daemon is gone.
import koffi from 'koffi';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { SysError, errnoName } from './libc.js';

/** Where joined programs are recorded (tmpfs: a reboot takes the programs and the records). */
export const STATE_DIR = process.env.VIO4WD_XDP_STATE_DIR ?? '/run/vio4wd/xdp';
/** libxdp's default AF_XDP program, found on its object path (Debian: /usr/lib/<arch>/bpf). */
const XSK_PROGRAM_FILE = 'xsk_def_xdp_prog.o';
const XSK_MAP_NAME = 'xsks_map';

/** enum xdp_attach_mode */
const XDP_MODE_NATIVE = 1;
const XDP_MODE_SKB = 2;
export type DispatcherMode = 'native' | 'generic';

interface Bindings {
  getError: (p: unknown) => number;
  multiprogFromIfindex: (ifindex: number) => unknown;
  multiprogClose: (mp: unknown) => void;
  multiprogIsLegacy: (mp: unknown) => boolean;
  multiprogMainProg: (mp: unknown) => unknown;
  multiprogNextProg: (prev: unknown, mp: unknown) => unknown;
  multiprogAttachMode: (mp: unknown) => number;
  programFindFile: (file: string, section: string | null, opts: null) => unknown;
  programFromId: (id: number) => unknown;
  programBpfObj: (p: unknown) => unknown;
  programName: (p: unknown) => string;
  programId: (p: unknown) => number;
  programRunPrio: (p: unknown) => number;
  programAttach: (p: unknown, ifindex: number, mode: number, flags: number) => number;
  programDetach: (p: unknown, ifindex: number, mode: number, flags: number) => number;
  programClose: (p: unknown) => void;
  objectFindMap: (obj: unknown, name: string) => unknown;
  mapSetMaxEntries: (map: unknown, entries: number) => number;
  mapFd: (map: unknown) => number;
}

let bindings: Bindings | null | undefined;
let loadError = '';

function lib(): Bindings | null {
  if (bindings !== undefined) return bindings;
  try {
    const xdp = koffi.load('libxdp.so.1');
    const bpf = koffi.load('libbpf.so.1');
    const mp = koffi.pointer('xdp_multiprog', koffi.opaque());
    const prog = koffi.pointer('xdp_program', koffi.opaque());
    const obj = koffi.pointer('bpf_object', koffi.opaque());
    const map = koffi.pointer('bpf_map', koffi.opaque());
    bindings = {
      getError: xdp.func('long libxdp_get_error(const void *ptr)'),
      multiprogFromIfindex: xdp.func('xdp_multiprog *xdp_multiprog__get_from_ifindex(int ifindex)'),
      multiprogClose: xdp.func('void xdp_multiprog__close(xdp_multiprog *mp)'),
      multiprogIsLegacy: xdp.func('bool xdp_multiprog__is_legacy(xdp_multiprog *mp)'),
      multiprogMainProg: xdp.func('xdp_program *xdp_multiprog__main_prog(xdp_multiprog *mp)'),
      multiprogNextProg: xdp.func('xdp_program *xdp_multiprog__next_prog(xdp_program *prev, xdp_multiprog *mp)'),
      multiprogAttachMode: xdp.func('int xdp_multiprog__attach_mode(xdp_multiprog *mp)'),
      programFindFile: xdp.func('xdp_program *xdp_program__find_file(const char *file, const char *section, void *opts)'),
      programFromId: xdp.func('xdp_program *xdp_program__from_id(uint32_t id)'),
      programBpfObj: xdp.func('bpf_object *xdp_program__bpf_obj(xdp_program *p)'),
      programName: xdp.func('const char *xdp_program__name(xdp_program *p)'),
      programId: xdp.func('uint32_t xdp_program__id(xdp_program *p)'),
      programRunPrio: xdp.func('unsigned int xdp_program__run_prio(xdp_program *p)'),
      programAttach: xdp.func('int xdp_program__attach(xdp_program *p, int ifindex, int mode, unsigned int flags)'),
      programDetach: xdp.func('int xdp_program__detach(xdp_program *p, int ifindex, int mode, unsigned int flags)'),
      programClose: xdp.func('void xdp_program__close(xdp_program *p)'),
      objectFindMap: bpf.func('bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)'),
      mapSetMaxEntries: bpf.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t entries)'),
      mapFd: bpf.func('int bpf_map__fd(bpf_map *map)'),
    };
    // Their messages would go to the daemon's stderr around its structured log (libbpf warns of
    // every ELF section it does not know); what fails comes back as an error code, which the
    // port's error reports.
    xdp.func('void *libxdp_set_print(void *fn)')(null);
    bpf.func('void *libbpf_set_print(void *fn)')(null);
  } catch (err) {
    loadError = (err as Error).message;
    bindings = null;
  }
  return bindings;
}

/** Why libxdp cannot be used here ('' when it can). */
export function libxdpMissing(): string {
  return lib() ? '' : `libxdp is not available (${loadError}); install libxdp1`;
}

/** A negative errno from a libxdp pointer that is NULL or carries an error, else 0. */
function pointerError(b: Bindings, p: unknown): number {
  return p === null ? -22 : Number(b.getError(p));
}

export interface InterfaceProgram {
  name: string;
  id: number;
  /** The dispatcher's order: lower runs first. */
  priority: number;
}

/** What holds an interface's XDP hook, as libxdp sees it. */
export type InterfaceXdp =
  | { kind: 'none' }
  | { kind: 'dispatcher'; mode: DispatcherMode | 'offload'; programs: InterfaceProgram[] }
  | { kind: 'single'; program: InterfaceProgram };

function describe(b: Bindings, p: unknown): InterfaceProgram {
  return { name: b.programName(p), id: b.programId(p), priority: b.programRunPrio(p) };
}

/** The XDP programs on an interface (libxdp must be available: see libxdpMissing). */
export function interfaceXdp(ifindex: number): InterfaceXdp {
  const b = lib();
  if (!b) throw new Error(libxdpMissing());
  const mp = b.multiprogFromIfindex(ifindex);
  const err = pointerError(b, mp);
  if (err === -2) return { kind: 'none' }; // ENOENT: nothing attached
  if (err < 0) throw new SysError('xdp_multiprog__get_from_ifindex', -err, `the XDP programs of interface ${ifindex}`);
  try {
    if (b.multiprogIsLegacy(mp)) {
      const main = b.multiprogMainProg(mp);
      return { kind: 'single', program: main ? describe(b, main) : { name: '?', id: 0, priority: 0 } };
    }
    const programs: InterfaceProgram[] = [];
    for (let p = b.multiprogNextProg(null, mp); p && pointerError(b, p) === 0; p = b.multiprogNextProg(p, mp)) programs.push(describe(b, p));
    const mode = b.multiprogAttachMode(mp);
    return { kind: 'dispatcher', mode: mode === XDP_MODE_NATIVE ? 'native' : mode === XDP_MODE_SKB ? 'generic' : 'offload', programs };
  } finally {
    b.multiprogClose(mp);
  }
}

/** An AF_XDP program this process put into an interface's dispatcher. */
export interface JoinedProgram {
  ifindex: number;
  id: number;
  mode: DispatcherMode;
  /** The program's socket map (receive queue → AF_XDP socket); libxdp owns the fd. */
  mapFd: number;
  priority: number;
  /** What removing the programs of daemons now gone did, just before. */
  leftovers: Leftovers;
}

/** The open libxdp objects behind each joined program, by program id (they stay on this thread). */
const joined = new Map<number, unknown>();

const modeValue = (mode: DispatcherMode) => (mode === 'native' ? XDP_MODE_NATIVE : XDP_MODE_SKB);

/**
 * Loads an instance of libxdp's AF_XDP program with a socket map of `entries` slots and adds it
 * to the dispatcher already on `ifindex` (in the dispatcher's mode). Removes first the programs
 * that daemons now gone left on that interface.
 */
export function joinDispatcher(ifindex: number, ifname: string, entries: number, mode: DispatcherMode): JoinedProgram {
  const b = lib();
  if (!b) throw new Error(libxdpMissing());
  const leftovers = removeLeftovers(ifindex);
  const p = b.programFindFile(XSK_PROGRAM_FILE, null, null);
  let err = pointerError(b, p);
  if (err < 0) throw new SysError('xdp_program__find_file', -err, `libxdp's ${XSK_PROGRAM_FILE}`);
  let map: unknown;
  try {
    map = b.objectFindMap(b.programBpfObj(p), XSK_MAP_NAME);
    if (!map) throw new Error(`${XSK_PROGRAM_FILE} has no map ${XSK_MAP_NAME}`);
    err = b.mapSetMaxEntries(map, entries);
    if (err < 0) throw new SysError('bpf_map__set_max_entries', -err, `${XSK_MAP_NAME} of ${entries} entries`);
    err = b.programAttach(p, ifindex, modeValue(mode), 0);
    if (err < 0) throw new SysError('xdp_program__attach', -err, `adding an AF_XDP program to the XDP dispatcher on ${ifname}`);
  } catch (e) {
    b.programClose(p);
    throw e;
  }
  const program: JoinedProgram = { ifindex, id: b.programId(p), mode, mapFd: -1, priority: b.programRunPrio(p), leftovers };
  joined.set(program.id, p);
  try {
    program.mapFd = b.mapFd(map);
    record(program, ifname);
  } catch (e) {
    leaveDispatcher(program);
    throw e;
  }
  return program;
}

/** Takes a joined program out of the dispatcher and forgets its record. */
export function leaveDispatcher(program: JoinedProgram): void {
  const b = lib();
  const p = joined.get(program.id);
  if (!b || p === undefined) return;
  joined.delete(program.id);
  try {
    const err = b.programDetach(p, program.ifindex, modeValue(program.mode), 0);
    if (err < 0 && err !== -2) throw new SysError('xdp_program__detach', -err, `the AF_XDP program ${program.id} on interface ${program.ifindex}`);
  } finally {
    b.programClose(p);
    rmSync(resolve(STATE_DIR, String(program.id)), { force: true });
  }
}

interface JoinRecord {
  pid: number;
  ifindex: number;
  ifname: string;
  mode: DispatcherMode;
}

function record(program: JoinedProgram, ifname: string): void {
  mkdirSync(STATE_DIR, { recursive: true });
  const r: JoinRecord = { pid: process.pid, ifindex: program.ifindex, ifname, mode: program.mode };
  writeFileSync(resolve(STATE_DIR, String(program.id)), `${JSON.stringify(r)}\n`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface Leftovers {
  /** Programs removed, each with the pid that had recorded it. */
  removed: Array<{ id: number; pid: number }>;
  /** Programs that could not be removed, with the reason. */
  failed: string[];
}

/**
 * Removes from `ifindex` the programs recorded by daemons that are gone. A record whose program
 * is no longer there (the interface went, someone removed it) is dropped.
 */
export function removeLeftovers(ifindex: number): Leftovers {
  const found: Leftovers = { removed: [], failed: [] };
  const b = lib();
  if (!b) return found;
  let names: string[];
  try {
    names = readdirSync(STATE_DIR);
  } catch {
    return found;
  }
  for (const name of names) {
    const id = Number(name);
    if (!Number.isInteger(id) || id <= 0 || joined.has(id)) continue;
    const path = resolve(STATE_DIR, name);
    let r: JoinRecord;
    try {
      r = JSON.parse(readFileSync(path, 'utf8')) as JoinRecord;
    } catch {
      continue; // being written, or not ours to judge
    }
    if (r.ifindex !== ifindex || alive(r.pid)) continue;
    const p = b.programFromId(id);
    if (pointerError(b, p) === 0) {
      const err = b.programDetach(p, ifindex, modeValue(r.mode), 0);
      b.programClose(p);
      if (err === 0) found.removed.push({ id, pid: r.pid });
      else if (err !== -2) {
        found.failed.push(`program ${id}, left on ${r.ifname} by pid ${r.pid}: ${errnoName(-err)}`);
        continue; // the record stays for the next try
      }
    }
    rmSync(path, { force: true });
  }
  return found;
}
