// What the operator tools share: option parsing with the original's spellings, the one way to
// fail (message on stderr, exit 1), and the endpoint options.

/** Accepts the original's `--zmq_ep` style too: underscores in long option names become dashes. */
export function normaliseArgv(argv: string[]): string[] {
  return argv.map((arg) => {
    if (!arg.startsWith('--')) return arg;
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    return name.replace(/_/g, '-') + (eq < 0 ? '' : arg.slice(eq));
  });
}

/**
 * Accepts unambiguous prefixes of long options, as the original's argparse tools did
 * (`--virtio` for `--virtio-id`, `--include` for `--include-inactive`). An exact name always
 * wins; an ambiguous or unknown prefix is left alone for the parser to refuse. Everything after
 * `--` is left alone.
 */
export function expandAbbreviations(argv: string[], longNames: readonly string[]): string[] {
  const out: string[] = [];
  let rest = false;
  for (const arg of argv) {
    if (rest || !arg.startsWith('--') || arg === '--') {
      if (arg === '--') rest = true;
      out.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = (eq < 0 ? arg : arg.slice(0, eq)).slice(2);
    const candidates = longNames.includes(name) ? [name] : longNames.filter((n) => n.startsWith(name));
    out.push(candidates.length === 1 ? `--${candidates[0]}${eq < 0 ? '' : arg.slice(eq)}` : arg);
  }
  return out;
}

/**
 * Runs node:util parseArgs (given the normalised argv, with unambiguous prefixes of `longNames`
 * expanded) and turns its errors into `program: message` and exit status 1.
 */
export function parseCommandLine<T>(program: string, parse: (args: string[]) => T, longNames: readonly string[] = []): T {
  try {
    return parse(expandAbbreviations(normaliseArgv(process.argv.slice(2)), longNames));
  } catch (err) {
    fail(program, `${(err as Error).message} (see --help)`);
  }
}

export function fail(program: string, message: string): never {
  process.stderr.write(`${program}: ${message}\n`);
  process.exit(1);
}

export function integerOption(program: string, name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value.trim())) fail(program, `--${name} ${JSON.stringify(value)} is not a whole number`);
  const n = Number(value);
  if (n < min || n > max) fail(program, `--${name} ${n} is outside ${min}..${max}`);
  return n;
}

export function numberOption(program: string, name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < min) fail(program, `--${name} ${JSON.stringify(value)} is not a number ≥ ${min}`);
  return n;
}

/** Runs an async main, turning any thrown error into `program: message` and exit status 1. */
export function runMain(program: string, main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err) => fail(program, (err as Error).message),
  );
}
