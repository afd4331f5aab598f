// The dashboard page: the query API's figures for one project, drawn with uPlot.
// Everything the user chooses (period, custom range, comparison, filters, tabs, chart metric,
// funnel steps) lives in the page's query string, so a reload or a shared link keeps it.
import 'uplot/dist/uPlot.min.css';
import './dashboard.css';
import { bucketKeys, drawTimeChart, formatValue, keySeconds, localNow } from './chart.js';
import { Unauthorised, apiFetch, apiJson, element, setUpKey, showError } from './key.js';

const $ = (id) => document.getElementById(id);
const REALTIME_REFRESH_MS = 30_000;
const TABLE_ROWS = 10;
const PERIODS = ['today', '7d', '30d', 'month', '12mo', 'custom'];
const CHART_METRICS = ['visitors', 'pageviews', 'sessions', 'bounce_rate', 'visit_duration'];
const COUNT_METRICS = new Set(['visitors', 'pageviews', 'sessions', 'events']);
const METRIC_LABELS = {
  visitors: 'Visitors',
  pageviews: 'Pageviews',
  sessions: 'Sessions',
  bounce_rate: 'Bounce rate',
  visit_duration: 'Visit duration',
  events: 'Events',
};
// Dimensions a row click filters on (the query API's filter dimensions).
const FILTER_LABELS = {
  page: 'Page',
  entry_page: 'Entry page',
  exit_page: 'Exit page',
  referrer: 'Source',
  utm_source: 'UTM source',
  utm_medium: 'UTM medium',
  utm_campaign: 'UTM campaign',
  country: 'Country',
  browser: 'Browser',
  os: 'OS',
  device: 'Device',
  event_name: 'Event',
};
// Each breakdown card: its tabs, each a dimension with the metrics its table shows, and where
// a row links in the player (the replay API's filter of the same meaning), if anywhere.
const BREAKDOWNS = {
  pages: [
    { dimension: 'page', label: 'Top pages', metrics: ['visitors', 'pageviews'], player: 'page' },
    // The player's page filter is any page of the session: its entry or exit page among them.
    { dimension: 'entry_page', label: 'Entry pages', metrics: ['visitors', 'sessions'], player: 'page' },
    { dimension: 'exit_page', label: 'Exit pages', metrics: ['visitors', 'sessions'], player: 'page' },
  ],
  sources: [
    { dimension: 'referrer', label: 'Referrers', metrics: ['visitors', 'pageviews'], player: 'referrer' },
    { dimension: 'utm_source', label: 'UTM source', metrics: ['visitors', 'pageviews'], player: 'utmSource' },
    { dimension: 'utm_medium', label: 'UTM medium', metrics: ['visitors', 'pageviews'], player: 'utmMedium' },
    { dimension: 'utm_campaign', label: 'UTM campaign', metrics: ['visitors', 'pageviews'], player: 'utmCampaign' },
  ],
  locations: [{ dimension: 'country', label: 'Countries', metrics: ['visitors', 'pageviews'], player: 'country' }],
  devices: [
    { dimension: 'browser', label: 'Browsers', metrics: ['visitors', 'pageviews'], player: 'browser' },
    { dimension: 'os', label: 'Operating systems', metrics: ['visitors', 'pageviews'], player: 'os' },
    { dimension: 'device', label: 'Devices', metrics: ['visitors', 'pageviews'], player: 'device' },
  ],
  events: [
    {
      dimension: 'event_name',
      label: 'Custom events',
      metrics: ['visitors', 'events'],
      extraFilters: [{ dimension: 'event_name', operator: 'is_not', values: ['pageview'] }],
    },
  ],
};

// The dashboard's filters the player has too (the replay API's names), carried into its links.
const PLAYER_FILTERS = {
  page: 'page',
  referrer: 'referrer',
  utm_source: 'utmSource',
  utm_medium: 'utmMedium',
  utm_campaign: 'utmCampaign',
  country: 'country',
  browser: 'browser',
  os: 'os',
  device: 'device',
};

// The replay service's base URL, written into the page by the query service
// (SIGHTLINE_QUERY_REPLAY_URL); session links go to its player page.
const replayUrl = () => document.body.dataset.replayUrl.replace(/\/+$/, '');

