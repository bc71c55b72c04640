// shoal dashboard: the login form, then the live part of the page kept current by the
// server-sent events of /dashboard/events. The server renders and escapes every name; this only swaps its HTML in.
"use strict";

(function () {
  const form = document.getElementById("login");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("login-error");
      error.textContent = "";
      const token = document.getElementById("token").value.trim();
      let response;
      try {
        response = await fetch("/dashboard/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token }),
          credentials: "same-origin",
        });
      } catch (err) {
        error.textContent = "the server cannot be reached: " + err;
        return;
      }
      if (response.status === 204) {
        location.reload();
        return;
      }
      let message = "HTTP " + response.status;
      try {
        message = (await response.json()).message;
      } catch (err) {
        // not an error body: keep the status
      }
      error.textContent = message;
    });
    return;
  }

  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const conn = document.getElementById("conn");
  let version = live.dataset.version;

  function age(seconds) {
    if (seconds < 120) return seconds + " s ago";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " days ago";
  }

  function ages() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time[data-age]")) {
      const then = Date.parse(t.getAttribute("datetime"));
      t.textContent = age(Math.max(0, Math.round((now - then) / 1000)));
    }
  }

  function connected(ok, text) {
    conn.textContent = text;
    conn.className = "state " + (ok ? "ok" : "bad");
  }

  function show(update) {
    if (String(update.version) !== version) {
      live.innerHTML = update.html;
      version = String(update.version);
      live.dataset.version = version;
      ages();
    }
  }

  // Server-sent events from /dashboard/events. The browser reconnects by itself after a
  // broken stream (sending Last-Event-ID); a refused one (401, 429) closes the source, and
  // /dashboard/live tells which: a 401 means the session ended, so the login form.
  function follow() {
    const source = new EventSource("/dashboard/events");
    source.addEventListener("open", () => connected(true, "live"));
    source.addEventListener("update", (event) => {
      show(JSON.parse(event.data));
      connected(true, "live");
    });
    source.addEventListener("ended", () => {
      source.close();
      location.reload();
    });
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED) {
        connected(false, "disconnected, reconnecting");
        return;
      }
      connected(false, "disconnected, retrying");
      try {
        const response = await fetch("/dashboard/live?wait=0", {
          credentials: "same-origin",
          cache: "no-store",
        });
        if (response.status === 401) {
          location.reload();
          return;
        }
      } catch (err) {
        // the server is away: try the stream again below
      }
      setTimeout(follow, 5000);
    });
  }

  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
    location.reload();
  });
  ages();
  setInterval(ages, 1000);
  follow();
})();
