// The replay player page: the project's recorded sessions with filters, and rrweb-player
// beside the session's pages, clicks and metadata.
import rrwebPlayer from 'rrweb-player';
import 'rrweb-player/dist/style.css';
import './player.css';
import { FRAMES_MEDIA_TYPE, recordingChunks } from './frames.js';
import { ApiFailure, Unauthorised, apiFetch, apiJson, element, setUpKey, showError } from './key.js';

// Filters the page takes from its own query string (the dashboard links here with them) and
// keeps there, with the open session, so a reload or a shared link shows the same view.
// Never a key: the key is entered on this page, once per tab.
const URL_FILTERS = [
  'dateFrom',
  'dateTo',
  'distinctId',
  'urlContains',
  'page',
  'referrer',
  'utmSource',
  'utmMedium',
  'utmCampaign',
  'country',
  'browser',
  'os',
  'device',
  'bots',
];
const PAGE_SIZE = 50;
// rrweb's event types and sources.
const FULL_SNAPSHOT = 2;
const INCREMENTAL = 3;
const META = 4;
const CUSTOM = 5;
const MOUSE_INTERACTION = 2;
const CLICK = 2;
// Three clicks within this long of each other, close together, are a rage click.
const RAGE_WINDOW_MS = 1000;
const RAGE_DISTANCE_PX = 40;
const MAX_ACTIVITY = 500;

const state = { nextCursor: null, player: null, session: null, openId: null, loading: 0, listing: 0, activity: null };

const $ = (id) => document.getElementById(id);

const plural = (count, one, many = `${one}s`) => `${count.toLocaleString('en-US')} ${count === 1 ? one : many}`;

function filterParams() {
  const form = $('filters');
  const params = new URLSearchParams();
  for (const name of URL_FILTERS) {
    const input = form.elements[name];
    const value = input.type === 'checkbox' ? (input.checked ? input.value : '') : input.value.trim();
    if (value) params.set(name, value);
  }
  const minimumSeconds = form.elements.minDurationS.value.trim();
  if (minimumSeconds) params.set('minDurationMs', String(Math.round(Number(minimumSeconds) * 1000)));
  return params;
}

function writeUrl() {
  const params = filterParams();
  if (state.openId) params.set('session', state.openId);
  const search = params.toString();
  history.replaceState(null, '', search ? `?${search}` : window.location.pathname);
  drawDashboardLink();
}

// Back to the dashboard (its URL is written into the page by the replay service), filtered
// the same way where the dashboard has the same filter.
const DASHBOARD_FILTERS = {
  page: 'page',
  referrer: 'referrer',
  utmSource: 'utm_source',
  utmMedium: 'utm_medium',
  utmCampaign: 'utm_campaign',
  country: 'country',
  browser: 'browser',
  os: 'os',
  device: 'device',
};

function drawDashboardLink() {
  const base = document.body.dataset.dashboardUrl.replace(/\/+$/, '');
  const params = new URLSearchParams();
  const form = $('filters');
  for (const [name, dimension] of Object.entries(DASHBOARD_FILTERS)) {
    const value = form.elements[name].value.trim();
    if (value) params.set(`f.${dimension}`, name === 'country' ? value.toUpperCase() : value);
  }
  const search = params.toString();
  $('dashboard-link').href = `${base}/dashboard${search ? `?${search}` : ''}`;
}

function formatDuration(ms) {
  const seconds = Math.round(ms / 1000);
  const minutes = Math.floor(seconds / 60);
  return minutes ? `${minutes} min ${seconds % 60} s` : `${seconds} s`;
}

