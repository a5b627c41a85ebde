// Calls to the service's API with the session cookie; every state-changing request carries the
// session's CSRF token (X-Guardia-CSRF). Errors keep the API's document whole.

let csrf = null;

export function setCsrf(value) { csrf = value; }

export class ApiError extends Error {
  constructor(status, body) {
    const code = body && body.error ? body.error : `HTTP ${status}`;
    const msg = body && body.message ? body.message : '';
    super(msg ? `${status} ${code}: ${msg}` : `${status} ${code}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(method, path, body) {
  const headers = {Accept: 'application/json'};
  const init = {method, headers, credentials: 'same-origin', cache: 'no-store'};
  if (method !== 'GET' && method !== 'HEAD') {
    if (csrf) headers['X-Guardia-CSRF'] = csrf;
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, {error: 'network', message: `${method} ${path}: ${e.message}`});
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = {error: `HTTP ${r.status}`, message: text.slice(0, 2000)}; }
  }
  if (r.status === 401 && !path.startsWith('/ui/session')) window.dispatchEvent(new Event('guardia:unauthorized'));
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const enc = encodeURIComponent;
