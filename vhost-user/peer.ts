// What server.ts and client.ts hand a connected socket to: a back-end session (BackendSession) or a
// front-end driver. They only need to know when it has ended, and how to end it.
export interface PeerSession {
  /** Resolves once the session is over (the socket is closed and its owner cleaned up). */
  readonly ended: Promise<void>;
  close(): Promise<void> | void;
}

export type PeerFactory = (fd: number) => PeerSession;

/** Ends a session (if any) and waits until its owner has cleaned up. */
export async function endSession(session: PeerSession | null): Promise<void> {
  if (!session) return;
  await session.close();
  await session.ended;
}
