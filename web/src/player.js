// The replay player page: the project's recorded sessions with filters, and rrweb-player.
import rrwebPlayer from 'rrweb-player';
import 'rrweb-player/dist/style.css';
import './player.css';
import { FRAMES_MEDIA_TYPE, recordingChunks } from './frames.js';
import { apiFetch, apiJson, element, setUpKey, showError } from './key.js';

// Filters the page takes from its own query string (the dashboard links here with them).
// Never a key: the key is entered on this page, once per tab.
const URL_FILTERS = ['dateFrom', 'dateTo', 'distinctId', 'urlContains', 'country', 'browser', 'device'];
const PAGE_SIZE = 50;
// rrweb's event types.
const FULL_SNAPSHOT = 2;
const META = 4;

const state = { nextCursor: null, player: null, session: null, loading: 0 };

const $ = (id) => document.getElementById(id);

function filterParams() {
  const form = $('filters');
  const params = new URLSearchParams();
  for (const name of URL_FILTERS) {
    const value = form.elements[name].value.trim();
    if (!value) continue;
    // Date inputs give a day; the API takes ISO 8601 (a day is midnight UTC).
    params.set(name, value);
  }
  const minimumSeconds = form.elements.minDurationS.value.trim();
  if (minimumSeconds) params.set('minDurationMs', String(Math.round(Number(minimumSeconds) * 1000)));
  return params;
}

function formatDuration(ms) {
  const seconds = Math.round(ms / 1000);
  const minutes = Math.floor(seconds / 60);
  return minutes ? `${minutes} min ${seconds % 60} s` : `${seconds} s`;
}

function sessionRow(session) {
  const play = element('button', { type: 'button', className: 'play', 'data-session-id': session.id }, 'Play');
  play.addEventListener('click', () => openSession(session.id, 0));
  return element(
    'tr',
    { 'data-session-id': session.id },
    element('td', {}, new Date(session.startedAt).toLocaleString()),
    element('td', {}, formatDuration(session.durationMs)),
    element('td', { className: 'url' }, session.firstUrl || ''),
    element('td', {}, session.pageCount),
    element('td', {}, session.clickCount),
    element('td', {}, [session.country, session.browser, session.deviceType].filter(Boolean).join(' \u00b7 ')),
    element('td', {}, play),
  );
}

async function loadSessions(reset) {
  const status = $('sessions-status');
  status.textContent = 'Loading\u2026';
  const params = filterParams();
  params.set('limit', String(PAGE_SIZE));
  if (!reset && state.nextCursor) params.set('cursor', state.nextCursor);
  try {
    const page = await apiJson(`/v1/sessions?${params}`);
    const body = $('sessions-body');
    if (reset) body.replaceChildren();
    for (const session of page.sessions) body.append(sessionRow(session));
    state.nextCursor = page.nextCursor;
    $('load-more').hidden = !page.nextCursor;
    status.textContent = body.children.length ? `${body.children.length} sessions shown` : 'No sessions match.';
  } catch (error) {
    showError(status, error);
  }
}

function destroyPlayer() {
  if (state.player) {
    state.player.getReplayer().pause();
    state.player.$destroy();
    state.player = null;
  }
  $('player').replaceChildren();
}

// Streams the recording from the first full snapshot at or before fromMs (the API's `from`;
// toMs, when given, is its `to`: the last chunk streamed is the last one beginning by then)
// and starts playing as soon as the first chunk is in; later chunks are added to the
// running player. Loading from another second asks the API again with a new window.
async function openSession(sessionId, fromMs, toMs = null) {
  const loading = ++state.loading;
  const status = $('player-status');
  destroyPlayer();
  $('player-section').hidden = false;
  status.textContent = 'Loading the recording\u2026';
  try {
    const detail = await apiJson(`/v1/sessions/${encodeURIComponent(sessionId)}`);
    if (loading !== state.loading) return;
    state.session = detail.session;
    $('player-title').textContent = detail.session.firstUrl || detail.session.id;
    $('player-meta').textContent =
      `${new Date(detail.session.startedAt).toLocaleString()} \u00b7 ${formatDuration(detail.session.durationMs)}` +
      ` \u00b7 ${detail.session.pageCount} pages \u00b7 ${detail.chunks.length} chunks`;
    const seek = $('seek-seconds');
    seek.max = String(Math.ceil(detail.session.durationMs / 1000));
    seek.value = String(Math.floor(fromMs / 1000));
    $('until-seconds').value = toMs === null ? '' : String(Math.floor(toMs / 1000));

    const params = new URLSearchParams();
    if (fromMs > 0) params.set('from', String(fromMs));
    if (toMs !== null) params.set('to', String(toMs));
    const response = await apiFetch(`/v1/sessions/${encodeURIComponent(sessionId)}/recording?${params}`, {
      headers: { Accept: FRAMES_MEDIA_TYPE },
    });
    // Where the first streamed chunk begins, in ms after the session's start.
    const startOffsetMs = Number(response.headers.get('X-Replay-Start-Offset-Ms') || '0');
    const pending = [];
    let events = 0;
    for await (const chunk of recordingChunks(response)) {
      if (loading !== state.loading) return;
      events += chunk.events.length;
      if (state.player) {
        for (const event of chunk.events) state.player.addEvent(event);
      } else {
        pending.push(...chunk.events);
        // rrweb needs the meta event and the full snapshot before it can draw anything. A
        // chunk found by `from` may begin with the previous page's last events: they would
        // refer to nodes the player never saw, so playback starts at the meta event.
        const meta = pending.findIndex((event) => event.type === META);
        if (meta >= 0 && pending.slice(meta).some((event) => event.type === FULL_SNAPSHOT)) {
          const events = pending.slice(meta);
          const sessionStartMs = Date.parse(detail.session.startedAt);
          startPlayer(events, Math.max(0, sessionStartMs + fromMs - events[0].timestamp));
        }
      }
      status.textContent = `Playing; ${events} events loaded`;
    }
    if (!state.player) status.textContent = 'This recording has no playable events.';
    else status.textContent = `Loaded: ${events} events from ${formatDuration(startOffsetMs)} on.`;
  } catch (error) {
    showError(status, error);
  }
}

function startPlayer(events, offsetMs) {
  const container = $('player');
  const width = Math.max(320, container.clientWidth - 20);
  state.player = new rrwebPlayer({
    target: container,
    props: { events, width, height: Math.round(width * 0.56), autoPlay: true, showWarning: false },
  });
  if (offsetMs > 0) state.player.goto(offsetMs, true);
}

function prefillFilters() {
  const query = new URLSearchParams(window.location.search);
  const form = $('filters');
  for (const name of URL_FILTERS) if (query.has(name)) form.elements[name].value = query.get(name);
}

function start() {
  loadSessions(true);
  const session = new URLSearchParams(window.location.search).get('session');
  if (session) openSession(session, 0);
}

document.addEventListener('DOMContentLoaded', () => {
  prefillFilters();
  $('filters').addEventListener('submit', (event) => {
    event.preventDefault();
    loadSessions(true);
  });
  $('load-more').addEventListener('click', () => loadSessions(false));
  $('seek-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (!state.session) return;
    const until = $('until-seconds').value.trim();
    const fromMs = Math.round(Number($('seek-seconds').value || '0') * 1000);
    openSession(state.session.id, fromMs, until ? Math.round(Number(until) * 1000) : null);
  });
  setUpKey(start);
});
