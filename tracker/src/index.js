// Sightline's browser tracker, served by ingest at /tracker.js:
//   <script src="https://ingest.example.com/tracker.js" data-project-key="pk_..." defer></script>
// Pageviews (on load and on history-API navigation), custom events through
// sightline.track(name, props), and an rrweb recording of the session.
// Options (data- attributes on the script tag):
//   data-project-key       the project's public key (required)
//   data-respect-dnt       present: send nothing when the browser asks not to be tracked
//   data-replay="false"    no session recording
//   data-mask-all-inputs="false"  record what visitors type (masked by default)

import { createIdentity, randomId } from './identity.js';
import { startReplay } from './replay.js';
import { createQueue } from './transport.js';

// Events wait this long for company, so a pageview and the event right after it share a request.
const EVENT_BATCH_DELAY_MS = 1000;
// Ingest's limits; longer values are cut here rather than losing the whole batch to a 422.
const MAX_URL = 2048;
const MAX_TITLE = 1000;
const MAX_NAME = 200;
const MAX_PROPERTIES = 50;
const MAX_PROPERTY_VALUE = 1000;
// Well under ingest's 500, and small enough for a beacon when the page is left.
const MAX_EVENTS_PER_BATCH = 50;

function flag(script, name, fallback) {
  const value = script.getAttribute(`data-${name}`);
  if (value === null) return fallback;
  return value !== 'false';
}

function doNotTrack() {
  return navigator.doNotTrack === '1' || window.doNotTrack === '1';
}

function cut(value, length) {
  return typeof value === 'string' && value.length > length ? value.slice(0, length) : value;
}

// Ingest accepts flat properties with scalar values; anything else is dropped with a warning
// instead of making ingest refuse the batch (and the pageview in it).
function cleanProperties(properties) {
  const clean = {};
  if (properties === null || typeof properties !== 'object') return clean;
  for (const [key, value] of Object.entries(properties).slice(0, MAX_PROPERTIES)) {
    if (value === null || ['string', 'number', 'boolean'].includes(typeof value)) {
      clean[cut(key, MAX_NAME)] = cut(value, MAX_PROPERTY_VALUE);
    } else {
      console.warn(`sightline: property ${key} is not a string, number, boolean or null; it is dropped`);
    }
  }
  return clean;
}

function pageUrl() {
  return location.href.split('#')[0];
}

function start(script) {
  if (!script) {
    console.warn('sightline: load tracker.js with a classic <script src> tag (not a module)');
    return null;
  }
  const projectKey = script.getAttribute('data-project-key');
  if (!projectKey) {
    console.warn('sightline: the script tag has no data-project-key; nothing is tracked');
    return null;
  }
  if (flag(script, 'respect-dnt', false) && doNotTrack()) return null;

  // Ingest is wherever this script came from.
  const ingest = new URL(script.src).origin;
  const identity = createIdentity();
  // The key in the URL too (sendBeacon can carry nothing else): ingest checks it before it
  // reads or decompresses the body, so a page of an unknown or throttled project costs little.
  const keyParameter = `?key=${encodeURIComponent(projectKey)}`;
  const eventQueue = createQueue(`${ingest}/v1/events${keyParameter}`);
  const replayQueue = createQueue(`${ingest}/v1/replay${keyParameter}`);

  let pending = [];
  let batchTimer = null;

  function flushEvents() {
    clearTimeout(batchTimer);
    batchTimer = null;
    if (pending.length === 0) return;
    const events = pending.splice(0, MAX_EVENTS_PER_BATCH);
    if (pending.length > 0) batchTimer = setTimeout(flushEvents, 0);
    // sentAt is set per attempt: ingest corrects the client's clock by its difference from
    // the receive time, so a retry must say when it was really sent. The events keep their uuids.
    const text = () => JSON.stringify({ projectKey, sentAt: new Date().toISOString(), events });
    eventQueue.add({ text, body: async () => ({ bytes: new TextEncoder().encode(text()), gzip: false }) });
  }

  function capture(name, properties, referrer, url = pageUrl()) {
    pending.push({
      event: cut(name, MAX_NAME),
      distinctId: identity.distinctId,
      sessionId: identity.touch(),
      timestamp: new Date().toISOString(),
      url: cut(url, MAX_URL),
      referrer: cut(referrer, MAX_URL) || undefined,
      title: cut(document.title, MAX_TITLE) || undefined,
      properties: cleanProperties(properties),
      uuid: randomId(),
    });
    if (batchTimer === null) batchTimer = setTimeout(flushEvents, EVENT_BATCH_DELAY_MS);
  }

  let lastPageUrl = pageUrl();
  capture('pageview', {}, document.referrer);

  // Single-page navigation: a new pageview when the URL (not only its #fragment) changes;
  // the page navigated from is its referrer.
  function onNavigation() {
    const url = pageUrl();
    if (url === lastPageUrl) return;
    const referrer = lastPageUrl;
    lastPageUrl = url;
    // Routers usually set the new title right after pushState: read it a moment later.
    setTimeout(() => capture('pageview', {}, referrer, url), 0);
  }
  for (const method of ['pushState', 'replaceState']) {
    const original = history[method];
    history[method] = function (...args) {
      const result = original.apply(this, args);
      onNavigation();
      return result;
    };
  }
  window.addEventListener('popstate', onNavigation);
  // Back/forward cache: the page is shown again without loading, which is a new view.
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) capture('pageview', {}, document.referrer);
  });

  const replay = flag(script, 'replay', true)
    ? startReplay({ projectKey, identity, queue: replayQueue, maskAllInputs: flag(script, 'mask-all-inputs', true) })
    : null;

  // pagehide is the last reliable moment on desktop, visibilitychange (hidden) on mobile,
  // where a hidden page may be killed without pagehide.
  function onHide() {
    while (pending.length > 0) flushEvents();
    if (replay) replay.flush(true);
    eventQueue.flushWithBeacon();
    replayQueue.flushWithBeacon();
  }
  window.addEventListener('pagehide', onHide);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') onHide();
  });

  return {
    track(name, properties) {
      if (typeof name !== 'string' || name === '') {
        console.warn('sightline.track needs an event name');
        return;
      }
      capture(name, properties, undefined);
    },
  };
}

// Calls made before this script ran (window.sightline = {q: [[name, props], ...]}) are replayed.
const earlyCalls = (window.sightline && window.sightline.q) || [];
const tracker = start(document.currentScript);
window.sightline = tracker || { track() {} };
for (const [name, properties] of earlyCalls) window.sightline.track(name, properties);
