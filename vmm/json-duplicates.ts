// JSON.parse keeps the last of two equal keys and says nothing, so `"vcpu_count": 2, ...,
// "vcpu_count": 8` would quietly configure 8. This scan finds the first repeated key, with its
// path, before the text is parsed; syntax errors are left to JSON.parse.

interface Frame {
  kind: 'object' | 'array';
  keys: Set<string>;
  /** The key (object) or index (array) of the value being read, for the path. */
  at: string | number;
  expectKey: boolean;
}

/** The path of the first key that appears twice in one object (`machine-config.vcpu_count`), or null. */
export function findDuplicateKey(text: string): string | null {
  const stack: Frame[] = [];
  const path = () =>
    stack
      .map((f, i) => (f.kind === 'array' ? `[${f.at}]` : `${i > 0 ? '.' : ''}${f.at}`))
      .join('');
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    const top = stack[stack.length - 1];
    if (ch === '"') {
      const start = i;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      if (top?.kind === 'object' && top.expectKey) {
        let key: string;
        try {
          key = JSON.parse(text.slice(start, i + 1)) as string;
        } catch {
          return null; // malformed: JSON.parse will report it
        }
        if (top.keys.has(key)) {
          top.at = key;
          return path();
        }
        top.keys.add(key);
        top.at = key;
        top.expectKey = false;
      }
    } else if (ch === '{') {
      stack.push({ kind: 'object', keys: new Set(), at: '', expectKey: true });
    } else if (ch === '[') {
      stack.push({ kind: 'array', keys: new Set(), at: 0, expectKey: false });
    } else if (ch === '}' || ch === ']') {
      stack.pop();
    } else if (ch === ',' && top) {
      if (top.kind === 'object') top.expectKey = true;
      else top.at = (top.at as number) + 1;
    }
  }
  return null;
}