let chart = null;
let chartData = null;
let realtimeTimer = null;
let generation = 0;

// --- state in the URL ------------------------------------------------------------------------

function readState() {
  const query = new URLSearchParams(window.location.search);
  const period = PERIODS.includes(query.get('period')) ? query.get('period') : '30d';
  const filters = {};
  for (const [name, value] of query) {
    const dimension = name.startsWith('f.') ? name.slice(2) : null;
    if (dimension && dimension in FILTER_LABELS) filters[dimension] = value;
  }
  const tabs = {};
  for (const card of Object.keys(BREAKDOWNS)) {
    const wanted = query.get(`tab.${card}`);
    tabs[card] = BREAKDOWNS[card].some((tab) => tab.dimension === wanted) ? wanted : BREAKDOWNS[card][0].dimension;
  }
  const metric = CHART_METRICS.includes(query.get('metric')) ? query.get('metric') : 'visitors';
  return {
    period,
    from: query.get('from') || '',
    to: query.get('to') || '',
    compare: query.get('compare') === '1',
    metric,
    filters,
    tabs,
    funnel: query.get('funnel'),
  };
}

function writeState(state) {
  const query = new URLSearchParams();
  if (state.period !== '30d') query.set('period', state.period);
  if (state.period === 'custom') {
    query.set('from', state.from);
    query.set('to', state.to);
  }
  if (state.compare) query.set('compare', '1');
  if (state.metric !== 'visitors') query.set('metric', state.metric);
  for (const [dimension, value] of Object.entries(state.filters)) query.set(`f.${dimension}`, value);
  for (const [card, dimension] of Object.entries(state.tabs)) {
    if (dimension !== BREAKDOWNS[card][0].dimension) query.set(`tab.${card}`, dimension);
  }
  if (state.funnel) query.set('funnel', state.funnel);
  const search = query.toString();
  history.replaceState(null, '', search ? `?${search}` : window.location.pathname);
}

let state = readState();

function update(change, { reload = true } = {}) {
  state = { ...state, ...change };
  writeState(state);
  if (reload) refresh();
}

// --- API -------------------------------------------------------------------------------------

function rangeFields() {
  return state.period === 'custom' ? { period: 'custom', date_from: state.from, date_to: state.to } : { period: state.period };
}

function apiFilters(extra = []) {
  return [
    ...Object.entries(state.filters).map(([dimension, value]) => ({
      dimension,
      operator: 'is',
      values: [value === '' ? null : value],
    })),
    ...extra,
  ];
}

async function query(spec) {
  const { extraFilters, unfiltered, ...rest } = spec;
  return apiJson('/v1/query', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...rangeFields(), filters: unfiltered ? [] : apiFilters(extraFilters), ...rest }),
  });
}

async function post(path, body) {
  return apiJson(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...rangeFields(), ...body }),
  });
}

function estimateNote(response) {
  if (response.meta.exact) return '';
  const error = (response.meta.visitors_relative_standard_error * 100).toFixed(1);
  return `Visitors marked \u2248 are HyperLogLog estimates (\u00b1${error} % standard error) from rolled-up days; other figures are exact, so a page's visitors may differ slightly between widgets.`;
}

// --- loading states ------------------------------------------------------------------------

function skeleton(target, rows = 5) {
  target.replaceChildren(
    element('div', { className: 'skeleton', 'aria-busy': 'true' }, ...Array.from({ length: rows }, () => element('span'))),
  );
}

// --- totals ----------------------------------------------------------------------------------

function change(current, previous) {
  if (previous === undefined || previous === null) return null;
  if (previous === 0) return current === 0 ? '0 %' : 'new';
  const percent = Math.round(((current - previous) / previous) * 100);
  return `${percent > 0 ? '+' : ''}${percent} %`;
}

