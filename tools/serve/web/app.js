// The page of `clhost serve` (docs/web-ui.md): runs list, live run page, launch form, compare.
// Plain JavaScript, no build step; charts with Debian's Chart.js, the matrix as SVG.
'use strict';

const main = document.getElementById('main');
let leavePage = () => {};  // closes the current page's stream and timers

// --- small helpers ----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  if (init.body !== undefined) {
    init.method = init.method || 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(init.body);
  }
  if (init.method && init.method !== 'GET') init.headers['X-Clhost-Request'] = '1';
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    const error = new Error(body.error || response.statusText);
    error.body = body;
    error.status = response.status;
    throw error;
  }
  return body;
}

const fmt = {
  number: (v, digits = 4) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toFixed(digits)),
  signed: (v, digits = 4) => (v === null || v === undefined ? '–' : (v >= 0 ? '+' : '') + Number(v).toFixed(digits)),
  bytes: (v) => {
    if (v === null || v === undefined || v < 0) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return v.toFixed(i ? 1 : 0) + ' ' + units[i];
  },
  seconds: (s) => {
    if (s === null || s === undefined || !Number.isFinite(s)) return '–';
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
  },
  date: (t) => (t ? new Date(t * 1000).toLocaleString() : '–'),
};

function statusBadge(status) {
  return h('span', { class: 'status ' + status, 'data-status': status }, status);
}

function progressBar(fraction) {
  const percent = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return h('span', { class: 'bar', title: percent.toFixed(0) + '%' },
    h('span', { style: 'width:' + percent.toFixed(1) + '%' }));
}

// Per row i of an evaluation matrix: the average over tasks 0..i, forgetting and backward
// transfer over tasks before i (docs/outputs.md), signed so that positive transfer is better.
function rowMetrics(matrix, higherIsBetter) {
  const sign = higherIsBetter ? 1 : -1;
  return matrix.map((row, i) => {
    const seen = row.slice(0, i + 1);
    const average = seen.reduce((a, b) => a + b, 0) / seen.length;
    if (i === 0) return { average, forgetting: null, bwt: null };
    let forgetting = 0;
    let bwt = 0;
    for (let j = 0; j < i; j += 1) {
      let best = matrix[j][j];
      for (let l = j; l < i; l += 1) best = higherIsBetter ? Math.max(best, matrix[l][j]) : Math.min(best, matrix[l][j]);
      forgetting += sign * (best - row[j]);
      bwt += sign * (row[j] - matrix[j][j]);
    }
    return { average, forgetting: forgetting / i, bwt: bwt / i };
  });
}

// --- the accuracy matrix as an SVG heatmap -----------------------------------------------------

function heatColor(value, low, high, higherIsBetter) {
  let x = high > low ? (value - low) / (high - low) : 0.5;
  if (!higherIsBetter) x = 1 - x;
  // from a pale red (worse) to a deep blue (better)
  const from = [246, 214, 208];
  const to = [47, 95, 179];
  const c = from.map((f, k) => Math.round(f + (to[k] - f) * x));
  return 'rgb(' + c.join(',') + ')';
}

function divergingColor(value, limit) {
  const x = limit > 0 ? Math.max(-1, Math.min(1, value / limit)) : 0;
  const base = [250, 250, 250];
  const target = x >= 0 ? [30, 123, 52] : [179, 38, 30];
  const c = base.map((b, k) => Math.round(b + (target[k] - b) * Math.abs(x)));
  return 'rgb(' + c.join(',') + ')';
}

