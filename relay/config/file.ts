// The /etc/default/virtioforwarder reader. The original let bash source this file, so operators
// write shell syntax: KEY=VALUE, `export`, quotes, comments and bash arrays that may span lines.
// We accept the subset that assigns literal values and refuse, with the line number, anything that
// would make bash run or expand something (`$VAR`, `$(...)`, backticks, `;`, pipes), because a
// value that silently differs from what bash would have produced is worse than an error.
// No imports from the relay: vio4wd_core_scheduler reads the same file with this parser.
// Text of the file repeated in a message is cut and escaped (shownValue), so a hostile file
// cannot add lines to the log.
import { shownValue } from './values.js';

export interface ConfigAssignment {
  name: string;
  kind: 'scalar' | 'array';
  /** Scalar: the value. Array: the elements joined with single spaces (what `${X[*]}` gives). */
  value: string;
  /** Scalar: [value]. Array: the elements. */
  values: string[];
  /** 1-based line of the assignment's first character. */
  line: number;
}

export interface ParsedConfigText {
  /** By variable name; a later assignment replaces an earlier one, as in bash. */
  assignments: Map<string, ConfigAssignment>;
  warnings: string[];
}

/** A line that cannot be read. `line` is 1-based. */
export class ConfigSyntaxError extends Error {
  readonly line: number;
  constructor(line: number, message: string, sourceLabel?: string) {
    super(`${sourceLabel ? `${sourceLabel} ` : ''}line ${line}: ${message}`);
    this.name = 'ConfigSyntaxError';
    this.line = line;
  }
}

const NAME_START = /[A-Za-z_]/;
const NAME_CHAR = /[A-Za-z0-9_]/;
/** Characters that end or split a bash word when unquoted; inside a value they would mean something else. */
const SHELL_OPERATORS = new Set([';', '&', '|', '<', '>', '(', ')']);

class Reader {
  pos = 0;
  line = 1;
  constructor(
    readonly text: string,
    readonly label: string | undefined,
  ) {}

  peek(offset = 0): string {
    return this.text[this.pos + offset] ?? '';
  }
  atEnd(): boolean {
    return this.pos >= this.text.length;
  }
  next(): string {
    const c = this.text[this.pos++] ?? '';
    if (c === '\n') this.line++;
    return c;
  }
  fail(message: string, line = this.line): never {
    throw new ConfigSyntaxError(line, message, this.label);
  }
  skipBlanks(): void {
    while (this.peek() === ' ' || this.peek() === '\t' || this.peek() === '\r') this.pos++;
  }
  skipComment(): void {
    while (!this.atEnd() && this.peek() !== '\n') this.pos++;
  }
  /** The rest of the current line, for error messages. */
  restOfLine(from = this.pos): string {
    const end = this.text.indexOf('\n', from);
    return shownValue(this.text.slice(from, end < 0 ? undefined : end).trim(), 40);
  }
  readName(): string {
    let name = '';
    if (!NAME_START.test(this.peek())) return '';
    while (NAME_CHAR.test(this.peek())) name += this.next();
    return name;
  }
}

function describeChar(c: string): string {
  if (c === '') return 'the end of the file';
  if (c === '\n') return 'the end of the line';
  return `'${shownValue(c)}'`;
}

/**
 * Reads one shell word. Returns null when no character belongs to the word (an empty value
 * written as nothing), '' for an explicitly empty one ("" or '').
 */
function readWord(r: Reader, inArray: boolean): string | null {
  let out = '';
  let sawAnything = false;
  for (;;) {
    const c = r.peek();
    if (c === '' || c === ' ' || c === '\t' || c === '\n' || c === '\r') break;
    if (inArray && c === ')') break;
    if (SHELL_OPERATORS.has(c)) {
      r.fail(
        `unquoted '${c}' in a value: the shell would treat it as an operator; put the value in quotes if it is meant literally`,
      );
    }
    sawAnything = true;
    if (c === "'") {
      const opened = r.line;
      r.next();
      while (r.peek() !== "'") {
        if (r.atEnd()) r.fail(`single quote opened on line ${opened} is never closed`, opened);
        out += r.next();
      }
      r.next();
    } else if (c === '"') {
      const opened = r.line;
      r.next();
      while (r.peek() !== '"') {
        if (r.atEnd()) r.fail(`double quote opened on line ${opened} is never closed`, opened);
        const d = r.peek();
        if (d === '\\') {
          const escaped = r.peek(1);
          if (escaped === '\n') {
            r.next();
            r.next();
          } else if (escaped === '"' || escaped === '\\' || escaped === '$' || escaped === '`') {
            r.next();
            out += r.next();
          } else {
            out += r.next();
          }
        } else if (d === '$' || d === '`') {
          refuseExpansion(r);
          out += r.next();
        } else {
          out += r.next();
        }
      }
      r.next();
    } else if (c === '\\') {
      r.next();
      const escaped = r.peek();
      if (escaped === '') r.fail('a backslash ends the file');
      if (escaped === '\n') {
        r.next();
      } else {
        out += r.next();
      }
    } else if (c === '$' || c === '`') {
      refuseExpansion(r);
      out += r.next();
    } else {
      out += r.next();
    }
  }
  return sawAnything ? out : null;
}

