// The dashboard page: the query API's figures for one project, drawn with uPlot.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './dashboard.css';
import { apiJson, element, setUpKey, showError } from './key.js';

const $ = (id) => document.getElementById(id);
const REALTIME_REFRESH_MS = 30_000;
const TABLE_ROWS = 10;

// The replay service's base URL, written into the page by the query service
// (SIGHTLINE_QUERY_REPLAY_URL); session links go to its player page.
const replayUrl = () => document.body.dataset.replayUrl.replace(/\/+$/, '');

let chart = null;
let realtimeTimer = null;

function period() {
  return $('period').value;
}

function timeDimension() {
  return { today: 'time:hour', '12mo': 'time:month' }[period()] || 'time:day';
}

async function query(spec) {
  return apiJson('/v1/query', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ period: period(), ...spec }),
  });
}

// Buckets the API leaves out (no events) are drawn as zero.
function bucketTimes(response, dimension) {
  const from = Date.parse(`${response.date_range.date_from}T00:00:00Z`);
  const to = Date.parse(`${response.date_range.date_to}T00:00:00Z`);
  const keys = [];
  if (dimension === 'time:hour') {
    for (let t = from; t < to + 86_400_000; t += 3_600_000) keys.push(new Date(t).toISOString().slice(0, 13) + ':00');
  } else if (dimension === 'time:day') {
    for (let t = from; t <= to; t += 86_400_000) keys.push(new Date(t).toISOString().slice(0, 10));
  } else {
    for (const row of response.results) keys.push(row.dimensions[0]);
  }
  return keys;
}

function keyToSeconds(key) {
  if (key.length === 7) return Date.parse(`${key}-01T00:00:00Z`) / 1000;
  if (key.length === 10) return Date.parse(`${key}T00:00:00Z`) / 1000;
  return Date.parse(`${key}:00Z`) / 1000;
}

async function drawChart() {
  const dimension = timeDimension();
  const response = await query({ metrics: ['visitors', 'pageviews'], dimensions: [dimension], limit: 10_000 });
  const byKey = new Map(response.results.map((row) => [row.dimensions[0], row.metrics]));
  const keys = bucketTimes(response, dimension);
  const data = [
    keys.map(keyToSeconds),
    keys.map((key) => (byKey.get(key) || [0, 0])[0]),
    keys.map((key) => (byKey.get(key) || [0, 0])[1]),
  ];
  const container = $('chart');
  if (chart) chart.destroy();
  chart = new uPlot(
    {
      width: Math.max(320, container.clientWidth),
      height: 300,
      // Buckets are days of the project's timezone, named by their date: shown as such.
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), 'Etc/UTC'),
      scales: { y: { range: (_, min, max) => [0, Math.max(1, max)] } },
      series: [
        {},
        { label: 'Visitors', stroke: '#3358d4', width: 2, fill: 'rgba(51, 88, 212, 0.08)' },
        { label: 'Pageviews', stroke: '#12805c', width: 2 },
      ],
    },
    data,
    container,
  );
}

function formatNumber(value) {
  return Number.isInteger(value) ? value.toLocaleString() : value.toFixed(1);
}

async function drawTotals() {
  const response = await query({ metrics: ['visitors', 'pageviews', 'sessions', 'bounce_rate', 'visit_duration'] });
  const values = response.results[0]?.metrics || [0, 0, 0, 0, 0];
  const labels = ['Visitors', 'Pageviews', 'Sessions', 'Bounce rate %', 'Visit duration s'];
  $('totals').replaceChildren(
    ...labels.map((label, n) =>
      element('div', {}, element('strong', { 'data-metric': label }, formatNumber(values[n])), element('span', {}, label)),
    ),
  );
  const note = response.meta.exact ? '' : 'Visitors are HyperLogLog estimates on rolled-up days.';
  $('totals-note').textContent = note;
}