// tasks: names; matrix: rows so far; a T x T grid, empty cells for rows still to come.
function heatmap(tasks, matrix, options) {
  const opts = Object.assign({ higherIsBetter: true, diverging: false, metrics: true }, options);
  const n = Math.max(tasks.length, matrix.length);
  const cell = Math.max(34, Math.min(64, Math.floor(560 / Math.max(n, 1))));
  const left = 90;
  const top = 48;
  const metricsWidth = opts.metrics ? 210 : 0;
  const width = left + n * cell + metricsWidth + 10;
  const height = top + n * cell + 10;
  const values = matrix.flat().filter((v) => Number.isFinite(v));
  const low = Math.min(...values, opts.diverging ? 0 : Infinity);
  const high = Math.max(...values, opts.diverging ? 0 : -Infinity);
  const limit = Math.max(Math.abs(low), Math.abs(high), 1e-9);
  const root = svg('svg', { class: 'heatmap', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'img', 'aria-label': opts.label || 'evaluation matrix' });
  for (let j = 0; j < n; j += 1) {
    const name = tasks[j] || 'task ' + (j + 1);
    root.append(svg('text', { x: left + j * cell + cell / 2, y: top - 8, 'text-anchor': 'middle' },
      name.length > 8 ? name.slice(0, 7) + '…' : name));
  }
  root.append(svg('text', { x: left + (n * cell) / 2, y: 14, 'text-anchor': 'middle', fill: '#6b7380' },
    'evaluated on task →'));
  const metrics = opts.metrics ? rowMetrics(matrix, opts.higherIsBetter) : [];
  if (opts.metrics) {
    const x0 = left + n * cell + 12;
    [['avg', 0], ['forget', 70], ['BWT', 140]].forEach(([label, dx]) =>
      root.append(svg('text', { x: x0 + dx, y: top - 8, fill: '#6b7380' }, label)));
  }
  for (let i = 0; i < n; i += 1) {
    root.append(svg('text', { x: left - 8, y: top + i * cell + cell / 2 + 4, 'text-anchor': 'end' },
      'after ' + (i + 1)));
    for (let j = 0; j < n; j += 1) {
      const value = matrix[i] ? matrix[i][j] : undefined;
      const filled = value !== undefined && value !== null;
      const fill = !filled ? '#f0f2f5'
        : opts.diverging ? divergingColor(value, limit) : heatColor(value, low, high, opts.higherIsBetter);
      const rect = svg('rect', { x: left + j * cell + 1, y: top + i * cell + 1, width: cell - 2,
        height: cell - 2, fill, rx: 2, 'data-row': i, 'data-column': j,
        class: filled ? 'cell filled' : 'cell' });
      rect.append(svg('title', {}, filled ? `after task ${i + 1}, task ${j + 1}: ${value.toFixed(4)}` : 'not yet'));
      root.append(rect);
      if (filled) {
        const dark = opts.diverging ? false : (opts.higherIsBetter ? value : high - value + low) > (low + high) / 2;
        root.append(svg('text', { x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4,
          'text-anchor': 'middle', fill: dark ? '#fff' : '#1d2430' },
        opts.diverging ? (value >= 0 ? '+' : '') + value.toFixed(3) : value.toFixed(3)));
      }
    }
    if (opts.metrics && metrics[i]) {
      const x0 = left + n * cell + 12;
      const y = top + i * cell + cell / 2 + 4;
      root.append(svg('text', { x: x0, y }, metrics[i].average.toFixed(4)));
      root.append(svg('text', { x: x0 + 70, y }, fmt.number(metrics[i].forgetting)));
      root.append(svg('text', { x: x0 + 140, y }, fmt.signed(metrics[i].bwt)));
    }
  }
  return root;
}

// --- runs list --------------------------------------------------------------------------------

// One row of the runs list; ticking a run's box adds it to `selected` and calls `onSelect`.
function runRow(run, selected, onSelect) {
  const r = run.results || {};
  const comparison = run.kind === 'compare';
  const box = comparison ? '' : h('input', { type: 'checkbox', 'aria-label': 'select ' + run.name,
    checked: selected.has(run.name),
    onchange: (e) => {
      if (e.target.checked) selected.add(run.name); else selected.delete(run.name);
      onSelect();
    } });
  const average = r.average !== null && r.average !== undefined ? fmt.number(r.average)
    : (r.average_so_far !== undefined ? fmt.number(r.average_so_far) + ' so far' : (r.verdict || '–'));
  const where = comparison ? `${run.progress.finished_runs}/${run.progress.runs} runs`
    : (run.progress.tasks ? `task ${Math.min(run.progress.task + 1, run.progress.tasks)}/${run.progress.tasks}` : '');
  return h('tr', { 'data-run': run.name },
    h('td', {}, box),
    h('td', {}, h('a', { href: (comparison ? '#/comparison/' : '#/run/') + encodeURIComponent(run.name) }, run.name),
      comparison ? h('span', { class: 'muted' }, ' (A/B: ' + (run.arms || []).join(' vs ') + ')') : null),
    h('td', {}, statusBadge(run.status)),
    h('td', {}, progressBar(run.progress.fraction), ' ', where),
    h('td', { class: 'num' }, average),
    h('td', { class: 'num' }, fmt.number(r.forgetting)),
    h('td', { class: 'num' }, fmt.signed(r.backward_transfer)),
    h('td', { class: 'num' }, fmt.bytes(r.peak_rss_bytes)),
    h('td', { class: 'num' }, fmt.seconds(r.wall_seconds)),
    h('td', {}, comparison ? '–' : (run.plugins || []).join(', ') || 'none'),
    h('td', { class: 'muted' }, fmt.date(run.started)));
}