async function drawTotals() {
  const metrics = CHART_METRICS;
  const response = await query({ metrics, comparison: state.compare ? 'previous_period' : undefined });
  const values = response.results[0]?.metrics || metrics.map(() => 0);
  const previous = state.compare ? response.comparison?.results[0]?.metrics || metrics.map(() => 0) : null;
  const estimated = !response.meta.exact;
  $('totals').replaceChildren(
    ...metrics.map((metric, n) => {
      const delta = previous ? change(values[n], previous[n]) : null;
      const button = element(
        'button',
        {
          type: 'button',
          className: `total${metric === state.metric ? ' selected' : ''}`,
          'data-total': metric,
          'aria-pressed': String(metric === state.metric),
          title: `Chart ${METRIC_LABELS[metric].toLowerCase()}`,
        },
        element('span', { className: 'total-label' }, METRIC_LABELS[metric]),
        element(
          'strong',
          { 'data-metric': METRIC_LABELS[metric] },
          `${estimated && metric === 'visitors' ? '\u2248' : ''}${formatValue(metric, values[n])}`,
        ),
        delta ? element('span', { className: 'delta', 'data-delta': metric }, `${delta} vs previous`) : '',
      );
      button.addEventListener('click', () => update({ metric }));
      return button;
    }),
  );
  $('totals-note').textContent = estimateNote(response);
  const empty = values[1] === 0 && values[2] === 0 && Object.keys(state.filters).length === 0;
  $('empty-state').hidden = !empty;
  return response;
}

// --- chart -----------------------------------------------------------------------------------

function granularity() {
  if (state.period === 'today') return 'hour';
  if (state.period === '12mo') return 'month';
  if (state.period === 'custom' && state.from && state.to) {
    const days = (Date.parse(state.to) - Date.parse(state.from)) / 86_400_000;
    if (days < 1) return 'hour';
    if (days > 92) return 'month';
  }
  return 'day';
}

async function drawChart() {
  const metric = state.metric;
  const unit = granularity();
  $('chart-title').textContent = METRIC_LABELS[metric];
  $('chart-metric').value = metric;
  const response = await query({
    metrics: [metric],
    dimensions: [`time:${unit}`],
    limit: 10_000,
    comparison: state.compare ? 'previous_period' : undefined,
  });
  // Up to the current bucket of the project's timezone, never the hours or days still to come.
  const now = localNow(response.meta.timezone);
  const keys = bucketKeys(unit, response.date_range.date_from, response.date_range.date_to, now);
  const values = (results) => new Map(results.map((row) => [row.dimensions[0], row.metrics[0]]));
  const current = values(response.results);
  const series = [{ label: METRIC_LABELS[metric], values: keys.map((key) => current.get(key) ?? 0) }];
  if (response.comparison) {
    const previous = values(response.comparison.results);
    const previousKeys = bucketKeys(unit, response.comparison.date_range.date_from, response.comparison.date_range.date_to);
    series.push({
      label: 'Previous period',
      dashed: true,
      values: keys.map((_, index) => (index < previousKeys.length ? previous.get(previousKeys[index]) ?? 0 : null)),
    });
  }
  chartData = { granularity: unit, times: keys.map(keySeconds), series, metric, integer: COUNT_METRICS.has(metric) };
  chart = drawTimeChart($('chart'), chart, chartData);
  $('chart-note').textContent = metric === 'visitors' ? estimateNote(response) : '';
}

// --- breakdowns ------------------------------------------------------------------------------

// Sessions with this row's value, under the dashboard's other filters where the player has them.
function playerLink(name, value) {
  const params = new URLSearchParams();
  for (const [dimension, filterValue] of Object.entries(state.filters)) {
    if (PLAYER_FILTERS[dimension] && filterValue !== '') params.set(PLAYER_FILTERS[dimension], filterValue);
  }
  params.set(name, value);
  return `${replayUrl()}/player?${params}`;
}

function setUpTabs() {
  for (const card of document.querySelectorAll('section.breakdown')) {
    const name = card.dataset.tabs;
    const tabs = BREAKDOWNS[name];
    const bar = card.querySelector('.tabs');
    if (tabs.length < 2) continue;
    bar.replaceChildren(
      ...tabs.map((tab) => {
        const button = element(
          'button',
          { type: 'button', role: 'tab', className: 'tab', 'data-tab': tab.dimension },
          tab.label,
        );
        button.addEventListener('click', () => {
          update({ tabs: { ...state.tabs, [name]: tab.dimension } }, { reload: false });
          drawBreakdown(name).catch(ignoreRefused);
        });
        return button;
      }),
    );
  }
}

