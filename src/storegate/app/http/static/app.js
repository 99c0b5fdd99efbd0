// The reference customer app: live offers with their QR codes, the redemption state,
// the pickup notice. No build step, no third-party code.
//
// The token arrives in the URL fragment (#token=...): a fragment is never sent to a
// server, so it stays out of access logs and proxies; it is moved to sessionStorage
// (this tab only, gone when the tab closes) and the fragment is cleared at once.
// The push stream is read with fetch() rather than EventSource, because EventSource
// cannot send an Authorization header (and a token in the URL would be logged).
"use strict";
(() => {
  const TOKEN_KEY = "storegate.app.token";
  const CURSOR_KEY = "storegate.app.cursor";
  const MAX_BACKOFF_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const offers = new Map(); // offer_id -> {view, el}

  function takeToken() {
    const m = /(?:^|&)token=([A-Za-z0-9._-]+)/.exec(location.hash.slice(1));
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, m[1]);
      sessionStorage.removeItem(CURSOR_KEY); // a new sign-in starts from the inbox
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  const token = takeToken();

  function setStatus(text, live) {
    const el = $("connection");
    el.textContent = text;
    el.classList.toggle("live", !!live);
  }

  function signedOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(CURSOR_KEY);
    $("signin").hidden = false;
    setStatus("Signed out: open the link from the app again");
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const r = await fetch(path, {
      headers: { Authorization: "Bearer " + token }, cache: "no-store",
    });
    if (r.status === 401) throw new Unauthorized();
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r;
  }

  function discountText(d) {
    if (!d) return "";
    if (d.kind === "percent") return "\u2212" + d.value + " %";
    return "\u2212" + (d.value / 100).toFixed(2) + " off";
  }

  const STATES = {
    issued: "Ready to use: show the code at the till",
    reserved: "Scanned at the till: finishing your purchase\u2026",
    redeemed: "Used \u2014 thank you!",
  };

  function render(view) {
    let entry = offers.get(view.offer_id);
    if (!entry) {
      const el = $("offer-template").content.firstElementChild.cloneNode(true);
      entry = { view, el, qr: false };
      offers.set(view.offer_id, entry);
      $("offers").prepend(el);
    }
    entry.view = view;
    const el = entry.el;
    el.querySelector(".title").textContent = view.title;
    el.querySelector(".discount").textContent = discountText(view.discount);
    el.querySelector(".text").textContent = view.text || "";
    const state = el.querySelector(".state");
    state.textContent = STATES[view.state] || view.state;
    state.className = "state " + view.state;
    el.classList.toggle("redeemed", view.state === "redeemed");
    const until = new Date(view.expires_at * 1000);
    el.querySelector(".expires").textContent =
      "Valid until " + until.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    if (!entry.qr) {
      entry.qr = true;
      loadQr(view.offer_id, view.title, el.querySelector(".qr img")).catch(() => {
        entry.qr = false; // tried again on the next update
      });
    }
    $("empty").hidden = offers.size > 0;
  }

  async function loadQr(offerId, title, img) {
    // fetched with the token, shown as a data: URL (the page's CSP allows no blob:)
    const blob = await (await api("/app/offers/" + offerId + "/qr.png")).blob();
    const url = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
    img.src = url;
    img.alt = "QR code for \u201c" + title + "\u201d: show it to the till scanner";
  }

  function dropExpired() {
    const now = Date.now() / 1000;
    for (const [id, entry] of offers) {
      if (entry.view.expires_at <= now) {
        entry.el.remove();
        offers.delete(id);
      }
    }
    $("empty").hidden = offers.size > 0;
  }

  function onMessage(kind, data) {
    if (kind === "offer") {
      render(Object.assign({ state: "issued", state_at: data.issued_at }, data));
    } else if (kind === "redemption") {
      const entry = offers.get(data.offer_id);
      if (entry) {
        const state = data.state === "released" ? "issued" : data.state;
        render(Object.assign({}, entry.view, { state, state_at: data.at }));
      }
    } else if (kind === "pickup") {
      const box = $("pickup");
      box.textContent = "Your order " + data.order_id + " is ready" +
        (data.counter ? " at counter " + data.counter : "") + ".";
      box.hidden = false;
    }
  }

  function handleBlock(block) {
    let id = null, kind = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // keep-alive comment
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") kind = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return;
    onMessage(kind, JSON.parse(data));
    if (id !== null) sessionStorage.setItem(CURSOR_KEY, id); // resume point
  }

  async function streamOnce() {
    const headers = { Authorization: "Bearer " + token, Accept: "text/event-stream" };
    const cursor = sessionStorage.getItem(CURSOR_KEY);
    if (cursor) headers["Last-Event-ID"] = cursor;
    const r = await fetch("/app/events", { headers, cache: "no-store" });
    if (r.status === 401) throw new Unauthorized();
    if (!r.ok || !r.body) throw new Error("events: " + r.status);
    setStatus("Live", true);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // the server ended it (too slow, restarting): resume
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  async function run() {
    if (!token) { signedOut(); return; }
    let backoff = 1000;
    try {
      const list = await (await api("/app/offers")).json();
      for (const view of list.offers.slice().reverse()) render(view);
      $("empty").hidden = offers.size > 0;
    } catch (e) {
      if (e instanceof Unauthorized) { signedOut(); return; }
    }
    setInterval(dropExpired, 30000);
    for (;;) {
      try {
        await streamOnce();
        backoff = 1000;
      } catch (e) {
        if (e instanceof Unauthorized) { signedOut(); return; }
      }
      setStatus("Reconnecting\u2026");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  run();
})();