function runsPage() {
  const state = { offset: 0, limit: 50, selected: new Set() };
  const text = h('input', { placeholder: 'name contains', 'aria-label': 'filter by name' });
  const plugin = h('input', { placeholder: 'plug-in id', size: 12, 'aria-label': 'filter by plug-in' });
  const status = h('select', { 'aria-label': 'filter by status' },
    ['', 'running', 'starting', 'complete', 'failed', 'interrupted'].map((s) => h('option', { value: s }, s || 'any status')));
  const compare = h('button', { class: 'secondary', disabled: true, onclick: () => {
    const [a, b] = [...state.selected];
    location.hash = '#/compare?a=' + encodeURIComponent(a) + '&b=' + encodeURIComponent(b);
  } }, 'Compare 2 selected');
  const body = h('tbody');
  const pager = h('div', { class: 'row' });
  const count = h('span', { class: 'muted' });
  main.replaceChildren(h('h1', {}, 'Runs'),
    h('div', { class: 'filters' }, text, plugin, status, compare, count),
    h('div', { class: 'card' }, h('table', { id: 'runs' },
      h('thead', {}, h('tr', {}, ['', 'run', 'status', 'progress', 'average', 'forgetting', 'BWT',
        'peak memory', 'wall time', 'plug-ins', 'started'].map((c, k) => h('th', { class: k >= 4 && k <= 8 ? 'num' : '' }, c)))),
      body), pager));

  async function load() {
    const query = new URLSearchParams({ offset: state.offset, limit: state.limit, q: text.value,
      plugin: plugin.value, status: status.value });
    let page;
    try {
      page = await api('/api/runs?' + query);
    } catch (error) {
      body.replaceChildren(h('tr', {}, h('td', { colspan: 11, class: 'error-box' }, error.message)));
      return;
    }
    count.textContent = page.total + ' run' + (page.total === 1 ? '' : 's');
    body.replaceChildren(...page.runs.map((run) => runRow(run, state.selected, () => {
      compare.disabled = state.selected.size !== 2;
    })));
    pager.replaceChildren(
      h('button', { class: 'secondary', disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(); } }, '← newer'),
      h('span', { class: 'muted' }, `${page.total ? state.offset + 1 : 0}–${state.offset + page.runs.length} of ${page.total}`),
      h('button', { class: 'secondary', disabled: state.offset + state.limit >= page.total, onclick: () => { state.offset += state.limit; load(); } }, 'older →'));
  }
  let typing;
  const refilter = () => { clearTimeout(typing); typing = setTimeout(() => { state.offset = 0; load(); }, 250); };
  text.addEventListener('input', refilter);
  plugin.addEventListener('input', refilter);
  status.addEventListener('change', refilter);
  load();
  const timer = setInterval(load, 5000);
  leavePage = () => clearInterval(timer);
}

// --- one run, live ----------------------------------------------------------------------------

class RunPage {
  constructor(name) {
    this.name = name;
    this.run = null;
    this.chart = null;
    this.memoryChart = null;
    this.build();
    this.connect();
  }

  build() {
    this.title = h('h1', {}, this.name, ' ');
    this.badge = h('span');
    this.title.append(this.badge);
    this.stopButton = h('button', { id: 'stop', onclick: () => this.stop() }, 'Stop');
    this.resumeButton = h('button', { id: 'resume', class: 'secondary', onclick: () => this.resume() }, 'Resume');
    this.reportLink = h('a', { id: 'report', href: '/api/runs/' + encodeURIComponent(this.name) + '/report', target: '_blank' }, 'HTML report');
    this.message = h('div', { class: 'error-box' });
    this.figures = h('div', { class: 'figures' });
    this.heat = h('div', { id: 'heatmap' });
    this.chartBox = h('div', { class: 'chart-box' }, h('canvas', { id: 'curves' }));
    this.batchBox = h('div');
    this.memoryBox = h('div', { class: 'chart-box', hidden: true }, h('canvas', { id: 'memory' }));
    this.memoryNote = h('p', { class: 'muted' }, 'the memory timeline appears here when the run was profiled (--profile-memory) and has ended');
    this.config = h('pre');
    this.plugins = h('p');
    this.log = h('pre', { hidden: true });
    main.replaceChildren(this.title,
      h('div', { class: 'card' }, h('div', { class: 'row' }, this.stopButton, this.resumeButton, this.reportLink), this.message),
      h('div', { class: 'card' }, this.figures),
      h('div', { class: 'grid' },
        h('div', { class: 'card' }, h('h2', {}, 'Evaluation matrix'), this.heat),
        h('div', { class: 'card' }, h('h2', {}, 'Loss and penalty (task boundaries dashed)'), this.chartBox)),
      h('div', { class: 'grid' },
        h('div', { class: 'card' }, h('h2', {}, 'Batch size and out-of-memory retries'), this.batchBox),
        h('div', { class: 'card' }, h('h2', {}, 'Memory'), this.memoryNote, this.memoryBox)),
      h('div', { class: 'grid' },
        h('div', { class: 'card' }, h('h2', {}, 'Configuration'), this.plugins, this.config),
        h('div', { class: 'card' }, h('h2', {}, 'Console output'), this.log)));
  }

  connect() {
    const url = '/api/runs/' + encodeURIComponent(this.name) + '/stream';
    this.source = new EventSource(url);
    const connection = document.getElementById('connection');
    this.source.onopen = () => { connection.textContent = 'live'; };
    this.source.onerror = () => {
      // EventSource reconnects by itself; the server then sends a fresh snapshot.
      if (this.run && !['running', 'starting'].includes(this.run.status)) this.source.close();
      connection.textContent = this.source.readyState === EventSource.CLOSED ? '' : 'reconnecting…';
    };
    const on = (kind, handler) => this.source.addEventListener(kind, (e) => handler(JSON.parse(e.data)));
    on('snapshot', (snapshot) => { this.run = snapshot; this.renderAll(); });
    on('progress', (events) => events.forEach((e) => this.applyProgress(e)));
    on('run_begin', () => this.refresh());
    on('task_begin', (e) => { this.run.progress.task = e.task; this.run.task_first_step[e.task] = e.global_step; this.renderChart(); this.renderFigures(); });
    on('evaluation', (e) => this.applyEvaluation(e));
    on('batch', (e) => { this.run.batch_events.push(e); this.run.batch_event_count += 1; if (e.kind === 'out_of_memory') this.run.out_of_memory_retries += 1; this.renderBatches(); });
    on('checkpoint', (e) => { this.run.checkpoints += 1; this.run.last_checkpoint = e; this.renderFigures(); });
    on('task_end', (e) => { const t = this.run.tasks[e.task]; if (t) Object.assign(t, e); });
    on('run_end', () => {});
    on('status', (e) => { this.run.status = e.status; this.refresh(); });
    on('end', () => { this.source.close(); connection.textContent = ''; });
  }

