// Shared helpers: API calls carrying the token when the server asks for one, config colours.
export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
export const colourFor = (index) => PALETTE[index % PALETTE.length];

export function authHeaders() {
  if (document.body.dataset.tokenRequired !== "true") return {};
  let token = sessionStorage.getItem("sweeplab-token") || localStorage.getItem("sweeplab-token");
  if (!token) {
    token = window.prompt("This sweeplab server needs its API token for changes:") || "";
    if (token) localStorage.setItem("sweeplab-token", token);
  }
  return token ? { authorization: `Bearer ${token}` } : {};
}

export async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), ...(options.method && options.method !== "GET" ? authHeaders() : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) localStorage.removeItem("sweeplab-token");
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body?.error?.message || (body?.detail && JSON.stringify(body.detail)) || response.statusText;
    throw Object.assign(new Error(message), { status: response.status, body });
  }
  return body;
}