async function drawBreakdown(name) {
  const tab = BREAKDOWNS[name].find((candidate) => candidate.dimension === state.tabs[name]);
  const card = document.querySelector(`section.breakdown[data-tabs="${name}"]`);
  for (const button of card.querySelectorAll('.tab')) {
    button.setAttribute('aria-selected', String(button.dataset.tab === tab.dimension));
  }
  const target = $(`${name}-table`);
  skeleton(target);
  try {
    const response = await query({
      metrics: tab.metrics,
      dimensions: [tab.dimension],
      limit: TABLE_ROWS,
      extraFilters: tab.extraFilters,
    });
    const estimated = !response.meta.exact;
    const head = element(
      'tr',
      {},
      element('th', {}, tab.label.replace(/^Top /, '').replace(/^./, (c) => c.toUpperCase())),
      ...tab.metrics.map((metric) => element('th', { className: 'number' }, METRIC_LABELS[metric])),
      tab.player ? element('th', { className: 'link' }, '') : '',
    );
    const rows = response.results.map((row) => {
      const value = row.dimensions[0];
      const filter = element(
        'button',
        {
          type: 'button',
          className: 'row-filter',
          'data-dimension': tab.dimension,
          title: `Only ${FILTER_LABELS[tab.dimension].toLowerCase()} ${value ?? '(none)'}`,
        },
        value ?? '(none)',
      );
      filter.addEventListener('click', () => update({ filters: { ...state.filters, [tab.dimension]: value ?? '' } }));
      const cells = [
        element('td', { className: 'url' }, filter),
        ...tab.metrics.map((metric, n) =>
          element(
            'td',
            { className: 'number' },
            `${estimated && metric === 'visitors' ? '\u2248' : ''}${formatValue(metric, row.metrics[n])}`,
          ),
        ),
      ];
      if (tab.player) {
        cells.push(
          element(
            'td',
            { className: 'link' },
            value ? element('a', { href: playerLink(tab.player, value), className: 'sessions-link' }, 'Sessions') : '',
          ),
        );
      }
      return element('tr', {}, ...cells);
    });
    const columns = String(tab.metrics.length + (tab.player ? 2 : 1));
    const empty = rows.length ? [] : [element('tr', {}, element('td', { colspan: columns, className: 'empty' }, 'No data in this period.'))];
    const note = estimated ? [element('p', { className: 'status note' }, '\u2248 HyperLogLog estimate.')] : [];
    target.replaceChildren(element('table', {}, element('thead', {}, head), element('tbody', {}, ...rows, ...empty)), ...note);
    return response;
  } catch (error) {
    if (error instanceof Unauthorised) throw error;
    target.replaceChildren(element('p', { className: 'error' }, ''));
    showError(target.firstChild, error);
    return null;
  }
}

// --- goals ---------------------------------------------------------------------------------------

// A goal is saved for the project (POST /v1/goals): a page path or a custom event name; its
// conversions are the period's unique visitors who reached it, under the dashboard's filters.
const GOAL_DIMENSIONS = { page: 'page', event: 'event_name' };