  leave() {
    if (this.source) this.source.close();
    if (this.chart) this.chart.destroy();
    if (this.memoryChart) this.memoryChart.destroy();
    document.getElementById('connection').textContent = '';
  }

  // A (re)start or an end changes much at once: take the server's whole state again.
  async refresh() {
    try {
      this.run = await api('/api/runs/' + encodeURIComponent(this.name));
      this.renderAll();
    } catch (error) { this.message.textContent = error.message; }
  }

  applyProgress(e) {
    const c = this.run.curves;
    this.run.progress = Object.assign(this.run.progress, {
      task: e.task, step: e.step, global_step: e.global_step, loss: e.loss,
      samples_per_second: e.samples_per_second, batch_size: e.batch_size, micro_batch: e.micro_batch,
      updated: e.t });
    if (e.loss !== null) {
      c.step.push(e.global_step); c.loss.push(e.loss); c.loss_min.push(e.loss); c.loss_max.push(e.loss);
      c.penalty.push(e.penalty);
    }
    // Keep the chart smooth: above 2,000 points, neighbours merge.
    if (c.step.length > 2000) {
      const merged = { step: [], loss: [], loss_min: [], loss_max: [], penalty: [] };
      for (let i = 0; i + 1 < c.step.length; i += 2) {
        merged.step.push(c.step[i + 1]);
        merged.loss.push((c.loss[i] + c.loss[i + 1]) / 2);
        merged.loss_min.push(Math.min(c.loss_min[i], c.loss_min[i + 1]));
        merged.loss_max.push(Math.max(c.loss_max[i], c.loss_max[i + 1]));
        merged.penalty.push((c.penalty[i] + c.penalty[i + 1]) / 2);
      }
      Object.assign(c, merged);
    }
    this.renderFigures();
    this.scheduleChart();
  }

  applyEvaluation(e) {
    if (e.after_task < 0) { this.run.baseline = e.row; return; }
    this.run.matrix = this.run.matrix.slice(0, e.after_task);
    this.run.matrix.push(e.row);
    this.renderHeatmap();
    this.renderFigures();
  }

  renderAll() {
    this.renderStatus();
    this.renderFigures();
    this.renderHeatmap();
    this.renderChart();
    this.renderBatches();
    this.config.textContent = this.run.config_toml || '(no config.toml yet)';
    this.plugins.textContent = 'plug-ins: ' + ((this.run.plugins || []).join(', ') || 'none (fine-tuning)');
    if (!['running', 'starting'].includes(this.run.status)) this.loadExtras();
    else this.loadLog();
  }

  renderStatus() {
    const s = this.run.status;
    this.badge.replaceChildren(statusBadge(s));
    this.stopButton.disabled = !['running', 'starting'].includes(s);
    this.resumeButton.disabled = !['interrupted', 'failed'].includes(s) || !this.run.config_toml;
    this.reportLink.hidden = !this.run.has_results;
    this.message.textContent = this.run.status_message || '';
  }

  renderFigures() {
    const r = this.run;
    const p = r.progress || {};
    const tasks = r.tasks || [];
    const task = tasks[p.task] || {};
    const remaining = tasks.reduce((sum, t, i) => sum + (i > p.task ? (t.steps || 0) * (t.batch_size || 0) : 0), 0)
      + ((task.steps || 0) - (p.step || 0)) * (p.batch_size || task.batch_size || 0);
    const eta = r.status === 'running' && p.samples_per_second > 0 ? remaining / p.samples_per_second : null;
    const last = r.matrix.length ? rowMetrics(r.matrix, r.better !== 'lower')[r.matrix.length - 1] : null;
    const figure = (label, value, id) => h('div', { class: 'figure' }, h('div', { class: 'value', id }, value), h('div', { class: 'label' }, label));
    this.figures.replaceChildren(
      figure('task', tasks.length ? `${Math.min((p.task ?? -1) + 1, tasks.length)}/${tasks.length}` : '–', 'fig-task'),
      figure('step in task', task.steps ? `${p.step || 0}/${task.steps}` : '–', 'fig-step'),
      figure('progress', progressBar(p.fraction !== undefined ? Math.max(p.fraction, (p.global_step || 0) / Math.max(p.total_steps || 1, 1)) : 0)),
      figure('samples/s', p.samples_per_second ? p.samples_per_second.toFixed(0) : '–'),
      figure('ETA (training)', eta !== null ? fmt.seconds(eta) : '–'),
      figure('loss', fmt.number(p.loss)),
      figure('batch / micro-batch', p.batch_size ? `${p.batch_size} / ${p.micro_batch}` : '–'),
      figure('average ' + (r.metric || 'accuracy') + (r.status === 'complete' ? '' : ' so far'), last ? last.average.toFixed(4) : '–', 'fig-average'),
      figure('forgetting', last ? fmt.number(last.forgetting) : '–'),
      figure('BWT', last ? fmt.signed(last.bwt) : '–'),
      figure('checkpoints', String(r.checkpoints || 0)),
      figure('OOM retries', String(r.out_of_memory_retries || 0)));
  }

