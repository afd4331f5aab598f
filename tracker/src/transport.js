// Delivering bodies to ingest: in order, one at a time per endpoint, retried with
// exponential backoff on network errors, 429 and 5xx (honouring Retry-After). A retry sends
// the same events (same uuids) or the same chunk (same seq), which ingest stores once.
// When the page is hidden, whatever is still waiting goes out through sendBeacon.

const MAX_ATTEMPTS = 8;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 60000;
// Browsers cap the bodies of keepalive fetches and beacons in flight at 64 KiB in total;
// staying under it leaves room for the other endpoint's queue.
export const KEEPALIVE_BUDGET_BYTES = 60000;

const encoder = new TextEncoder();
let keepaliveBytesInFlight = 0;

function retryAfterMs(response, attempt) {
  const header = response && response.headers.get('Retry-After');
  if (header) {
    const seconds = Number(header);
    // Up to half as long again at random: pages refused together do not all return together.
    if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000) * (1 + Math.random() / 2);
    const date = Date.parse(header);
    if (!Number.isNaN(date)) return Math.max(0, date - Date.now()) * (1 + Math.random() / 2);
  }
  const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  // Jitter keeps many pages that failed together from retrying together.
  return backoff / 2 + Math.random() * (backoff / 2);
}

function isRetryable(status) {
  return status === 408 || status === 429 || status >= 500;
}

// A delivery: { text(): string, body(): Promise<{bytes, gzip}> }. text() is the uncompressed
// JSON (what a beacon sends); body() what a normal request sends.
export function createQueue(url) {
  const waiting = [];
  let pumping = false;
  let wakeTimer = null;

  function add(delivery) {
    waiting.push({ ...delivery, attempt: 0, notBefore: 0, inFlight: false, keepalive: false });
    pump();
  }

  async function pump() {
    if (pumping) return;
    pumping = true;
    try {
      while (waiting.length > 0) {
        const delivery = waiting[0];
        const waitMs = delivery.notBefore - Date.now();
        if (waitMs > 0) {
          clearTimeout(wakeTimer);
          wakeTimer = setTimeout(pump, waitMs);
          return;
        }
        const retryInMs = await attempt(delivery);
        if (retryInMs !== null && delivery.attempt + 1 < MAX_ATTEMPTS && waiting.includes(delivery)) {
          delivery.attempt += 1;
          delivery.notBefore = Date.now() + retryInMs;
        } else {
          remove(delivery);
        }
      }
    } finally {
      pumping = false;
    }
  }

  function remove(delivery) {
    const index = waiting.indexOf(delivery);
    if (index >= 0) waiting.splice(index, 1);
  }

  // Resolves to null when done (stored, or refused for good), or to the ms to wait before retrying.
  async function attempt(delivery) {
    const { bytes, gzip } = await delivery.body();
    // Handed to sendBeacon while its body was being compressed: already on its way.
    if (!waiting.includes(delivery)) return null;
    // A keepalive request outlives the page, so a chunk in flight at unload is not lost.
    const keepalive = keepaliveBytesInFlight + bytes.byteLength <= KEEPALIVE_BUDGET_BYTES;
    if (keepalive) keepaliveBytesInFlight += bytes.byteLength;
    delivery.inFlight = true;
    delivery.keepalive = keepalive;
    let response;
    try {
      // text/plain without Content-Encoding is a "simple" request: no CORS preflight.
      // Content-Encoding makes the browser ask first, which ingest allows for its projects' sites.
      const headers = gzip
        ? { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' }
        : { 'Content-Type': 'text/plain' };
      response = await fetch(url, { method: 'POST', body: bytes, headers, keepalive, credentials: 'omit' });
    } catch {
      return retryAfterMs(null, delivery.attempt);
    } finally {
      delivery.inFlight = false;
      if (keepalive) keepaliveBytesInFlight -= bytes.byteLength;
    }
    if (response.ok) return null;
    if (isRetryable(response.status)) return retryAfterMs(response, delivery.attempt);
    console.warn(`sightline: ${url} refused a batch (${response.status}); it is dropped`);
    return null;
  }

  // The page may be going away: hand every waiting body to sendBeacon, which the browser
  // delivers after unload. A keepalive request in flight survives by itself; any other may be
  // cancelled, so it is beaconed too (a duplicate is stored once). If the page stays, queued
  // bodies that were beaconed are not sent again.
  function flushWithBeacon() {
    for (const delivery of [...waiting]) {
      if (delivery.inFlight && delivery.keepalive) continue;
      const text = delivery.text();
      if (encoder.encode(text).byteLength > KEEPALIVE_BUDGET_BYTES) continue;
      if (navigator.sendBeacon && navigator.sendBeacon(url, text) && !delivery.inFlight) remove(delivery);
    }
  }

  return { add, flushWithBeacon };
}
