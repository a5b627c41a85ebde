// The node drawer: GET /api/deploy/{sr}/nodes/{node}: its steps with durations, its audit
// trail, its error in full.
import {h, clear, fmtClock, fmtDuration, badge} from './dom.js';
import {api, enc} from './api.js';

export class NodeDrawer {
  constructor(sr, onClose) {
    this.sr = sr;
    this.name = null;
    this.body = h('div', {class: 'drawer-body'});
    this.title = h('h2', {id: 'drawer-title'});
    this.closeBtn = h('button', {type: 'button', class: 'btn small', id: 'drawer-close', 'aria-label': 'Close the node drawer',
                                 text: 'Close', on: {click: () => onClose()}});
    this.el = h('aside', {class: 'drawer', id: 'drawer', hidden: true, role: 'dialog', 'aria-labelledby': 'drawer-title'},
      h('div', {class: 'drawer-head'}, this.title, this.closeBtn), this.body);
    this.onKey = (e) => { if (e.key === 'Escape' && this.name) onClose(); };
    document.addEventListener('keydown', this.onKey);
    this.last = 0;
    this.timer = 0;
  }

  async open(name) {
    const first = this.name !== name;
    this.name = name;
    this.el.hidden = false;
    this.el.dataset.node = name;
    this.title.textContent = name;
    if (first) { clear(this.body).append(h('p', {class: 'muted', text: 'Loading…'})); this.closeBtn.focus(); }
    this.last = Date.now();
    try {
      const d = await api('GET', `/api/deploy/${enc(this.sr)}/nodes/${enc(name)}`);
      const text = JSON.stringify(d);
      if (this.name === name && (first || text !== this.shown)) { this.shown = text; this.render(d); }
    } catch (e) {
      if (this.name === name) clear(this.body).append(h('p', {class: 'error', role: 'alert', text: e.message}));
    }
  }

  /** The node changed: read it again, at most once a second. */
  changed(name) {
    if (name !== this.name || this.timer) return;
    const wait = Math.max(0, 1000 - (Date.now() - this.last));
    this.timer = setTimeout(() => { this.timer = 0; if (this.name) this.open(this.name); }, wait);
  }

  hide() {
    this.name = null;
    this.el.hidden = true;
    delete this.el.dataset.node;
  }

  render(d) {
    clear(this.body);
    this.body.append(h('dl', {class: 'facts'},
      h('dt', {text: 'tier'}), h('dd', {text: String(d.tier)}),
      h('dt', {text: 'state'}), h('dd', {id: 'drawer-state'}, badge(d.state)),
      h('dt', {text: 'step'}), h('dd', {text: d.step || '—'})));
    if (d.error) {
      this.body.append(h('h3', {text: 'Error'}), h('pre', {class: 'error-full', id: 'drawer-error', text: d.error}));
    }
    this.body.append(h('h3', {text: 'Steps'}));
    const steps = d.steps || [];
    if (!steps.length) this.body.append(h('p', {class: 'muted', text: 'No step has run on this node yet.'}));
    else this.body.append(h('table', {class: 'grid-table small', id: 'drawer-steps'},
      h('thead', null, h('tr', null, ['step', 'status', 'started', 'duration', 'exit', 'detail'].map((t) => h('th', {scope: 'col', text: t})))),
      h('tbody', null, steps.map((s) => h('tr', {class: /FAIL|ERROR/.test(s.status || '') ? 'row-bad' : ''},
        h('td', {text: s.step}), h('td', null, badge(s.status)), h('td', {text: fmtClock(s.started_ms)}),
        h('td', {class: 'num', text: fmtDuration(s.duration_ms)}), h('td', {class: 'num', text: s.exit_code ?? '—'}),
        h('td', {class: 'detail', text: s.detail || ''}))))));
    this.body.append(h('h3', {text: 'Audit trail'}));
    const audit = d.audit || [];
    if (!audit.length) this.body.append(h('p', {class: 'muted', text: 'No audit row for this node yet.'}));
    else this.body.append(h('table', {class: 'grid-table small', id: 'drawer-audit'},
      h('thead', null, h('tr', null, ['time', 'step', 'event', 'exit', 'duration', 'by', 'detail'].map((t) => h('th', {scope: 'col', text: t})))),
      h('tbody', null, audit.map((a) => h('tr', {class: /FAIL/.test(a.event || '') ? 'row-bad' : ''},
        h('td', {text: fmtClock(a.ts_ms)}), h('td', {text: a.step || ''}), h('td', {text: a.event}),
        h('td', {class: 'num', text: a.exit_code ?? ''}), h('td', {class: 'num', text: a.duration_ms ? fmtDuration(a.duration_ms) : ''}),
        h('td', {text: a.principal || ''}), h('td', {class: 'detail', text: a.detail || ''}))))));
  }

  close() {
    document.removeEventListener('keydown', this.onKey);
    clearTimeout(this.timer);
  }
}