  renderHeatmap() {
    const names = (this.run.tasks || []).map((t) => t.name);
    this.heat.replaceChildren(heatmap(names, this.run.matrix || [], { higherIsBetter: this.run.better !== 'lower' }));
  }

  scheduleChart() {
    if (this.chartPending) return;
    this.chartPending = true;
    setTimeout(() => { this.chartPending = false; this.updateChart(); }, 300);
  }

  renderChart() {
    if (typeof Chart === 'undefined') {
      this.chartBox.replaceChildren(h('p', { class: 'muted' }, 'Chart.js is not installed on the server (libjs-chart.js)'));
      return;
    }
    if (this.chart) { this.updateChart(); return; }
    const page = this;
    const boundaries = {
      id: 'taskBoundaries',
      afterDraw(chart) {
        const { ctx, chartArea, scales } = chart;
        ctx.save();
        ctx.strokeStyle = '#8a93a3';
        ctx.setLineDash([4, 4]);
        (page.run.task_first_step || []).forEach((step, i) => {
          if (i === 0) return;
          const x = scales.x.getPixelForValue(step);
          if (x < chartArea.left || x > chartArea.right) return;
          ctx.beginPath(); ctx.moveTo(x, chartArea.top); ctx.lineTo(x, chartArea.bottom); ctx.stroke();
        });
        ctx.restore();
      },
    };
    this.chart = new Chart(this.chartBox.querySelector('canvas'), {
      type: 'line',
      data: { datasets: [
        { label: 'loss', data: [], borderColor: '#2f5fb3', pointRadius: 0, borderWidth: 1.5, yAxisID: 'y' },
        { label: 'loss range', data: [], borderColor: 'rgba(47,95,179,0)', pointRadius: 0, borderWidth: 0, yAxisID: 'y' },
        { label: 'loss range', data: [], borderColor: 'rgba(47,95,179,0)', backgroundColor: 'rgba(47,95,179,0.12)', pointRadius: 0, borderWidth: 0, fill: '-1', yAxisID: 'y' },
        { label: 'penalty', data: [], borderColor: '#b3261e', pointRadius: 0, borderWidth: 1.5, yAxisID: 'y1' },
      ] },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
        interaction: { mode: 'nearest', intersect: false, axis: 'x' },
        scales: { x: { type: 'linear', title: { display: true, text: 'optimizer step' } },
          y: { title: { display: true, text: 'loss' } },
          y1: { position: 'right', grid: { drawOnChartArea: false }, title: { display: true, text: 'penalty' } } },
        plugins: { legend: { labels: { filter: (item) => item.text !== 'loss range' } } },
      },
      plugins: [boundaries],
    });
    this.updateChart();
  }

  updateChart() {
    if (!this.chart) return;
    const c = this.run.curves;
    const points = (ys) => c.step.map((x, i) => ({ x, y: ys[i] }));
    this.chart.data.datasets[0].data = points(c.loss);
    this.chart.data.datasets[1].data = points(c.loss_min);
    this.chart.data.datasets[2].data = points(c.loss_max);
    this.chart.data.datasets[3].data = points(c.penalty);
    this.chart.update('none');
  }

  renderBatches() {
    const events = (this.run.batch_events || []).slice(-50).reverse();
    this.batchBox.replaceChildren(...[
      h('p', { class: 'muted' }, `${this.run.batch_event_count || 0} batch event(s), ${this.run.out_of_memory_retries || 0} out-of-memory retr${this.run.out_of_memory_retries === 1 ? 'y' : 'ies'}`),
      events.length ? h('table', {}, h('thead', {}, h('tr', {}, ['task', 'step', 'batch', 'micro-batch', 'what'].map((c) => h('th', {}, c)))),
        h('tbody', {}, events.map((e) => h('tr', {}, h('td', {}, e.task + 1), h('td', {}, e.step), h('td', {}, e.batch_size), h('td', {}, e.micro_batch), h('td', {}, e.what))))) : null].filter(Boolean));
  }

  async loadLog() {
    if (!this.run.launched) return;
    try {
      const response = await fetch('/api/runs/' + encodeURIComponent(this.name) + '/log');
      if (response.ok) {
        this.log.textContent = await response.text();
        this.log.hidden = false;
        this.log.scrollTop = this.log.scrollHeight;  // the latest lines
      }
    } catch (error) { /* the log is optional */ }
  }

  async loadExtras() {
    this.loadLog();
    if (this.memoryLoaded || !this.run.has_memory_profile || typeof Chart === 'undefined') return;
    const response = await fetch('/api/runs/' + encodeURIComponent(this.name) + '/memory');
    if (!response.ok) return;
    this.memoryLoaded = true;
    const profile = await response.json();
    const s = profile.samples;
    this.memoryNote.textContent = 'from ' + profile.file;
    this.memoryBox.hidden = false;
    const series = (ys) => s.t_s.map((x, i) => ({ x, y: ys[i] / 1048576 }));
    this.memoryChart = new Chart(this.memoryBox.querySelector('canvas'), {
      type: 'line',
      data: { datasets: [
        { label: 'RSS (MiB)', data: series(s.rss_bytes), borderColor: '#2f5fb3', pointRadius: 0, borderWidth: 1.5 },
        { label: 'LibTorch tensors (MiB)', data: series(s.tensor_bytes), borderColor: '#1e7b34', pointRadius: 0, borderWidth: 1.5 },
      ] },
      options: { animation: false, maintainAspectRatio: false, parsing: false,
        scales: { x: { type: 'linear', title: { display: true, text: 'seconds since the run began' } },
          y: { title: { display: true, text: 'MiB' } } } },
    });
  }

  async stop() {
    this.stopButton.disabled = true;
    try {
      const reply = await api('/api/runs/' + encodeURIComponent(this.name) + '/stop', { method: 'POST' });
      this.message.textContent = reply.message;
    } catch (error) { this.message.textContent = error.message; }
  }

  async resume() {
    this.resumeButton.disabled = true;
    try {
      await api('/api/runs/' + encodeURIComponent(this.name) + '/resume', { method: 'POST' });
      this.message.textContent = 'resuming…';
      this.memoryLoaded = false;
      if (this.source) this.source.close();
      this.connect();
    } catch (error) { this.message.textContent = error.message; this.resumeButton.disabled = false; }
  }
}

