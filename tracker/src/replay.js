// Session recording with rrweb: events are buffered and sent as one chunk every 5 s,
// gzip-compressed when the browser has CompressionStream. Each chunk takes the session's
// next seq, so ingest can tell a retry (same seq) from a new chunk.

import { record } from '@rrweb/record';

export const CHUNK_INTERVAL_MS = 5000;
// Under the beacon limit (64 KiB) with room for the chunk's envelope and non-ASCII text.
const BEACON_PIECE_CHARS = 40000;
// A chunk sent by fetch stays under ingest's 4 MiB body limit even uncompressed and all
// three-byte characters.
const PIECE_CHARS = 1000000;
// Ingest refuses a chunk of over 5,000 rrweb events (MAX_RRWEB_EVENTS_PER_CHUNK, 422): a page
// that emits more than this in 5 s (an animation, a big list rendered item by item) sends its
// events as several chunks, each with its own seq, rather than lose them all.
const PIECE_EVENTS = 1000;
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

  // The buffer goes out as chunks of at most PIECE_EVENTS events and maxChars characters, in
  // order. forBeacon: the page may be unloading, so the pieces must fit in a beacon.
  function flush(forBeacon = false) {
    if (buffer.length === 0) return;
    const events = buffer;
    buffer = [];
    const maxChars = forBeacon ? BEACON_PIECE_CHARS : PIECE_CHARS;
    let piece = [];
    let pieceChars = 0;
    for (const event of events) {
      const eventChars = JSON.stringify(event).length;
      if (piece.length > 0 && (pieceChars + eventChars > maxChars || piece.length === PIECE_EVENTS)) {
        send(bufferSessionId, piece);
        piece = [];
        pieceChars = 0;
      }
      piece.push(event);
      pieceChars += eventChars;
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
