// The live rollout view, #/sr/SR (and #/sr/SR/node/NAME with the node's drawer open).
import {h, clear} from './dom.js';
import {enc} from './api.js';
import {LiveRollout} from './live.js';
import {NodeDrawer} from './drawer.js';

export function mountRollout(root, route, ctx) {
  const sr = route.sr;
  const drawer = new NodeDrawer(sr, () => { location.hash = `#/sr/${enc(sr)}`; });
  const live = new LiveRollout(sr, ctx, {
    actions: true,
    onCell: (name) => { location.hash = `#/sr/${enc(sr)}/node/${enc(name)}`; },
    onChange: (_doc, changed) => { for (const n of changed) drawer.changed(n); },
  });
  root.append(h('div', {class: 'with-drawer'},
    h('section', {class: 'page'},
      h('div', {class: 'page-head'}, h('h1', null, 'Rollout ', h('span', {class: 'sr', id: 'sr-id', text: sr})),
        h('a', {href: `#/sr/${enc(sr)}/review`, class: 'muted', text: 'review page'}),
        h('a', {href: '#/tasks', class: 'muted', text: 'all tasks'})),
      live.el),
    drawer.el));
  const show = (r) => { if (r.node) drawer.open(r.node); else drawer.hide(); };
  show(route);
  return {
    update: show,
    unmount() { live.close(); drawer.close(); clear(root); },
  };
}
