// Guest memory that cannot shrink under us. The back-end maps the front-end's memory files; if the
// front-end later truncates one below what is mapped, the next touch of the lost pages raises
// SIGBUS, and a Node.js process cannot catch SIGBUS: every relay of the daemon dies with no log
// line. The kernel's only guarantee against that is the F_SEAL_SHRINK seal on a memfd (QEMU's
// memory-backend-memfd sets it by default). This module decides, per region file, whether it is
// sealed, whether we can seal it ourselves (a memfd created with MFD_ALLOW_SEALING and not yet
// F_SEAL_SEALed: seals belong to the file, so our fd may add one), or whether it cannot be sealed
// at all (hugetlbfs files, memfds created without MFD_ALLOW_SEALING such as DPDK virtio-user's,
// plain files): the caller then refuses the table or accepts it with a warning, by policy.
import { F_SEAL_SEAL, F_SEAL_SHRINK, addSeals, fileSeals } from '../sys/memory.js';

/** What to do with a region whose file can still shrink (VIRTIOFWD_UNSEALED_MEMORY). */
export type UnsealedMemoryPolicy = 'refuse' | 'warn';

export type ShrinkProtection =
  /** The front-end sealed it (F_SEAL_SHRINK was already set). */
  | { kind: 'sealed' }
  /** It was sealable and unsealed: the back-end added F_SEAL_SHRINK itself. */
  | { kind: 'sealed-here' }
  /** It can shrink and nothing here can prevent it; `why` says what kind of file it is. */
  | { kind: 'unprotected'; why: string };

/** Makes sure the file behind `fd` cannot shrink, when the kernel allows it. Never throws. */
export function protectAgainstShrink(fd: number): ShrinkProtection {
  let seals: number;
  try {
    seals = fileSeals(fd);
  } catch (err) {
    return { kind: 'unprotected', why: `the file does not support seals (${(err as { code?: string }).code ?? (err as Error).message})` };
  }
  if ((seals & F_SEAL_SHRINK) !== 0) return { kind: 'sealed' };
  if ((seals & F_SEAL_SEAL) !== 0) {
    return { kind: 'unprotected', why: 'the file is not sealed against shrinking and cannot be sealed any more (F_SEAL_SEAL, or a memfd made without MFD_ALLOW_SEALING, or a hugetlbfs file)' };
  }
  try {
    addSeals(fd, F_SEAL_SHRINK);
    return { kind: 'sealed-here' };
  } catch (err) {
    return { kind: 'unprotected', why: `adding F_SEAL_SHRINK failed (${(err as { code?: string }).code ?? (err as Error).message})` };
  }
}