// --- launch -----------------------------------------------------------------------------------

// The launch form's inputs, laid out on the page.
function buildLaunchForm() {
  const f = {
    configSelect: h('select', { id: 'config-file', 'aria-label': 'config from the configs directory' }, h('option', { value: '' }, '(paste your own)')),
    editor: h('textarea', { id: 'config-text', rows: 22, spellcheck: 'false', 'aria-label': 'config (TOML)' }),
    overrides: h('textarea', { id: 'overrides', rows: 4, spellcheck: 'false', placeholder: 'train.lr=5e-4\nrun.seed=3', 'aria-label': 'overrides, one KEY=VALUE per line' }),
    replace: h('input', { type: 'checkbox', id: 'replace-plugins' }),
    pluginBoxes: h('div', { class: 'row' }),
    name: h('input', { id: 'run-name', placeholder: 'run name (default: run.name + time)', size: 36 }),
    verdict: h('div', { id: 'validation' }),
    start: h('button', { id: 'start', disabled: true }, 'Start'),
    armA: h('input', { id: 'arm-a', size: 30, value: 'plugins=', 'aria-label': 'arm A overrides' }),
    armB: h('input', { id: 'arm-b', size: 30, value: 'plugins=ewc', 'aria-label': 'arm B overrides' }),
    seeds: h('input', { id: 'seeds', type: 'number', min: 1, max: 100, value: 3, style: 'width:5em' }),
    jobs: h('input', { id: 'jobs', type: 'number', min: 1, max: 64, value: 1, style: 'width:5em' }),
    compareStart: h('button', { id: 'start-compare', class: 'secondary', disabled: true }, 'Start comparison'),
  };
  const heading = (text) => h('h2', { style: 'margin-top:14px' }, text);
  main.replaceChildren(h('h1', {}, 'Launch a run'),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('div', { class: 'row' }, 'config ', f.configSelect), h('p'), f.editor),
      h('div', { class: 'card' },
        h('h2', {}, 'Plug-ins'), h('label', {}, f.replace, ' replace the config\'s pipeline with:'), f.pluginBoxes,
        heading('Overrides (--set)'), f.overrides,
        heading('Run'), h('div', { class: 'row' }, f.name, f.start),
        heading('Validation'), f.verdict,
        heading('Or: an A/B comparison over paired seeds'),
        h('p', { class: 'muted' }, 'each arm: ";"-separated overrides of this config, e.g. plugins=ewc;train.lr=5e-4 (clhost compare)'),
        h('div', { class: 'row' }, 'A ', f.armA, ' B ', f.armB),
        h('div', { class: 'row', style: 'margin-top:6px' }, 'seeds ', f.seeds, ' jobs ', f.jobs, f.compareStart))));
  return f;
}

// What the form asks for, as POST /api/validate and /api/launch take it.
function launchFormValues(f) {
  return {
    name: f.name.value.trim(),
    config: f.editor.value,
    set: f.overrides.value.split('\n').map((s) => s.trim()).filter((s) => s && !s.startsWith('#')),
    plugins: f.replace.checked ? [...f.pluginBoxes.querySelectorAll('input.plugin:checked')].map((b) => b.value) : null,
  };
}

// clhost validate's answer: errors with their line, column and key, then warnings.
function showValidation(verdict, reply) {
  const where = (e) => (e.line ? `line ${e.line}, column ${e.column}: ` : '') + (e.key && !e.message.startsWith(e.key) ? e.key + ': ' : '');
  verdict.replaceChildren(...[
    reply.valid ? h('p', { class: 'ok' }, '✓ ' + (reply.message || 'valid')) : null,
    reply.errors.length ? h('ul', { class: 'errors' }, reply.errors.map((e) => h('li', { 'data-line': e.line || '' }, where(e) + e.message))) : null,
    reply.warnings.length ? h('ul', { class: 'warn' }, reply.warnings.map((w) => h('li', {}, w))) : null].filter(Boolean));
}