async function drawGoals() {
  const target = $('goals-table');
  skeleton(target, 3);
  try {
    const response = await post('/v1/goals/conversions', { filters: apiFilters() });
    if (!response.goals.length) {
      target.replaceChildren(
        element('p', { className: 'status' }, 'No goals yet. Add a page path (such as /signup/done) or a custom event name to count its conversions.'),
      );
      return response;
    }
    const estimated = !response.meta.exact;
    const approx = estimated ? '\u2248' : '';
    const head = element(
      'tr',
      {},
      element('th', {}, 'Goal'),
      element('th', { className: 'number' }, 'Uniques'),
      element('th', { className: 'number' }, 'Conversion rate'),
      element('th', { className: 'link' }, ''),
    );
    const rows = response.goals.map((goal) => {
      const dimension = GOAL_DIMENSIONS[goal.type];
      const filter = element(
        'button',
        { type: 'button', className: 'row-filter', 'data-dimension': dimension, title: `Only visits with ${goal.value}` },
        goal.name,
      );
      filter.addEventListener('click', () => update({ filters: { ...state.filters, [dimension]: goal.value } }));
      const kind = goal.type === 'page' ? `Visit ${goal.value}` : `Event ${goal.value}`;
      const remove = element(
        'button',
        { type: 'button', className: 'secondary small goal-remove', 'aria-label': `Delete goal ${goal.name}` },
        '\u00d7',
      );
      remove.addEventListener('click', () => deleteGoal(goal.id));
      return element(
        'tr',
        { 'data-goal': goal.value },
        element('td', { className: 'url' }, filter, element('span', { className: 'goal-kind' }, kind)),
        element('td', { className: 'number', 'data-goal-visitors': goal.value }, `${approx}${formatValue('visitors', goal.visitors)}`),
        element('td', { className: 'number', 'data-goal-rate': goal.value }, `${approx}${goal.conversion_rate.toFixed(1)} %`),
        element('td', { className: 'link' }, remove),
      );
    });
    const note = estimated
      ? [element('p', { className: 'status note' }, '\u2248 HyperLogLog estimate (uniques, and so the rate).')]
      : [];
    target.replaceChildren(element('table', {}, element('thead', {}, head), element('tbody', {}, ...rows)), ...note);
    return response;
  } catch (error) {
    if (error instanceof Unauthorised) throw error;
    target.replaceChildren(element('p', { className: 'error' }, ''));
    showError(target.firstChild, error);
    return null;
  }
}

async function addGoal() {
  const message = $('goal-message');
  message.textContent = '';
  const type = $('goal-type').value;
  const value = $('goal-value').value.trim();
  const name = $('goal-name').value.trim();
  try {
    await apiJson('/v1/goals', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(name ? { type, value, name } : { type, value }),
    });
    $('goal-value').value = '';
    $('goal-name').value = '';
    await drawGoals();
  } catch (error) {
    showError(message, error);
  }
}

async function deleteGoal(id) {
  const message = $('goal-message');
  message.textContent = '';
  try {
    await apiFetch(`/v1/goals/${encodeURIComponent(id)}`, { method: 'DELETE' });
    await drawGoals();
  } catch (error) {
    showError(message, error);
  }
}

// --- filter chips ----------------------------------------------------------------------------

function drawChips() {
  const chips = Object.entries(state.filters).map(([dimension, value]) => {
    const remove = element('button', { type: 'button', className: 'chip-remove', 'aria-label': `Remove ${FILTER_LABELS[dimension]} filter` }, '\u00d7');
    remove.addEventListener('click', () => {
      const filters = { ...state.filters };
      delete filters[dimension];
      update({ filters });
    });
    return element(
      'span',
      { className: 'chip', 'data-filter': dimension },
      `${FILTER_LABELS[dimension]} is ${value === '' ? '(none)' : value}`,
      remove,
    );
  });
  if (chips.length > 1) {
    const clear = element('button', { type: 'button', className: 'secondary small' }, 'Clear all');
    clear.addEventListener('click', () => update({ filters: {} }));
    chips.push(clear);
  }
  $('filter-chips').replaceChildren(...chips);
}

// --- realtime, funnel, retention -------------------------------------------------------------

async function drawRealtime() {
  try {
    const response = await apiJson('/v1/realtime');
    $('realtime').replaceChildren(
      element('span', { className: 'pulse', 'aria-hidden': 'true' }),
      element('strong', { id: 'realtime-visitors' }, String(response.visitors)),
      ` ${response.visitors === 1 ? 'visitor' : 'visitors'} in the last ${Math.round(response.window_seconds / 60)} minutes (realtime)`,
    );
  } catch (error) {
    showError($('realtime'), error);
  }
}

function funnelSteps(text) {
  return text
    .split(',')
    .map((step) => step.trim())
    .filter(Boolean)
    .map((value) => ({ type: value.startsWith('/') ? 'page' : 'event', value }));
}

// Without steps of the user's own, the funnel follows the project's most visited pages.
function defaultFunnel(topPages) {
  const pages = (topPages?.results || []).map((row) => row.dimensions[0]).filter(Boolean).slice(0, 3);
  return pages.length >= 2 ? pages.join(', ') : '';
}

