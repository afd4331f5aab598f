// The project's secret key, kept in this origin's sessionStorage (gone when the tab closes)
// and sent only as `Authorization: Bearer` on same-origin fetches: never in a URL, so never
// in an access log, a Referer or the browser history. The pages are public HTML without data.
const STORAGE_KEY = 'sightline_secret_key';

export function storedKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
}

export class Unauthorised extends Error {}

export class ApiFailure extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// fetch with the key; a 401 forgets it and shows the key form again.
export async function apiFetch(path, options = {}) {
  const key = storedKey();
  if (!key) throw new Unauthorised('no key');
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${key}` };
  const response = await fetch(path, { ...options, headers, credentials: 'omit', cache: 'no-store' });
  if (response.status === 401) {
    forgetKey();
    showKeyForm('That key was refused. Paste the project\u2019s secret key (sk_...).');
    throw new Unauthorised('refused');
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiFailure(response.status, body);
  }
  return response;
}

export async function apiJson(path, options = {}) {
  return (await apiFetch(path, options)).json();
}

let onKeyReady = () => {};

function showKeyForm(message) {
  document.getElementById('key-section').hidden = false;
  document.getElementById('app').hidden = true;
  document.getElementById('key-message').textContent = message || '';
  document.getElementById('key-input').focus();
}

// Wires the key form (input without a name, so even a submission without this script would
// carry no key) and calls start() once a key is stored; start() runs again after a new key.
export function setUpKey(start) {
  onKeyReady = start;
  const form = document.getElementById('key-form');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const input = document.getElementById('key-input');
    const key = input.value.trim();
    input.value = '';
    if (!key.startsWith('sk_')) {
      showKeyForm('A secret key starts with sk_.');
      return;
    }
    sessionStorage.setItem(STORAGE_KEY, key);
    document.getElementById('key-section').hidden = true;
    document.getElementById('app').hidden = false;
    onKeyReady();
  });
  document.getElementById('forget-key').addEventListener('click', () => {
    forgetKey();
    showKeyForm('');
  });
  if (storedKey()) {
    document.getElementById('key-section').hidden = true;
    document.getElementById('app').hidden = false;
    onKeyReady();
  } else {
    showKeyForm('');
  }
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (name === 'className') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2).toLowerCase(), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''));
  return node;
}

export function showError(target, error) {
  if (error instanceof Unauthorised) return;
  target.textContent = error instanceof ApiFailure ? `${error.message} (HTTP ${error.status})` : String(error);
}
