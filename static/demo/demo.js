// Shows, on the page itself, every call analytics.js sends to edgeproxy, so the loop is visible.
(function () {
  var log = document.getElementById("event-log");
  if (!log || !window.analytics) return;

  function show(kind, text, data) {
    var empty = document.getElementById("event-log-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    var k = document.createElement("span");
    k.className = "kind";
    k.textContent = kind + " ";
    li.appendChild(k);
    li.appendChild(document.createTextNode(text + (data ? " " + JSON.stringify(data) : "")));
    log.insertBefore(li, log.firstChild);
  }

  analytics.on("page", function (category, name, properties) {
    show("page", (properties && properties.path) || location.pathname);
  });
  analytics.on("track", function (event, properties) { show("track", event, properties); });
  analytics.on("identify", function (userId, traits) { show("identify", userId || "(anonymous)", traits); });
})();