async function drawFunnel(topPages) {
  const target = $('funnel-result');
  const input = $('funnel-steps');
  if (state.funnel) input.value = state.funnel;
  else if (!input.value || input.dataset.auto === '1') {
    input.value = defaultFunnel(topPages);
    input.dataset.auto = '1';
  }
  const steps = funnelSteps(input.value);
  if (steps.length < 2) {
    target.replaceChildren(
      element('p', { className: 'status' }, 'A funnel needs 2 to 8 steps: page paths (starting with /) or event names. This period has fewer than 2 pages to suggest.'),
    );
    return;
  }
  skeleton(target, 3);
  try {
    const response = await post('/v1/funnel', { steps });
    // A big range is answered from a visitor sample, scaled up: every figure is then an estimate.
    const sampled = response.meta.sampled;
    const approx = sampled ? '\u2248' : '';
    const rows = response.steps.map((step, index) => {
      const reached = step.visitors > 0;
      const interval = sampled
        ? `95 % interval: ${formatValue('visitors', step.visitors_low)} to ${formatValue('visitors', step.visitors_high)} visitors`
        : undefined;
      return element(
        'tr',
        {},
        element('td', { className: 'url' }, `${step.step}. ${step.value}`),
        element('td', { className: 'number', title: interval, 'data-funnel-visitors': String(step.step) }, `${approx}${formatValue('visitors', step.visitors)}`),
        // A step nobody reached has no conversion to speak of.
        element('td', { className: 'number' }, reached ? `${index === 0 ? '' : approx}${step.conversion_rate.toFixed(1)} %` : '-'),
        element('td', { className: 'number' }, index === 0 ? '-' : `${approx}${formatValue('visitors', step.drop_off)}`),
      );
    });
    const rate = Math.round(1 / response.meta.sampling_rate);
    const note = sampled
      ? `\u2248 Estimated from a sample of 1 in ${rate} visitors (${formatValue('visitors', response.meta.sampled_visitors)} followed), scaled up; hover a count for its 95 % interval. All traffic in the period (filters do not apply).`
      : 'Funnel visitors are exact counts over raw events, of all traffic in the period (filters do not apply).';
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
            element('th', { className: 'number' }, 'Conversion'),
            element('th', { className: 'number' }, 'Drop-off'),
          ),
        ),
        element('tbody', {}, ...rows),
      ),
      element('p', { className: 'status note', id: 'funnel-note' }, note),
    );
  } catch (error) {
    if (error instanceof Unauthorised) throw error;
    target.replaceChildren(element('p', { className: 'error' }, ''));
    showError(target.firstChild, error);
  }
}

async function drawRetention() {
  const target = $('retention');
  skeleton(target, 4);
  try {
    const response = await post('/v1/retention', { weeks: 6 });
    if (!response.cohorts.length) {
      target.replaceChildren(element('p', { className: 'status' }, 'No visitors first seen in this period.'));
      return;
    }
    // The newest twelve cohorts (a 12-month period has 52): the table stays readable.
    const cohorts = response.cohorts.slice(-12);
    const weeks = Math.max(...cohorts.map((cohort) => cohort.retention.length));
    const head = element(
      'tr',
      {},
      element('th', {}, 'First seen (week of)'),
      element('th', { className: 'number' }, 'Visitors'),
      ...Array.from({ length: weeks }, (_, n) => element('th', { className: 'number' }, `Week ${n + 1}`)),
    );
    const rows = cohorts.map((cohort) =>
      element(
        'tr',
        {},
        element('td', {}, cohort.week),
        element('td', { className: 'number' }, formatValue('visitors', cohort.visitors)),
        ...Array.from({ length: weeks }, (_, n) => {
          const week = cohort.retention.find((entry) => entry.week_offset === n + 1);
          if (!week) return element('td', { className: 'number' }, '');
          const cell = element('td', { className: 'number heat' }, `${week.percentage.toFixed(1)} %`);
          cell.style.setProperty('--heat', String(Math.min(1, week.percentage / 50)));
          return cell;
        }),
      ),
    );
    const shown = cohorts.length < response.cohorts.length ? [element('p', { className: 'status note' }, `The newest ${cohorts.length} of ${response.cohorts.length} weekly cohorts.`)] : [];
    target.replaceChildren(element('table', {}, element('thead', {}, head), element('tbody', {}, ...rows)), ...shown);
  } catch (error) {
    if (error instanceof Unauthorised) throw error;
    target.replaceChildren(element('p', { className: 'error' }, ''));
    showError(target.firstChild, error);
  }
}

