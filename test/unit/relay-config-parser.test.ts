import { describe, expect, it } from 'vitest';
import { ConfigSyntaxError, parseConfigText } from '../../relay/config/file.js';

const values = (text: string) => {
  const out: Record<string, string | string[]> = {};
  for (const a of parseConfigText(text).assignments.values()) out[a.name] = a.kind === 'array' ? a.values : a.value;
  return out;
};

function syntaxError(text: string): ConfigSyntaxError {
  try {
    parseConfigText(text, 'test.conf');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigSyntaxError);
    return err as ConfigSyntaxError;
  }
  throw new Error(`no syntax error for ${JSON.stringify(text)}`);
}

describe('config file parser: plain assignments', () => {
  it('reads KEY=VALUE lines, skipping blank lines and full-line comments', () => {
    const text = '# header\n\n   # indented comment\nA=1\nB=two\n\t\nC=\n';
    expect(values(text)).toEqual({ A: '1', B: 'two', C: '' });
  });

  it('records the line of each assignment', () => {
    const parsed = parseConfigText('# c\n\nA=1\nB=2\n');
    expect(parsed.assignments.get('A')?.line).toBe(3);
    expect(parsed.assignments.get('B')?.line).toBe(4);
  });

  it('treats # after whitespace as a comment and # inside a word as text', () => {
    expect(values('A=1 # trailing\nB=a#b\nC=#x\nD= # empty\nE=x\t# tab comment\n')).toEqual({
      A: '1',
      B: 'a#b',
      C: '#x',
      D: '',
      E: 'x',
    });
  });

  it('accepts export in front of an assignment', () => {
    expect(values('export A=1\nexport\tB="x y"\n')).toEqual({ A: '1', B: 'x y' });
  });

  it('keeps a variable literally named export when it is assigned', () => {
    expect(values('export=1\n')).toEqual({ export: '1' });
  });

  it('handles CRLF line endings and a missing final newline', () => {
    expect(values('A=1\r\nB=2\r\nC=3')).toEqual({ A: '1', B: '2', C: '3' });
  });

  it('lets a later assignment win and warns about the earlier one', () => {
    const parsed = parseConfigText('A=1\nB=2\nA=3\n');
    expect(parsed.assignments.get('A')?.value).toBe('3');
    expect(parsed.warnings).toEqual(['A is assigned on line 1 and again on line 3; the value on line 3 is used']);
  });
});

describe('config file parser: quoting', () => {
  it('reads single quotes literally', () => {
    expect(values(`A='a b # not a comment $HOME \\n'\n`)).toEqual({ A: 'a b # not a comment $HOME \\n' });
  });

  it('reads double quotes with the escapes bash knows', () => {
    expect(values('A="say \\"hi\\" \\\\ \\$ \\` \\x"\n')).toEqual({ A: 'say "hi" \\ $ ` \\x' });
  });

  it('joins adjacent quoted and unquoted parts into one word', () => {
    expect(values(`A=ab"c d"'e f'g\n`)).toEqual({ A: 'abc de fg' });
  });

  it('distinguishes an explicitly empty value from a blank one only by kind, both are empty', () => {
    expect(values(`A=""\nB=''\nC=\n`)).toEqual({ A: '', B: '', C: '' });
  });

  it('lets quoted values span lines and keeps line numbers right afterwards', () => {
    const parsed = parseConfigText('A="one\ntwo"\nB=3\n');
    expect(parsed.assignments.get('A')?.value).toBe('one\ntwo');
    expect(parsed.assignments.get('B')?.line).toBe(3);
  });

  it('joins lines ended by a backslash', () => {
    expect(values('A=abc\\\ndef\nB="x\\\ny"\n')).toEqual({ A: 'abcdef', B: 'xy' });
  });

  it('takes an unquoted backslash as an escape of the next character', () => {
    expect(values('A=a\\ b\\#c\n')).toEqual({ A: 'a b#c' });
  });

  it('keeps a lone $ at the end of a word', () => {
    expect(values('A=cost$\n')).toEqual({ A: 'cost$' });
  });
});

