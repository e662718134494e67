// Live pages: on each message of /api/stream, the page is fetched again and the parts marked
// data-live are swapped in place (at most a few times a second); running clocks tick each second.
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  var timer = null, busy = false, again = false;

  function elapsed(since) {
    var seconds = Math.max(0, Math.floor((Date.now() - Date.parse(since)) / 1000));
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    var mm = (h && m < 10 ? "0" : "") + m, ss = (s < 10 ? "0" : "") + s;
    return (h ? h + ":" : "") + mm + ":" + ss;
  }

  function words(since) {
    var seconds = Math.max(0, (Date.now() - Date.parse(since)) / 1000);
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) {
      var m = Math.floor(seconds % 3600 / 60);
      return Math.floor(seconds / 3600) + " h " + (m < 10 ? "0" : "") + m + " min";
    }
    var days = Math.floor(seconds / 86400);
    return days + (days > 1 ? " days" : " day");
  }

  function tick() {
    document.querySelectorAll("[data-since]").forEach(function (clock) {
      var since = clock.getAttribute("data-since");
      if (since) clock.textContent = clock.hasAttribute("data-words") ? words(since) : elapsed(since);
    });
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Live-Refresh": "1" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (region) {
          var next = fresh.getElementById(region.id);
          if (next && next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
        });
        tick();
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (!timer) timer = setTimeout(function () { timer = null; refresh(); }, 200);
  }

  tick();
  setInterval(tick, 1000);
  if (!document.querySelector("[data-live]") || !window.EventSource) {
    if (state) state.hidden = true; // nothing on this page changes by itself
    return;
  }
  var source = new EventSource("/api/stream");
  ["event", "call", "reset"].forEach(function (kind) { source.addEventListener(kind, schedule); });
  source.onopen = function () { if (state) { state.textContent = "live"; state.className = "live-state on"; } };
  source.onerror = function () { if (state) { state.textContent = "offline"; state.className = "live-state"; } };
  setInterval(schedule, 60000); // "today" and the waits move on even when nothing is delivered
})();