function clock(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

function sessionRow(session) {
  const play = element('button', { type: 'button', className: 'play', 'data-session-id': session.id }, 'Play');
  play.addEventListener('click', () => openSession(session.id, 0));
  const row = element(
    'tr',
    { 'data-session-id': session.id },
    element('td', {}, play),
    element('td', {}, new Date(session.startedAt).toLocaleString()),
    element('td', {}, formatDuration(session.durationMs)),
    element('td', { className: 'url', title: session.firstUrl || '' }, session.firstUrl || ''),
    element('td', { className: 'number' }, session.pageCount),
    element('td', { className: 'number' }, session.clickCount),
    element('td', {}, [session.country, session.browser, session.deviceType].filter(Boolean).join(' \u00b7 ')),
  );
  if (state.session && state.session.id === session.id) row.classList.add('playing');
  return row;
}

async function loadSessions(reset) {
  const listing = ++state.listing;
  const status = $('sessions-status');
  const body = $('sessions-body');
  status.classList.remove('error');
  status.textContent = 'Loading\u2026';
  const params = filterParams();
  params.set('limit', String(PAGE_SIZE));
  if (!reset && state.nextCursor) params.set('cursor', state.nextCursor);
  if (reset) writeUrl();
  try {
    const page = await apiJson(`/v1/sessions?${params}`);
    if (listing !== state.listing) return;
    if (reset) body.replaceChildren();
    for (const session of page.sessions) body.append(sessionRow(session));
    state.nextCursor = page.nextCursor;
    $('load-more').hidden = !page.nextCursor;
    const shown = body.children.length;
    status.textContent = shown ? `${plural(shown, 'session')} shown` : 'No sessions match.';
  } catch (error) {
    if (listing !== state.listing) return;
    // Rows of an earlier answer under an error would read as this filter's results.
    body.replaceChildren();
    state.nextCursor = null;
    $('load-more').hidden = true;
    status.classList.add('error');
    showError(status, error);
  }
}

function destroyPlayer() {
  if (state.player) {
    try {
      state.player.getReplayer().pause();
      state.player.$destroy();
    } catch {
      // A player whose page could not be rebuilt may fail to stop; it is gone either way.
    }
    state.player = null;
  }
  $('player').replaceChildren();
  $('timeline').replaceChildren();
  $('activity').replaceChildren();
}

// rrweb rebuilds a recording's page in timers of its own, so a page it cannot rebuild (a
// DOM a browser refuses, such as two elements under the document) fails there, as an
// uncaught error. While a player is open, such an error stops it and is shown as an error.
function playerFailed(error) {
  if (!state.player) return;
  const message = error?.message || String(error);
  try {
    state.player.getReplayer().pause();
  } catch {
    // Already broken; the message below is what matters.
  }
  $('player').classList.add('failed');
  $('player-status').textContent = '';
  $('player-error').textContent =
    `This recording cannot be replayed: the recorded page could not be rebuilt (${message}).`;
}

function metaRow(label, value) {
  return value ? [element('dt', {}, label), element('dd', {}, value)] : [];
}

// Where the visit came from (its first event, as the dashboard counts it); a session recorded
// without any stored event has none.
function sourceRows(visit) {
  if (!visit) return [];
  const utm = [visit.utmSource, visit.utmMedium, visit.utmCampaign].filter(Boolean).join(' / ');
  return [
    ...metaRow('Referrer', visit.referrer || (visit.referrerDomain ? visit.referrerDomain : 'Direct / none')),
    ...metaRow('UTM', utm),
  ];
}

function drawMeta(session, screen, visit) {
  $('player-meta').replaceChildren(
    ...metaRow('Started', new Date(session.startedAt).toLocaleString()),
    ...metaRow('Duration', formatDuration(session.durationMs)),
    ...metaRow('Active', formatDuration(session.activeMs)),
    ...metaRow('Pages', plural(session.pageCount, 'page')),
    ...metaRow('Clicks', plural(session.clickCount, 'click')),
    ...metaRow('Browser', session.browser),
    ...metaRow('OS', session.os),
    ...metaRow('Device', session.deviceType),
    ...metaRow('Country', session.country),
    ...metaRow('Screen', screen),
    ...metaRow('First URL', session.firstUrl),
    ...sourceRows(visit),
    ...metaRow('Visitor', session.distinctId),
  );
  $('visitor-sessions').href = `?${new URLSearchParams({ distinctId: session.distinctId })}`;
}

// The session's page changes, clicks (rage clicks marked) and custom events, from the events
// loaded so far; each entry seeks the player there.
function collectActivity(events, sessionStartMs) {
  const activity = state.activity;
  for (const event of events) {
    if (activity.items.length >= MAX_ACTIVITY) return;
    let item = null;
    if (event.type === META && event.data?.href) {
      if (event.data.width && !activity.screen) activity.screen = `${event.data.width} \u00d7 ${event.data.height}`;
      let path = event.data.href;
      try {
        const url = new URL(event.data.href);
        path = url.pathname + url.search;
      } catch {
        // Not a URL: shown as it is.
      }
      item = { kind: 'page', what: `Page ${path}` };
    } else if (event.type === INCREMENTAL && event.data?.source === MOUSE_INTERACTION && event.data.type === CLICK) {
      const recent = activity.clicks.filter(
        (click) =>
          event.timestamp - click.timestamp <= RAGE_WINDOW_MS &&
          Math.hypot((event.data.x ?? 0) - click.x, (event.data.y ?? 0) - click.y) <= RAGE_DISTANCE_PX,
      );
      activity.clicks = [...recent, { timestamp: event.timestamp, x: event.data.x ?? 0, y: event.data.y ?? 0 }];
      item = recent.length >= 2 ? { kind: 'rage', what: 'Rage click' } : { kind: 'click', what: 'Click' };
    } else if (event.type === CUSTOM && event.data?.tag) {
      item = { kind: 'custom', what: `Event ${event.data.tag}` };
    }
    if (item) activity.items.push({ ...item, timestamp: event.timestamp, atMs: event.timestamp - sessionStartMs });
  }
}

function seek(timestamp) {
  if (!state.player || !state.activity) return;
  state.player.goto(Math.max(0, timestamp - state.activity.playerStart), true);
}

function drawActivity(durationMs) {
  const { items } = state.activity;
  $('activity').replaceChildren(
    ...items.map((item) => {
      const button = element(
        'button',
        { type: 'button', 'data-kind': item.kind },
        element('span', { className: 'time' }, clock(item.atMs)),
        element('span', { className: 'what' }, item.what),
      );
      button.addEventListener('click', () => seek(item.timestamp));
      return element('li', { className: item.kind }, button);
    }),
  );
  if (!items.length) $('activity').replaceChildren(element('li', { className: 'status' }, 'No page changes or clicks loaded.'));
  const span = Math.max(1, durationMs);
  $('timeline').replaceChildren(
    ...items
      .filter((item) => item.kind !== 'custom')
      .map((item) => {
        const mark = element('button', {
          type: 'button',
          className: item.kind,
          title: `${clock(item.atMs)} ${item.what}`,
          'aria-label': `${clock(item.atMs)} ${item.what}`,
        });
        mark.style.left = `${Math.min(100, Math.max(0, (item.atMs / span) * 100))}%`;
        mark.addEventListener('click', () => seek(item.timestamp));
        return mark;
      }),
  );
}

function markPlayingRow(sessionId) {
  for (const row of document.querySelectorAll('#sessions-body tr')) {
    row.classList.toggle('playing', row.dataset.sessionId === sessionId);
  }
}

// Streams the recording from the first full snapshot at or before fromMs (the API's `from`;
// toMs, when given, is its `to`: the last chunk streamed is the last one beginning by then)
// and starts playing as soon as the first chunk is in; later chunks are added to the
// running player. Loading from another second asks the API again with a new window.
async function openSession(sessionId, fromMs, toMs = null) {
  const loading = ++state.loading;
  const status = $('player-status');
  state.openId = sessionId;
  destroyPlayer();
  $('player').classList.remove('failed');
  $('player-error').textContent = '';
  const section = $('player-section');
  section.hidden = false;
  // The player is above the list: bring it into view, as a click on Play means "show me".
  section.scrollIntoView({ block: 'start' });
  status.textContent = 'Loading the recording\u2026';
  try {
    const detail = await apiJson(`/v1/sessions/${encodeURIComponent(sessionId)}`);
    if (loading !== state.loading) return;
    const session = detail.session;
    state.session = session;
    writeUrl();
    markPlayingRow(session.id);
    $('player-title').textContent = session.firstUrl || session.id;
    const sessionStartMs = Date.parse(session.startedAt);
    state.activity = { items: [], clicks: [], screen: null, playerStart: sessionStartMs };
    drawMeta(session, null, detail.visit);
    const seekInput = $('seek-seconds');
    seekInput.max = String(Math.ceil(session.durationMs / 1000));
    seekInput.value = String(Math.floor(fromMs / 1000));
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
        collectActivity(chunk.events, sessionStartMs);
      } else {
        pending.push(...chunk.events);
        // rrweb needs the meta event and the full snapshot before it can draw anything. A
        // chunk found by `from` may begin with the previous page's last events: they would
        // refer to nodes the player never saw, so playback starts at the meta event.
        const meta = pending.findIndex((event) => event.type === META);
        if (meta >= 0 && pending.slice(meta).some((event) => event.type === FULL_SNAPSHOT)) {
          const playable = pending.slice(meta);
          state.activity.playerStart = playable[0].timestamp;
          collectActivity(playable, sessionStartMs);
          startPlayer(playable, Math.max(0, sessionStartMs + fromMs - playable[0].timestamp));
        }
      }
      if (state.player && !$('player-error').textContent) status.textContent = `Playing; ${plural(events, 'event')} loaded`;
    }
    if (!state.player) {
      $('player-error').textContent = 'This recording has no playable events: no page snapshot was recorded.';
      status.textContent = '';
    } else if (!$('player-error').textContent) {
      status.textContent = `Loaded: ${plural(events, 'event')} from ${formatDuration(startOffsetMs)} on.`;
    }
    drawMeta(session, state.activity.screen, detail.visit);
    drawActivity(session.durationMs);
  } catch (error) {
    if (loading !== state.loading || error instanceof Unauthorised) return;
    status.textContent = '';
    const target = $('player-error');
    if (error instanceof ApiFailure) showError(target, error);
    else target.textContent = `This recording cannot be replayed: ${error?.message || error}`;
  }
}

