// The nested-KVM rig's stall rules: a soft lockup of two minutes or more stops the rig at once,
// through runNested's stopWhen, and so does silence past runNested's silenceLimitS (here with a
// stand-in for scripts/nested-run.sh that prints what a stalled rig prints and then would wait
// for minutes).
import { afterAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RIG_STALL_LIMIT_S, rigStalled, runNested } from '../support/nested.js';

const dir = mkdtempSync(join(tmpdir(), 'nested-rig-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the nested-KVM rig stall rule', () => {
  it('stops at a soft lockup of the limit or more, not before, and on nothing else', () => {
    const line = (s: number) => `[  329.007712] watchdog: BUG: soft lockup - CPU#1 stuck for ${s}s! [node:632]`;
    expect(rigStalled(line(RIG_STALL_LIMIT_S - 1))).toBeNull();
    expect(rigStalled(line(22))).toBeNull();
    expect(rigStalled(line(RIG_STALL_LIMIT_S))).toMatch(/soft lockup - CPU#1 stuck for 120s/);
    expect(rigStalled(line(400))).toMatch(/stuck for 400s.*has not come back/);
    expect(rigStalled('[kvm-rig]  ✓ test/kvm/vmm-relay.test.ts (1 test) 27158ms')).toBeNull();
    expect(rigStalled('rcu: INFO: rcu_sched self-detected stall on CPU')).toBeNull();
  });

  it('runNested stops the rig at the first line the rule names, and says why', async () => {
    const script = join(dir, 'fake-rig.sh');
    // As nested-run.sh runs its QEMU: in the background, its trap set before the guest prints a
    // line, so the SIGTERM ends the wait and the guest (a trap set later races with the signal).
    writeFileSync(script, `#!/bin/bash
sleep 60 &
guest=$!
trap 'kill $guest; exit 130' TERM
echo "nested-run: booting the rig"
echo "[  300.0] watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [kthreadd:2]"
echo "[  330.0] watchdog: BUG: soft lockup - CPU#0 stuck for 126s! [kthreadd:2]"
wait $guest
echo "never printed"
`);
    chmodSync(script, 0o755);
    const started = Date.now();
    const r = await runNested(['true'], { script, echo: false, stopWhen: rigStalled });
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(r.stoppedFor).toMatch(/stuck for 126s/);
    expect(r.output).not.toMatch(/never printed/);
    expect(r.status).not.toBe(0);
    // Without the rule the same rig runs to its end.
    writeFileSync(script, `#!/bin/bash
echo "[  300.0] watchdog: BUG: soft lockup - CPU#0 stuck for 126s! [kthreadd:2]"
echo "done"
`);
    const plain = await runNested(['true'], { script, echo: false });
    expect(plain.stoppedFor).toBeUndefined();
    expect(plain.status).toBe(0);
    expect(plain.output).toMatch(/done/);
  });

  it('runNested stops a rig that prints nothing for the silence limit, and says why', async () => {
    const script = join(dir, 'silent-rig.sh');
    writeFileSync(script, `#!/bin/bash
sleep 60 &
guest=$!
trap 'kill $guest; exit 130' TERM
echo "nested-run: booting the rig"
wait $guest
echo "never printed"
`);
    chmodSync(script, 0o755);
    const started = Date.now();
    const r = await runNested(['true'], { script, echo: false, silenceLimitS: 2 });
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(r.stoppedFor).toMatch(/printed nothing for [23] s \(the limit is 2 s\)/);
    expect(r.output).not.toMatch(/never printed/);
    expect(r.status).not.toBe(0);
    // A rig that keeps printing, more slowly than the limit in total but never silent that long, runs to its end.
    writeFileSync(script, `#!/bin/bash
for i in 1 2 3 4; do echo "line $i"; sleep 1; done
echo "done"
`);
    const chatty = await runNested(['true'], { script, echo: false, silenceLimitS: 3 });
    expect(chatty.stoppedFor).toBeUndefined();
    expect(chatty.status).toBe(0);
    expect(chatty.output).toMatch(/done/);
  });
});
