// Who is visiting and which session they are in, kept in localStorage so they survive
// full page loads. A session ends after 30 minutes without activity; the next activity
// starts a new one. Replay chunk numbers (seq) are counted per session in the same record,
// so a full page load continues the session's sequence instead of starting again at 0.

const DISTINCT_ID_KEY = 'sightline_distinct_id';
const SESSION_KEY = 'sightline_session';
export const SESSION_IDLE_MS = 30 * 60 * 1000;
// Writing localStorage on every mouse move would be wasteful; activity is recorded at most
// this often, which is far below the idle limit.
const ACTIVITY_WRITE_INTERVAL_MS = 5000;

export function randomId() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  // crypto.randomUUID exists only in secure contexts (https or localhost); plain-http sites
  // still have getRandomValues, enough for a version 4 UUID.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function openStorage() {
  // localStorage can be missing or throw (sandboxed frames, storage disabled); the tracker
  // then keeps its state for the life of the page only.
  try {
    const probe = '__sightline_probe';
    window.localStorage.setItem(probe, probe);
    window.localStorage.removeItem(probe);
    return window.localStorage;
  } catch {
    const values = new Map();
    return {
      getItem: (key) => (values.has(key) ? values.get(key) : null),
      setItem: (key, value) => values.set(key, String(value)),
    };
  }
}

export function createIdentity() {
  const storage = openStorage();
  const rotationListeners = [];

  let distinctId = storage.getItem(DISTINCT_ID_KEY);
  if (!distinctId) {
    distinctId = randomId();
    storage.setItem(DISTINCT_ID_KEY, distinctId);
  }

  function load() {
    try {
      const session = JSON.parse(storage.getItem(SESSION_KEY));
      if (session && typeof session.id === 'string' && Number.isInteger(session.nextSeq)) return session;
    } catch {
      // A damaged record is replaced below.
    }
    return null;
  }

  function save(session) {
    storage.setItem(SESSION_KEY, JSON.stringify(session));
  }

  function startSession(now) {
    const session = { id: randomId(), nextSeq: 0, lastActivity: now };
    save(session);
    return session;
  }

  let session = load();
  if (!session || Date.now() - session.lastActivity > SESSION_IDLE_MS) session = startSession(Date.now());

  // Called on user activity and tracked events; returns the session the activity belongs to.
  function touch() {
    const now = Date.now();
    // Another tab may have moved the session on: the stored record wins.
    const stored = load();
    if (stored) session = stored;
    if (now - session.lastActivity > SESSION_IDLE_MS) {
      const ended = session;
      for (const listener of rotationListeners) listener(ended);
      session = startSession(now);
    } else if (now - session.lastActivity > ACTIVITY_WRITE_INTERVAL_MS) {
      session.lastActivity = now;
      save(session);
    }
    return session.id;
  }

  function nextSeq(sessionId) {
    const stored = load();
    if (stored) session = stored;
    if (session.id !== sessionId) return null;
    const seq = session.nextSeq;
    session.nextSeq = seq + 1;
    save(session);
    return seq;
  }

  return {
    distinctId,
    sessionId: () => session.id,
    touch,
    nextSeq,
    // The listener runs while the ending session is still current, so it can still number
    // that session's last chunk.
    onSessionEnd: (listener) => rotationListeners.push(listener),
  };
}
