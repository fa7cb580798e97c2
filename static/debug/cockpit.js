// /debug live updates: the overview's numbers and charts and the event trail refresh from the
// stream (Server-Sent Events) without a reload. The server sends markup it has already escaped;
// this only swaps it in. Without JavaScript the pages are the same tables, current at load.
(function () {
  "use strict";
  var controls = document.getElementById("live-controls");
  if (!controls || !window.EventSource) return;
  var toggle = document.getElementById("live-toggle");
  var status = document.getElementById("live-status");
  var url = controls.getAttribute("data-stream");
  var maxRows = controls.getAttribute("data-view") === "events" ? 100 : 20;
  var source = null;
  var paused = false;
  controls.hidden = false;

  function apply(message) {
    var live = document.getElementById("live");
    if (live && typeof message.live === "string") live.innerHTML = message.live;
    var rows = document.getElementById("trail-rows");
    if (rows && message.count > 0) {
      var empty = rows.querySelector("tr.empty");
      if (empty) empty.remove();
      rows.insertAdjacentHTML("afterbegin", message.rows);
      while (rows.rows.length > maxRows) rows.deleteRow(rows.rows.length - 1);
    }
    // A reconnect carries on after the newest row shown, not from the page's load.
    url = url.replace(/([?&]after=)\d*/, "$1" + message.seq);
    status.textContent = "live · updated " + new Date().toLocaleTimeString();
  }

  function connect() {
    source = new EventSource(url);
    source.onmessage = function (event) { apply(JSON.parse(event.data)); };
    source.onerror = function () { status.textContent = "reconnecting…"; };
  }

  toggle.addEventListener("click", function () {
    paused = !paused;
    if (paused) {
      source.close();
      status.textContent = "paused";
      toggle.textContent = "Resume";
    } else {
      toggle.textContent = "Pause";
      connect();
    }
  });
  connect();
})();