// A table of one dimension's top values; withSessions adds a link to the player filtered to it.
async function drawBreakdown(targetId, dimension, label, withSessions) {
  const target = $(targetId);
  try {
    const response = await query({ metrics: ['visitors', 'pageviews'], dimensions: [dimension], limit: TABLE_ROWS });
    const head = element(
      'tr',
      {},
      element('th', {}, label),
      element('th', { className: 'number' }, 'Visitors'),
      element('th', { className: 'number' }, 'Pageviews'),
      withSessions ? element('th', {}, '') : '',
    );
    const rows = response.results.map((row) => {
      const value = row.dimensions[0];
      const cells = [
        element('td', { className: 'url' }, value ?? '(none)'),
        element('td', { className: 'number' }, formatNumber(row.metrics[0])),
        element('td', { className: 'number' }, formatNumber(row.metrics[1])),
      ];
      if (withSessions) {
        const link = withSessions(value);
        cells.push(element('td', {}, link ? element('a', { href: link, className: 'sessions-link' }, 'Sessions') : ''));
      }
      return element('tr', {}, ...cells);
    });
    const empty = rows.length ? [] : [element('tr', {}, element('td', { colspan: '4' }, 'No data in this period.'))];
    target.replaceChildren(element('table', {}, element('thead', {}, head), element('tbody', {}, ...rows, ...empty)));
  } catch (error) {
    showError(target, error);
  }
}

function playerLink(filters) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  return `${replayUrl()}/player?${params}`;
}

async function drawRealtime() {
  try {
    const response = await apiJson('/v1/realtime');
    $('realtime').replaceChildren(
      element('strong', { id: 'realtime-visitors' }, String(response.visitors)),
      ` visitors in the last ${Math.round(response.window_seconds / 60)} minutes`,
    );
  } catch (error) {
    showError($('realtime'), error);
  }
}

async function drawFunnel() {
  const target = $('funnel-result');
  const steps = $('funnel-steps')
    .value.split(',')
    .map((step) => step.trim())
    .filter(Boolean)
    .map((value) => ({ type: value.startsWith('/') ? 'page' : 'event', value }));
  if (steps.length < 2) {
    target.textContent = 'A funnel needs 2 to 8 steps: page paths (starting with /) or event names.';
    return;
  }
  try {
    const response = await apiJson('/v1/funnel', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ period: period(), steps }),
    });
    target.replaceChildren(
      element(
        'table',
        {},
        element(
          'thead',
          {},
          element(
            'tr',
            {},
            element('th', {}, 'Step'),
            element('th', { className: 'number' }, 'Visitors'),
            element('th', { className: 'number' }, 'Conversion %'),
            element('th', { className: 'number' }, 'Drop-off'),
          ),
        ),
        element(
          'tbody',
          {},
          ...response.steps.map((step) =>
            element(
              'tr',
              {},
              element('td', {}, `${step.step}. ${step.value}`),
              element('td', { className: 'number' }, formatNumber(step.visitors)),
              element('td', { className: 'number' }, step.conversion_rate.toFixed(1)),
              element('td', { className: 'number' }, formatNumber(step.drop_off)),
            ),
          ),
        ),
      ),
    );
  } catch (error) {
    showError(target, error);
  }
}

async function refresh() {
  const status = $('dashboard-status');
  status.textContent = 'Loading\u2026';
  try {
    await Promise.all([
      drawTotals(),
      drawChart(),
      drawBreakdown('top-pages', 'page', 'Page', (page) => page && playerLink({ urlContains: page })),
      drawBreakdown('referrers', 'referrer', 'Referrer'),
      drawBreakdown('countries', 'country', 'Country', (country) => country && playerLink({ country })),
      drawBreakdown('browsers', 'browser', 'Browser', (browser) => browser && playerLink({ browser })),
      drawBreakdown('devices', 'device', 'Device', (device) => device && playerLink({ device })),
      drawRealtime(),
      drawFunnel(),
    ]);
    status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showError(status, error);
  }
}

function start() {
  $('all-sessions').href = `${replayUrl()}/player`;
  refresh();
  clearInterval(realtimeTimer);
  realtimeTimer = setInterval(drawRealtime, REALTIME_REFRESH_MS);
}

document.addEventListener('DOMContentLoaded', () => {
  $('period').addEventListener('change', refresh);
  $('funnel-form').addEventListener('submit', (event) => {
    event.preventDefault();
    drawFunnel();
  });
  setUpKey(start);
});