function startPlayer(events, offsetMs) {
  const container = $('player');
  const width = Math.max(240, container.clientWidth);
  // rrweb-player's controller bar is 80 px below the frame.
  const height = Math.round(Math.min(width * 0.6, window.innerHeight * 0.7));
  state.player = new rrwebPlayer({
    target: container,
    props: { events, width, height, autoPlay: true, showWarning: false },
  });
  if (offsetMs > 0) state.player.goto(offsetMs, true);
}

function prefillFilters() {
  const query = new URLSearchParams(window.location.search);
  const form = $('filters');
  for (const name of URL_FILTERS) {
    if (!query.has(name)) continue;
    const input = form.elements[name];
    if (input.type === 'checkbox') input.checked = query.get(name) === input.value;
    else input.value = query.get(name);
  }
  if (query.has('minDurationMs')) form.elements.minDurationS.value = String(Number(query.get('minDurationMs')) / 1000);
}

function start() {
  const session = new URLSearchParams(window.location.search).get('session');
  if (session) openSession(session, 0);
  loadSessions(true);
}

document.addEventListener('DOMContentLoaded', () => {
  prefillFilters();
  drawDashboardLink();
  window.addEventListener('error', (event) => playerFailed(event.error || event.message));
  window.addEventListener('unhandledrejection', (event) => playerFailed(event.reason));
  $('filters').addEventListener('submit', (event) => {
    event.preventDefault();
    loadSessions(true);
  });
  $('filters').elements.bots.addEventListener('change', () => loadSessions(true));
  $('load-more').addEventListener('click', () => loadSessions(false));
  $('close-player').addEventListener('click', () => {
    state.loading += 1;
    destroyPlayer();
    state.session = null;
    state.openId = null;
    $('player-section').hidden = true;
    markPlayingRow(null);
    writeUrl();
  });
  $('seek-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (!state.session) return;
    const until = $('until-seconds').value.trim();
    const fromMs = Math.round(Number($('seek-seconds').value || '0') * 1000);
    openSession(state.session.id, fromMs, until ? Math.round(Number(until) * 1000) : null);
  });
  setUpKey(start);
});
