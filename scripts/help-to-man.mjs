#!/usr/bin/env node
// Turns a command's --help text (on stdin) into a roff man page (on stdout), so the pages the
// package ships say exactly what the commands say. The help text is kept as written (it is laid
// out for an 80-column terminal) under DESCRIPTION; NAME, SYNOPSIS, FILES and SEE ALSO are added.
//
//   node scripts/help-to-man.mjs --name virtio-forwarder --section 8 --summary "..." \
//       [--version 0.1.0] [--date 2026-12-04] [--file PATH:WHAT]... [--see-also NAME(S)]... < help.txt
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const USAGE = 'usage: help-to-man.mjs --name NAME --section N --summary TEXT [--version V] [--date YYYY-MM-DD] [--file PATH:WHAT]... [--see-also NAME(N)]... < help.txt';

let values;
try {
  ({ values } = parseArgs({
    options: {
      name: { type: 'string' },
      section: { type: 'string' },
      summary: { type: 'string' },
      version: { type: 'string' },
      date: { type: 'string' },
      file: { type: 'string', multiple: true },
      'see-also': { type: 'string', multiple: true },
    },
    strict: true,
  }));
} catch (err) {
  process.stderr.write(`help-to-man: ${err.message}\n${USAGE}\n`);
  process.exit(2);
}
for (const required of ['name', 'section', 'summary']) {
  if (!values[required]) {
    process.stderr.write(`help-to-man: --${required} is required\n${USAGE}\n`);
    process.exit(2);
  }
}
if (!/^[1-9][a-z]*$/.test(values.section)) {
  process.stderr.write(`help-to-man: --section ${JSON.stringify(values.section)} is not a man section\n`);
  process.exit(2);
}

const help = readFileSync(0, 'utf8').replace(/\r\n/g, '\n').trimEnd();
if (!help) {
  process.stderr.write('help-to-man: no help text on stdin\n');
  process.exit(1);
}

/** Text for roff: backslashes, dashes and quotes escaped so they print as typed; no line starting with a control character. */
const esc = (text) =>
  text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/'/g, "\\(aq")
    .replace(/`/g, '\\(ga')
    .replace(/\^/g, '\\(ha')
    .replace(/~/g, '\\(ti');
const line = (text) => (/^[.']/.test(text) ? `\\&${text}` : text);

const lines = help.split('\n');
const usageAt = lines.findIndex((l) => /^usage:/i.test(l.trim()));
const synopsis = usageAt >= 0 ? lines[usageAt].trim().replace(/^usage:\s*/i, '') : values.name;
const body = usageAt >= 0 ? lines.slice(usageAt + 1) : lines;
while (body.length && body[0].trim() === '') body.shift();

const date = values.date ?? new Date().toISOString().slice(0, 10);
const source = values.version ? `vio4wd ${values.version}` : 'vio4wd';
const out = [
  `.TH "${values.name.toUpperCase()}" "${values.section}" "${date}" "${source}" "vio4wd"`,
  // Command and file names must not be hyphenated or stretched.
  '.nh',
  '.ad l',
  '.SH NAME',
  `${esc(values.name)} \\- ${esc(values.summary)}`,
  '.SH SYNOPSIS',
  '.nf',
  line(esc(synopsis)),
  '.fi',
  '.SH DESCRIPTION',
  '.nf',
  ...body.map((l) => line(esc(l))),
  '.fi',
];
if (values.file?.length) {
  out.push('.SH FILES');
  for (const f of values.file) {
    const colon = f.indexOf(':');
    out.push('.TP', `.B ${esc(colon < 0 ? f : f.slice(0, colon))}`, esc(colon < 0 ? '' : f.slice(colon + 1)));
  }
}
if (values['see-also']?.length) {
  out.push('.SH SEE ALSO', values['see-also'].map((s) => {
    const m = /^(.+)\((\w+)\)$/.exec(s);
    return m ? `.BR ${esc(m[1])} (${m[2]})` : esc(s);
  }).join(',\n'));
}
process.stdout.write(`${out.join('\n')}\n`);
