// The dashboard's time chart on uPlot: one bucket per hour, day or month of the project's
// timezone, zero-filled from the range's start up to now (never into the future), axis
// labels measured so they are never clipped, and count axes with whole-number ticks only.
import uPlot from 'uplot';

const HOUR_S = 3600;
const DAY_S = 86400;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// "Now" in the project's timezone, as the bucket keys the query API writes (local wall time).
export function localNow(timezone, now = new Date()) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-CA', {
      timeZone: timezone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      hourCycle: 'h23',
    })
      .formatToParts(now)
      .map((part) => [part.type, part.value]),
  );
  return { day: `${parts.year}-${parts.month}-${parts.day}`, hour: `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:00` };
}

// Keys are wall-clock times of the project's timezone; they are placed on the axis as if they
// were UTC and drawn in UTC, so the axis shows exactly the wall time of each bucket.
export function keySeconds(key) {
  if (key.length === 7) return Date.UTC(Number(key.slice(0, 4)), Number(key.slice(5, 7)) - 1, 1) / 1000;
  if (key.length === 10) return Date.parse(`${key}T00:00:00Z`) / 1000;
  return Date.parse(`${key}:00Z`) / 1000;
}

// Every bucket key of the range [dateFrom, dateTo] (days, inclusive), cut at `now` when given.
export function bucketKeys(granularity, dateFrom, dateTo, now = null) {
  const keys = [];
  const first = Date.parse(`${dateFrom}T00:00:00Z`);
  const last = Date.parse(`${dateTo}T00:00:00Z`);
  if (granularity === 'hour') {
    for (let t = first; t < last + DAY_S * 1000; t += HOUR_S * 1000) keys.push(new Date(t).toISOString().slice(0, 13) + ':00');
    return now ? keys.filter((key) => key <= now.hour) : keys;
  }
  if (granularity === 'day') {
    for (let t = first; t <= last; t += DAY_S * 1000) keys.push(new Date(t).toISOString().slice(0, 10));
    return now ? keys.filter((key) => key <= now.day) : keys;
  }
  const end = dateTo.slice(0, 7);
  for (let year = Number(dateFrom.slice(0, 4)), month = Number(dateFrom.slice(5, 7)); ; month += 1) {
    if (month > 12) {
      year += 1;
      month = 1;
    }
    const key = `${year}-${String(month).padStart(2, '0')}`;
    keys.push(key);
    if (key >= end) break;
  }
  return keys;
}

function label(granularity, seconds) {
  const date = new Date(seconds * 1000);
  if (granularity === 'hour') return `${String(date.getUTCHours()).padStart(2, '0')}:00`;
  if (granularity === 'day') return `${MONTHS[date.getUTCMonth()]} ${date.getUTCDate()}`;
  return `${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()}`;
}

export function formatValue(metric, value) {
  if (value === null || value === undefined) return '-';
  if (metric === 'bounce_rate') return `${Math.round(value)} %`;
  if (metric === 'visit_duration') {
    const seconds = Math.round(value);
    return seconds >= 60 ? `${Math.floor(seconds / 60)}m ${seconds % 60}s` : `${seconds}s`;
  }
  return Number.isInteger(value) ? value.toLocaleString('en-US') : value.toFixed(1);
}

// The width the longest label needs, so uPlot sizes the y axis to it instead of clipping it.
function axisSize(self, values, axisIndex, cycle) {
  const axis = self.axes[axisIndex];
  if (cycle > 1) return axis._size;
  let size = axis.ticks.size + axis.gap + 8;
  const longest = (values || []).reduce((longer, value) => (value.length > longer.length ? value : longer), '');
  if (longest) {
    self.ctx.font = axis.font[0];
    size += self.ctx.measureText(longest).width / uPlot.pxRatio;
  }
  return Math.ceil(size);
}

// A tick on every nth bucket, n chosen so labels have room; buckets are uneven for months.
function bucketSplits(times, plotWidthCss, minSpacing) {
  if (times.length === 0) return [];
  const fit = Math.max(1, Math.floor(plotWidthCss / minSpacing));
  const step = Math.max(1, Math.ceil(times.length / fit));
  return times.filter((_, index) => index % step === 0);
}

// Draws (or redraws) the chart into container. series: [{label, values, dashed}]; times: bucket
// starts in seconds; `integer`: a count, so the y ticks are whole numbers.
export function drawTimeChart(container, previous, { granularity, times, series, metric, integer }) {
  if (previous) previous.destroy();
  container.replaceChildren();
  const width = Math.max(200, container.clientWidth);
  const height = width < 500 ? 220 : 300;
  const span = { hour: HOUR_S, day: DAY_S, month: 31 * DAY_S }[granularity];
  const xMin = times.length ? times[0] : 0;
  const xMax = times.length > 1 ? times[times.length - 1] : xMin + span;
  const minSpacing = granularity === 'month' ? 80 : granularity === 'day' ? 56 : 48;
  const options = {
    width,
    height,
    // The legend names the lines; values show in the cursor's tooltip-free readout only.
    legend: { show: series.length > 1, live: false },
    // Room on the right for the last bucket's label, which is centred on its tick.
    padding: [12, granularity === 'month' ? 36 : 24, 0, 0],
    cursor: { points: { size: 6 } },
    scales: {
      x: { time: true, range: () => [xMin, xMax] },
      y: {
        range: (_, __, max) => {
          const top = Math.max(integer ? 4 : 1, max || 0);
          return [0, integer ? Math.ceil(top * 1.1) : top * 1.1];
        },
      },
    },
    axes: [
      {
        space: minSpacing,
        splits: (self) => bucketSplits(times, self.bbox.width / uPlot.pxRatio, minSpacing),
        values: (_, splits) => splits.map((seconds) => label(granularity, seconds)),
        grid: { stroke: '#eef0f3' },
      },
      {
        size: axisSize,
        // Whole numbers only on a count axis: no 0.5 visitors.
        incrs: integer ? [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5, 2e5, 25e4, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8] : undefined,
        values: (_, splits) => splits.map((value) => formatValue(metric, value)),
        grid: { stroke: '#eef0f3' },
      },
    ],
    series: [
      { value: (_, seconds) => (seconds === null ? '' : label(granularity, seconds)) },
      ...series.map((line, index) => ({
        label: line.label,
        stroke: index === 0 ? '#3358d4' : '#98a2b3',
        width: 2,
        dash: line.dashed ? [6, 4] : undefined,
        fill: index === 0 ? 'rgba(51, 88, 212, 0.08)' : undefined,
        points: { show: times.length <= 1 },
        value: (_, value) => formatValue(metric, value),
      })),
    ],
  };
  // What was drawn, on the container, for the browser tests (labels are pixels on a canvas).
  options.hooks = {
    draw: [
      (self) => {
        const axis = self.axes[1];
        self.ctx.font = axis.font[0];
        const widest = Math.max(0, ...(axis._values || []).map((value) => self.ctx.measureText(value).width / uPlot.pxRatio));
        Object.assign(container.dataset, {
          buckets: String(times.length),
          firstBucket: times.length ? new Date(times[0] * 1000).toISOString().slice(0, 16) : '',
          lastBucket: times.length ? new Date(times[times.length - 1] * 1000).toISOString().slice(0, 16) : '',
          yTicks: (axis._values || []).join('|'),
          yAxisWidth: String(axis._size),
          yLabelWidth: String(Math.ceil(widest + axis.ticks.size + axis.gap)),
          width: String(self.width),
        });
      },
    ],
  };
  return new uPlot(options, [times, ...series.map((line) => line.values)], container);
}
