// Session recording with rrweb: events are buffered and sent as one chunk every 5 s,
// gzip-compressed when the browser has CompressionStream. Each chunk takes the session's
// next seq, so ingest can tell a retry (same seq) from a new chunk.

import { record } from '@rrweb/record';

export const CHUNK_INTERVAL_MS = 5000;
// Under the beacon limit (64 KiB) with room for the chunk's envelope and non-ASCII text.
const BEACON_PIECE_CHARS = 40000;
const INCREMENTAL_SNAPSHOT = 3;
// rrweb incremental sources that are the visitor's doing (not page mutations): mouse
// move, mouse interaction, scroll, input, touch move, drag.
const USER_SOURCES = new Set([1, 2, 3, 5, 6, 12]);

async function gzip(text) {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const canCompress = typeof CompressionStream === 'function';
const encoder = new TextEncoder();

export function startReplay({ projectKey, identity, queue, maskAllInputs }) {
  let buffer = [];
  let bufferSessionId = identity.sessionId();

  function send(sessionId, events) {
    const seq = identity.nextSeq(sessionId);
    if (seq === null) return; // the session ended in another tab after this chunk was cut
    const text = JSON.stringify({ projectKey, sessionId, distinctId: identity.distinctId, seq, events });
    // Compressed once: a retry sends the very same bytes.
    let compressed = null;
    queue.add({
      text: () => text,
      body: () => {
        if (!canCompress) return Promise.resolve({ bytes: encoder.encode(text), gzip: false });
        compressed = compressed || gzip(text).then((bytes) => ({ bytes, gzip: true }));
        return compressed;
      },
    });
  }

  // forBeacon: the page may be unloading, so the chunk is cut into pieces a beacon can carry.
  function flush(forBeacon = false) {
    if (buffer.length === 0) return;
    const events = buffer;
    buffer = [];
    if (!forBeacon) {
      send(bufferSessionId, events);
      return;
    }
    let piece = [];
    let pieceBytes = 0;
    for (const event of events) {
      const eventBytes = JSON.stringify(event).length;
      if (piece.length > 0 && pieceBytes + eventBytes > BEACON_PIECE_CHARS) {
        send(bufferSessionId, piece);
        piece = [];
        pieceBytes = 0;
      }
      piece.push(event);
      pieceBytes += eventBytes;
    }
    send(bufferSessionId, piece);
  }

  // When a session ends (30 min idle), its last events go out under it, and the new session
  // starts with a full snapshot of its own so a player can show it from its first chunk.
  identity.onSessionEnd(() => {
    flush();
    setTimeout(() => record.takeFullSnapshot(true), 0);
  });

  record({
    emit(event) {
      if (event.type === INCREMENTAL_SNAPSHOT && USER_SOURCES.has(event.data.source)) identity.touch();
      bufferSessionId = identity.sessionId();
      buffer.push(event);
    },
    maskAllInputs,
  });
  setInterval(() => flush(), CHUNK_INTERVAL_MS);

  return { flush };
}