// Start (a run) and Start comparison: on success the page of what started, else the errors.
function wireLaunchButtons(f) {
  f.compareStart.addEventListener('click', async () => {
    f.compareStart.disabled = true;
    try {
      const body = Object.assign(launchFormValues(f), { a: f.armA.value, b: f.armB.value, seeds: Number(f.seeds.value), jobs: Number(f.jobs.value) });
      const reply = await api('/api/compare', { body });
      location.hash = '#/comparison/' + encodeURIComponent(reply.name);
    } catch (error) {
      f.verdict.replaceChildren(h('p', { class: 'error-box' }, error.message));
      f.compareStart.disabled = false;
    }
  });
  f.start.addEventListener('click', async () => {
    f.start.disabled = true;
    try {
      const reply = await api('/api/launch', { body: launchFormValues(f) });
      location.hash = '#/run/' + encodeURIComponent(reply.name);
    } catch (error) {
      const errors = (error.body && error.body.errors) || [];
      f.verdict.replaceChildren(h('p', { class: 'error-box' }, error.message),
        h('ul', { class: 'errors' }, errors.map((e) => h('li', {}, (e.line ? `line ${e.line}: ` : '') + e.message))));
      f.start.disabled = false;
    }
  });
}

async function launchPage() {
  const f = buildLaunchForm();
  const [configs, plugins] = await Promise.all([api('/api/configs'), api('/api/plugins')]);
  configs.configs.forEach((c) => f.configSelect.append(h('option', { value: c.name }, c.name)));
  plugins.plugins.forEach((p) => f.pluginBoxes.append(h('label', { title: p.description },
    h('input', { type: 'checkbox', value: p.id, class: 'plugin' }), ' ' + p.id + ' ', h('span', { class: 'muted' }, '(' + p.kind + ')'))));
  const preferred = configs.configs.find((c) => c.name === 'quick.toml') || configs.configs[0];
  if (preferred) { f.configSelect.value = preferred.name; f.editor.value = preferred.text; }

  let generation = 0;
  async function validate() {
    const mine = ++generation;
    f.verdict.replaceChildren(h('span', { class: 'muted' }, 'checking…'));
    f.start.disabled = true;
    let reply;
    try { reply = await api('/api/validate', { body: launchFormValues(f) }); } catch (error) { reply = { valid: false, errors: [{ message: error.message }], warnings: [] }; }
    if (mine !== generation) return;  // a newer edit is being checked
    showValidation(f.verdict, reply);
    f.start.disabled = !reply.valid;
    f.compareStart.disabled = !reply.valid;
  }
  let typing;
  const changed = () => { clearTimeout(typing); typing = setTimeout(validate, 500); };
  [f.editor, f.overrides, f.name].forEach((input) => input.addEventListener('input', changed));
  f.replace.addEventListener('change', changed);
  f.pluginBoxes.addEventListener('change', changed);
  f.configSelect.addEventListener('change', () => {
    const chosen = configs.configs.find((c) => c.name === f.configSelect.value);
    if (chosen) f.editor.value = chosen.text;
    changed();
  });
  wireLaunchButtons(f);
  validate();
}

// --- compare ----------------------------------------------------------------------------------

async function comparePage(params) {
  const a = params.get('a');
  const b = params.get('b');
  if (!a || !b) {
    main.replaceChildren(h('h1', {}, 'Compare'), h('p', {}, 'Select two finished runs in the ', h('a', { href: '#/' }, 'runs list'),
      ' and press "Compare 2 selected". For an A/B comparison over seeds, with intervals, run ',
      h('code', {}, 'clhost compare'), ' (docs/cli.md) and open its compare.html.'));
    return;
  }
  main.replaceChildren(h('h1', {}, 'Compare'), h('p', { class: 'muted' }, 'loading…'));
  let c;
  try { c = await api('/api/compare?' + new URLSearchParams({ a, b })); } catch (error) {
    main.replaceChildren(h('h1', {}, 'Compare'), h('p', { class: 'error-box' }, error.message));
    return;
  }
  const stats = c.statistics;
  const names = c.a_matrix.map((_, i) => 'task ' + (i + 1));
  main.replaceChildren(h('h1', {}, 'Compare ', h('a', { href: '#/run/' + encodeURIComponent(a) }, a), ' (A) and ', h('a', { href: '#/run/' + encodeURIComponent(b) }, b), ' (B)'),
    h('div', { class: 'card' }, statisticsTable(stats), h('p', { class: 'muted' }, stats.method)),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'A: ' + a), heatmap(names, c.a_matrix, { higherIsBetter: c.higher_is_better })),
      h('div', { class: 'card' }, h('h2', {}, 'B: ' + b), heatmap(names, c.b_matrix, { higherIsBetter: c.higher_is_better }))),
    h('div', { class: 'card' }, h('h2', {}, 'B − A (' + c.metric + ')'), heatmap(names, c.difference_b_minus_a, { diverging: true, metrics: false, label: 'difference B minus A' })));
}