describe('config file parser: bash arrays', () => {
  it('reads the three STATIC_VFS forms', () => {
    expect(values('X=0000:05:08.1=1\n')).toEqual({ X: '0000:05:08.1=1' });
    expect(values('X=(0000:05:08.1=1)\n')).toEqual({ X: ['0000:05:08.1=1'] });
    expect(values('X=(0000:05:08.1=1              0000:05:08.2=2\n   0000:05:08.3=3)\n')).toEqual({
      X: ['0000:05:08.1=1', '0000:05:08.2=2', '0000:05:08.3=3'],
    });
  });

  it('distinguishes a one-element array from a scalar', () => {
    const parsed = parseConfigText('A=(x)\nB=x\n');
    expect(parsed.assignments.get('A')?.kind).toBe('array');
    expect(parsed.assignments.get('B')?.kind).toBe('scalar');
  });

  it('reads arrays spanning lines with comments, quotes and empty arrays', () => {
    const text = [
      'PINS=(',
      '  # relay one',
      '  "1:1,2"   # trailing comment',
      "  '2:3'",
      '  3:4#x',
      ')  # after',
      'EMPTY=()',
      'B=after',
    ].join('\n');
    const parsed = parseConfigText(text);
    expect(parsed.assignments.get('PINS')?.values).toEqual(['1:1,2', '2:3', '3:4#x']);
    expect(parsed.assignments.get('PINS')?.line).toBe(1);
    expect(parsed.assignments.get('EMPTY')?.values).toEqual([]);
    expect(parsed.assignments.get('B')?.line).toBe(8);
  });

  it('gives the array value as the elements joined by spaces', () => {
    expect(parseConfigText('A=(a  b\tc)\n').assignments.get('A')?.value).toBe('a b c');
  });

  it('accepts export of an array', () => {
    expect(values('export A=(1 2)\n')).toEqual({ A: ['1', '2'] });
  });
});

describe('config file parser: malformed lines name their line', () => {
  it.each([
    ['A=1\nnot an assignment\n', 2, /expected NAME=VALUE, found "not an assignment"/],
    ['A=1\nB = 2\n', 2, /spaces are not allowed around '=' in the assignment of B/],
    ['\n\nB\n', 3, /'B' has no '=' and no value/],
    ['A=1\n=2\n', 2, /expected NAME=VALUE, found "=2"/],
    ['1A=2\n', 1, /expected NAME=VALUE/],
    ['A=one two\n', 1, /unexpected 't' after the value of A \("two"\)/],
    ['A=1\nB="open\n\nC=3\n', 2, /double quote opened on line 2 is never closed/],
    ["A='open\n", 1, /single quote opened on line 1 is never closed/],
    ['A=1\nX=(a b\n c\n', 2, /array X=\( opened on line 2 is never closed/],
    ['A=$HOME\n', 1, /'\$H' would be expanded by the shell/],
    ['A="${X}"\n', 1, /'\$\{' would be expanded/],
    ['\nA=$(ls)\n', 2, /'\$\(' would be expanded/],
    ['A=`ls`\n', 1, /command substitution with backticks is not supported/],
    ['A=1;B=2\n', 1, /unquoted ';' in a value/],
    ['A=a|b\n', 1, /unquoted '\|' in a value/],
    ['A=a)\n', 1, /unquoted '\)' in a value/],
    ['X=(a (b))\n', 1, /unquoted '\(' in a value/],
    ['X=(a b) c\n', 1, /unexpected 'c' after the array X=\(\.\.\.\)/],
    ['X=([0]=a)\n', 1, /indexed array elements \("\[0\]=a"\) are not supported/],
    ['A+=1\n', 1, /'A\+=' \(append\) is not supported/],
    ['export\n', 1, /'export' has no '=' and no value/],
    ['export 1=2\n', 1, /expected NAME=VALUE after 'export'/],
    ['A=x\\', 1, /a backslash ends the file/],
  ])('%j fails on line %i', (text, line, message) => {
    const err = syntaxError(text);
    expect(err.line).toBe(line);
    expect(err.message).toMatch(message);
    expect(err.message).toContain(`test.conf line ${line}:`);
  });
});