// --- the whole page --------------------------------------------------------------------------

function drawControls() {
  $('period').value = state.period;
  const custom = state.period === 'custom';
  for (const id of ['custom-from-label', 'custom-to-label', 'custom-apply']) $(id).hidden = !custom;
  $('date-from').value = state.from;
  $('date-to').value = state.to;
  $('compare').checked = state.compare;
  $('chart-metric').value = state.metric;
  drawChips();
}

function ignoreRefused(error) {
  if (!(error instanceof Unauthorised)) throw error;
}

async function refresh() {
  const mine = ++generation;
  const status = $('dashboard-status');
  status.classList.remove('error');
  drawControls();
  if (state.period === 'custom' && !(state.from && state.to)) {
    status.textContent = 'Choose both days of the custom range.';
    return;
  }
  status.textContent = 'Loading\u2026';
  for (const id of ['pages-table', 'sources-table', 'locations-table', 'devices-table', 'events-table', 'goals-table']) {
    skeleton($(id));
  }
  skeleton($('totals'), 1);
  $('chart').classList.add('loading');
  try {
    // One call first: a refused key stops here, with one message, instead of every widget
    // asking and failing on its own.
    await drawTotals();
    if (mine !== generation) return;
    const [topPages] = await Promise.all([
      drawBreakdown('pages'),
      drawChart(),
      drawBreakdown('sources'),
      drawBreakdown('locations'),
      drawBreakdown('devices'),
      drawBreakdown('events'),
      drawGoals(),
      drawRealtime(),
      drawRetention(),
    ]);
    if (mine !== generation) return;
    // The funnel API takes no filters: its suggestion comes from all traffic too.
    const suggestion =
      state.tabs.pages === 'page' && Object.keys(state.filters).length === 0
        ? topPages
        : await query({ metrics: ['visitors'], dimensions: ['page'], limit: 3, unfiltered: true });
    await drawFunnel(suggestion);
    status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error instanceof Unauthorised) {
      status.textContent = '';
      return;
    }
    status.classList.add('error');
    showError(status, error);
  } finally {
    $('chart').classList.remove('loading');
  }
}

function start() {
  $('all-sessions').href = `${replayUrl()}/player`;
  refresh();
  clearInterval(realtimeTimer);
  realtimeTimer = setInterval(() => drawRealtime(), REALTIME_REFRESH_MS);
}

let resizeTimer = null;
function resizeChart() {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (chart && chartData) chart = drawTimeChart($('chart'), chart, chartData);
  }, 100);
}

document.addEventListener('DOMContentLoaded', () => {
  setUpTabs();
  drawControls();
  $('period').addEventListener('change', () => {
    const period = $('period').value;
    if (period === 'custom') {
      // Start from the last 30 days, so the range is never empty.
      const today = new Date().toISOString().slice(0, 10);
      const monthAgo = new Date(Date.now() - 29 * 86_400_000).toISOString().slice(0, 10);
      update({ period, from: state.from || monthAgo, to: state.to || today });
    } else update({ period });
  });
  $('period-form').addEventListener('submit', (event) => {
    event.preventDefault();
    update({ from: $('date-from').value, to: $('date-to').value });
  });
  $('compare').addEventListener('change', () => update({ compare: $('compare').checked }));
  $('chart-metric').addEventListener('change', () => update({ metric: $('chart-metric').value }));
  $('funnel-form').addEventListener('submit', (event) => {
    event.preventDefault();
    $('funnel-steps').dataset.auto = '';
    update({ funnel: $('funnel-steps').value.trim() }, { reload: false });
    drawFunnel(null).catch(ignoreRefused);
  });
  $('goal-form').addEventListener('submit', (event) => {
    event.preventDefault();
    addGoal().catch(ignoreRefused);
  });
  $('goal-type').addEventListener('change', () => {
    $('goal-value').placeholder = $('goal-type').value === 'page' ? '/signup/done' : 'signup';
  });
  window.addEventListener('resize', resizeChart);
  setUpKey(start);
});