// --- an A/B comparison over seeds (clhost compare, launched here) -------------------------------

// compare.json's metrics table, each figure in its own unit.
function statisticsTable(statistics) {
  const format = (key, v, signed) => {
    if (v === null || v === undefined) return '–';
    if (key === 'peak_rss_bytes') return (signed && v >= 0 ? '+' : '') + (v < 0 ? '−' + fmt.bytes(-v) : fmt.bytes(v));
    const digits = key === 'samples_per_second' ? 0 : key === 'wall_seconds' ? 2 : 4;
    return signed ? fmt.signed(v, digits) : fmt.number(v, digits);
  };
  const cell = (key, m, signed) => {
    if (!m) return '–';
    const interval = m.low !== null && m.low !== undefined ? ` [${format(key, m.low, signed)}, ${format(key, m.high, signed)}]` : '';
    return format(key, m.mean, signed) + interval;
  };
  return h('table', { id: 'compare-table' },
    h('thead', {}, h('tr', {}, ['metric', 'A (95% interval)', 'B', 'B − A (paired)', 'verdict'].map((x) => h('th', {}, x)))),
    h('tbody', {}, Object.entries(statistics.metrics).map(([key, m]) => h('tr', {},
      h('td', {}, m.label), h('td', {}, cell(key, m.a)), h('td', {}, cell(key, m.b)),
      h('td', {}, cell(key, m.difference_b_minus_a, true)), h('td', {}, m.verdict)))));
}

function comparisonPage(name) {
  const title = h('h1', {}, name, ' ');
  const body = h('div');
  const message = h('div', { class: 'error-box' });
  const stop = h('button', { id: 'stop' }, 'Stop');
  const resume = h('button', { id: 'resume', class: 'secondary' }, 'Resume');
  main.replaceChildren(title, h('div', { class: 'card' }, h('div', { class: 'row' }, stop, resume,
    h('a', { href: '/api/runs/' + encodeURIComponent(name) + '/compare_page', target: '_blank', id: 'compare-page' }, 'compare.html')), message), body);
  let timer;
  async function load() {
    let c;
    try { c = await api('/api/runs/' + encodeURIComponent(name)); } catch (error) { message.textContent = error.message; return; }
    title.replaceChildren(name, ' ', statusBadge(c.status));
    stop.disabled = c.status !== 'running';
    resume.disabled = c.status !== 'failed';
    message.textContent = c.status_message || '';
    const parts = [h('div', { class: 'card' }, h('h2', {}, 'Progress'), progressBar(c.progress.fraction),
      ` ${c.progress.finished_runs} of ${c.progress.runs} runs finished (arms: ${(c.arms || []).join(' vs ')})`)];
    if (c.statistics) {
      parts.push(h('div', { class: 'card' }, statisticsTable(c.statistics), h('p', { class: 'muted' }, c.statistics.method)));
      const names = (c.a_matrix || []).map((_, i) => 'task ' + (i + 1));
      const better = c.metric !== 'bits_per_byte';
      parts.push(h('div', { class: 'grid' },
        h('div', { class: 'card' }, h('h2', {}, 'A, mean over seeds'), heatmap(names, c.a_matrix, { higherIsBetter: better })),
        h('div', { class: 'card' }, h('h2', {}, 'B, mean over seeds'), heatmap(names, c.b_matrix, { higherIsBetter: better }))));
      parts.push(h('div', { class: 'card' }, h('h2', {}, 'B − A'), heatmap(names, c.difference_b_minus_a, { diverging: true, metrics: false, label: 'difference B minus A' })));
    }
    body.replaceChildren(...parts);
    if (c.status !== 'running') clearInterval(timer);
  }
  stop.addEventListener('click', async () => {
    try { message.textContent = (await api('/api/runs/' + encodeURIComponent(name) + '/stop', { method: 'POST' })).message; } catch (error) { message.textContent = error.message; }
  });
  resume.addEventListener('click', async () => {
    try { await api('/api/runs/' + encodeURIComponent(name) + '/resume', { method: 'POST' }); clearInterval(timer); timer = setInterval(load, 2000); load(); } catch (error) { message.textContent = error.message; }
  });
  load();
  timer = setInterval(load, 2000);
  leavePage = () => clearInterval(timer);
}

// --- routing ----------------------------------------------------------------------------------

function route() {
  leavePage();
  leavePage = () => {};
  const hash = location.hash || '#/';
  const [path, query] = hash.slice(1).split('?');
  if (path.startsWith('/comparison/')) {
    comparisonPage(decodeURIComponent(path.slice(12)));
  } else if (path.startsWith('/run/')) {
    const page = new RunPage(decodeURIComponent(path.slice(5)));
    leavePage = () => page.leave();
  } else if (path === '/launch') {
    launchPage().catch((error) => main.replaceChildren(h('p', { class: 'error-box' }, error.message)));
  } else if (path === '/compare') {
    comparePage(new URLSearchParams(query || ''));
  } else {
    runsPage();
  }
}

window.addEventListener('hashchange', route);
route();
