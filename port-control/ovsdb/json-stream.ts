// RFC 7047 puts JSON-RPC messages back to back on the stream with no delimiter, so messages are
// cut out by tracking brace depth outside of strings.

/** Upper bound on one message; a peer that exceeds it is broken or hostile. */
export const MAX_JSON_MESSAGE_BYTES = 64 * 1024 * 1024;

export class JsonStreamSplitter {
  private chunks: string[] = [];
  private buffered = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  /** Feeds text; returns every complete top-level JSON value (as parsed objects). */
  push(text: string): unknown[] {
    const out: unknown[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const ch = text.charCodeAt(i);
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === 0x5c /* \ */) this.escaped = true;
        else if (ch === 0x22 /* " */) this.inString = false;
        continue;
      }
      if (ch === 0x22) {
        this.inString = true;
      } else if (ch === 0x7b /* { */ || ch === 0x5b /* [ */) {
        this.depth++;
      } else if (ch === 0x7d /* } */ || ch === 0x5d /* ] */) {
        this.depth--;
        if (this.depth < 0) throw new Error('JSON stream: closing bracket without an opening one');
        if (this.depth === 0) {
          this.chunks.push(text.slice(start, i + 1));
          const message = this.chunks.join('');
          this.chunks = [];
          this.buffered = 0;
          start = i + 1;
          out.push(JSON.parse(message));
        }
      } else if (this.depth === 0 && !(ch === 0x20 || ch === 0x0a || ch === 0x0d || ch === 0x09)) {
        throw new Error(`JSON stream: unexpected ${JSON.stringify(text[i])} between messages`);
      }
    }
    const rest = text.slice(start);
    if (rest.length > 0 && this.depth > 0) {
      this.chunks.push(rest);
      this.buffered += rest.length;
      if (this.buffered > MAX_JSON_MESSAGE_BYTES) throw new Error(`JSON stream: a message is larger than ${MAX_JSON_MESSAGE_BYTES} bytes`);
    }
    return out;
  }
}