/** `$` followed by a name, `{`, `(` or a quote, and any backtick, would be expanded by bash. */
function refuseExpansion(r: Reader): void {
  if (r.peek() === '`') {
    r.fail('command substitution with backticks is not supported; quote the value with single quotes');
  }
  const after = r.peek(1);
  if (/[A-Za-z0-9_{(@*#?!$'"-]/.test(after)) {
    r.fail(
      `'$${after}' would be expanded by the shell and expansions are not supported; write the literal value (in single quotes if it contains '$')`,
    );
  }
}

function expectEndOfStatement(r: Reader, what: string): void {
  r.skipBlanks();
  const c = r.peek();
  if (c === '#') {
    r.skipComment();
    return;
  }
  if (c === '' || c === '\n') return;
  r.fail(`unexpected ${describeChar(c)} after ${what} ("${r.restOfLine()}"); quote values that contain spaces`);
}

function readArray(r: Reader, name: string): string[] {
  const opened = r.line;
  const elements: string[] = [];
  for (;;) {
    while (/[ \t\r\n]/.test(r.peek()) && !r.atEnd()) r.next();
    const c = r.peek();
    if (c === '') r.fail(`array ${name}=( opened on line ${opened} is never closed with ')'`, opened);
    if (c === ')') {
      r.next();
      return elements;
    }
    if (c === '#') {
      r.skipComment();
      continue;
    }
    const startsWithBracket = c === '[';
    const word = readWord(r, true);
    if (word === null) r.fail(`unexpected ${describeChar(r.peek())} in array ${name}`);
    if (startsWithBracket && /^\[[^\]]*\]=/.test(word)) {
      r.fail(`indexed array elements ("${shownValue(word, 40)}") are not supported in ${name}; list the values in order`);
    }
    elements.push(word);
  }
}

/** Parses the text of an /etc/default/virtioforwarder-style file. Throws ConfigSyntaxError on the first unreadable line. */
export function parseConfigText(text: string, sourceLabel?: string): ParsedConfigText {
  const r = new Reader(text, sourceLabel);
  const assignments = new Map<string, ConfigAssignment>();
  const warnings: string[] = [];
  for (;;) {
    r.skipBlanks();
    if (r.atEnd()) break;
    const c = r.peek();
    if (c === '\n') {
      r.next();
      continue;
    }
    if (c === '#') {
      r.skipComment();
      continue;
    }
    const line = r.line;
    const statementStart = r.pos;
    let name = r.readName();
    if (name === 'export' && (r.peek() === ' ' || r.peek() === '\t')) {
      r.skipBlanks();
      name = r.readName();
      if (name === '') r.fail(`expected NAME=VALUE after 'export', found "${r.restOfLine()}"`);
    }
    if (name === '') r.fail(`expected NAME=VALUE, found "${r.restOfLine()}"`);
    const op = r.peek();
    if (op !== '=') {
      if (op === '+' && r.peek(1) === '=') r.fail(`'${name}+=' (append) is not supported; assign the whole value`);
      if (op === ' ' || op === '\t') {
        r.skipBlanks();
        if (r.peek() === '=') r.fail(`spaces are not allowed around '=' in the assignment of ${name}`);
        if (r.peek() === '' || r.peek() === '\n' || r.peek() === '#') {
          r.fail(`'${name}' has no '=' and no value; write ${name}=VALUE`);
        }
      }
      if (op === '' || op === '\n' || op === '#') r.fail(`'${name}' has no '=' and no value; write ${name}=VALUE`);
      r.fail(`expected NAME=VALUE, found "${r.restOfLine(statementStart)}"`);
    }
    r.next();
    let assignment: ConfigAssignment;
    if (r.peek() === '(') {
      r.next();
      const values = readArray(r, name);
      assignment = { name, kind: 'array', value: values.join(' '), values, line };
      expectEndOfStatement(r, `the array ${name}=(...)`);
    } else {
      const value = readWord(r, false) ?? '';
      assignment = { name, kind: 'scalar', value, values: [value], line };
      expectEndOfStatement(r, `the value of ${name}`);
    }
    const previous = assignments.get(name);
    if (previous) {
      warnings.push(
        `${name} is assigned on line ${previous.line} and again on line ${line}; the value on line ${line} is used`,
      );
      assignments.delete(name);
    }
    assignments.set(name, assignment);
  }
  return { assignments, warnings };
}
