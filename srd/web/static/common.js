// Shared by the pages: the CSRF token, the daemon badge, and the originals kept in this browser.
"use strict";

const srd = {
  csrf: document.querySelector('meta[name="csrf-token"]').content,

  showDaemon(daemon) {
    const badge = document.getElementById("daemon");
    const health = daemon.health;
    badge.textContent = health === "healthy" ? "daemon running" : health === "not running" ? "daemon not running"
      : "daemon " + health;
    badge.className = "daemon " + (health === "healthy" ? "healthy" : health === "not running" ? "down" : "unhealthy");
    badge.title = daemon.error || "";
  },

  async getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (response.status === 401) { location.href = "/login"; throw new Error("logged out"); }
    return [response.status, await response.json()];
  },

  // The server never serves an upload back (only outboxes), so the "before" of a comparison is the file the
  // user picked, kept in this browser's IndexedDB under its inbox and sha256.
  _db() {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open("srd-originals", 1);
      open.onupgradeneeded = () => open.result.createObjectStore("originals");
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  },
  async keepOriginal(key, blob) {
    try {
      const db = await srd._db();
      db.transaction("originals", "readwrite").objectStore("originals").put(blob, key);
    } catch (e) { /* private browsing: no comparison, nothing else lost */ }
  },
  async original(key) {
    try {
      const db = await srd._db();
      return await new Promise((resolve) => {
        const get = db.transaction("originals").objectStore("originals").get(key);
        get.onsuccess = () => resolve(get.result || null);
        get.onerror = () => resolve(null);
      });
    } catch (e) { return null; }
  },

  el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    for (const child of children) if (child) node.append(child);
    return node;
  },
};
