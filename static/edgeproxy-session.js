/*!
 * edgeproxy session plugin for analytics.js 2.0 (plain JS, no build step, no dependencies).
 *
 * Loaded by analytics.js from the `remotePlugins` entry of the settings that edgeproxy
 * serves. It replaces Segment's "amplitude-plugins" session bundle, which ad blockers
 * block on cdn.segment.com and which keeps its session in script-written storage.
 *
 * Who owns the session: the SERVER. edgeproxy rewrites
 * integrations["Actions Amplitude"].session_id on every web event and answers each
 * tracking call with the readable cookies `analytics_session_id` and
 * `analytics_session_id.last_access` (epoch-ms strings). This plugin is the client side of
 * the same session:
 *   1. the `analytics_session_id` cookie, when present and not idle for longer than the
 *      session length, is the id (so even the page and Amplitude Session Replay see the
 *      server's id, not a guess);
 *   2. otherwise the id kept in localStorage continues, with the same idle rule as
 *      Segment's plugin (now - last_access < sessionLength);
 *   3. otherwise a provisional session starts now (epoch ms), which the server confirms
 *      or corrects on the next response.
 * The id and `now` are written to localStorage under Segment's keys, which is where
 * Segment's plugin (and Session Replay set-ups built on it) read them. Cookies are never
 * written from here: the server sets them, and a second, script-written cookie of the
 * same name (Safari caps those at 7 days, and its domain could differ) would only make
 * the id ambiguous.
 *
 * Settings (as for Segment's plugin): the factory receives the remote plugin settings;
 * `subscriptions[]` entries with `partnerAction: "sessionId"` and `enabled: true` each
 * give a plugin, their `mapping.sessionLength` (ms, default 30 minutes) sets the idle
 * timeout. Session start/end events are the server's job (config `sessions.session_events`).
 *
 * analytics.reset() (a deliberate new anonymousId): edgeproxy sets analytics.js's own
 * `ajs_anonymous_id` / `ajs_user_id` cookies from the server too, and owns the device in
 * an HttpOnly cookie, so a reset must reach the edge or the old id comes back. On the
 * `reset` event (emitted synchronously inside reset()) this plugin deletes the ajs_*
 * cookies at every domain level they may have been set on (before analytics.js next reads
 * them), and calls `resetUrl` from the settings, which expires the edge's cookies.
 */
(function (root) {
  "use strict";

  var LIBRARY_NAME = "edgeproxySessionPlugin"; // window[libraryName] in the settings
  var PLUGIN_NAME = "Amplitude (Actions)"; // remotePlugins[].name, for npm `plugins: [...]`
  var INTEGRATION = "Actions Amplitude";
  var SESSION_KEY = "analytics_session_id";
  var ACCESS_KEY = "analytics_session_id.last_access";
  var DEFAULT_SESSION_LENGTH = 30 * 60 * 1000;
  var AJS_COOKIES = ["ajs_anonymous_id", "ajs_user_id"];

  /** A positive epoch-ms integer from a cookie or storage string, else null. */
  function toMillis(value) {
    if (typeof value === "number") value = String(value);
    if (typeof value !== "string" || !/^\d{1,16}$/.test(value)) return null;
    var n = parseInt(value, 10);
    return n > 0 ? n : null;
  }

  /** The value of one cookie visible to the page, or null. */
  function readCookie(name) {
    var all;
    try {
      all = root.document && typeof root.document.cookie === "string" ? root.document.cookie : "";
    } catch (e) {
      return null; // sandboxed iframes throw on document.cookie
    }
    var parts = all.split(";");
    for (var i = 0; i < parts.length; i++) {
      var part = parts[i];
      var eq = part.indexOf("=");
      if (eq < 0) continue;
      if (part.slice(0, eq).trim() !== name) continue;
      try {
        return decodeURIComponent(part.slice(eq + 1).trim());
      } catch (e) {
        return null;
      }
    }
    return null;
  }

  /** localStorage when usable; an in-memory map otherwise (private modes, disabled storage). */
  function makeStore() {
    var memory = {};
    function ls() {
      try {
        return root.localStorage || null;
      } catch (e) {
        return null;
      }
    }
    return {
      get: function (key) {
        var s = ls();
        if (s) {
          try {
            return s.getItem(key);
          } catch (e) {
            /* fall through to memory */
          }
        }
        return Object.prototype.hasOwnProperty.call(memory, key) ? memory[key] : null;
      },
      set: function (key, value) {
        memory[key] = String(value);
        var s = ls();
        if (s) {
          try {
            s.setItem(key, String(value));
          } catch (e) {
            /* quota or disabled: memory keeps it for this page */
          }
        }
      }
    };
  }

  /** Is a session last touched at `lastAccess` still open at `now`? Segment's rule. */
  function fresh(lastAccess, now, length) {
    return lastAccess !== null && now - lastAccess < length;
  }

  /**
   * The session id for an event at `now`: the server's cookie, else the stored id, else
   * a new provisional one. A cookie without `.last_access` is trusted (the server set it).
   */
  function resolveSession(store, now, length) {
    var cookieId = toMillis(readCookie(SESSION_KEY));
    var cookieAccess = toMillis(readCookie(ACCESS_KEY));
    if (cookieId !== null && (cookieAccess === null || fresh(cookieAccess, now, length))) {
      return cookieId;
    }
    var storedId = toMillis(store.get(SESSION_KEY));
    if (storedId !== null && fresh(toMillis(store.get(ACCESS_KEY)), now, length)) {
      return storedId;
    }
    return now;
  }

  function sessionLengthOf(mapping) {
    var n = mapping && Number(mapping.sessionLength);
    return n > 0 && isFinite(n) ? n : DEFAULT_SESSION_LENGTH;
  }

  /** Delete a script-visible cookie host-only and at each parent domain of the page's host. */
  function deleteCookie(name) {
    var doc = root.document;
    var host = root.location && typeof root.location.hostname === "string" ? root.location.hostname : "";
    var labels = host.split(".");
    var domains = [""];
    for (var i = 0; i < labels.length - 1; i++) domains.push("; domain=" + labels.slice(i).join("."));
    for (var j = 0; j < domains.length; j++) {
      try {
        doc.cookie = name + "=; Max-Age=0; path=/" + domains[j];
      } catch (e) {
        return; // sandboxed iframes throw on document.cookie
      }
    }
  }

  /** analytics.js's `reset` event: forget the old identity here and at the edge. */
  function onReset(resetUrl) {
    for (var i = 0; i < AJS_COOKIES.length; i++) deleteCookie(AJS_COOKIES[i]);
    if (typeof resetUrl !== "string" || !resetUrl) return;
    try {
      if (typeof root.fetch === "function") {
        root.fetch(resetUrl, { method: "POST", credentials: "include", keepalive: true }).catch(function () {});
      } else if (root.navigator && typeof root.navigator.sendBeacon === "function") {
        root.navigator.sendBeacon(resetUrl);
      }
    } catch (e) {
      /* offline or blocked: the next page view still carries the old device cookie */
    }
  }

  /** Listen for reset once per analytics instance, however many plugins the settings make. */
  function hookReset(instance, resetUrl) {
    if (!instance || typeof instance.on !== "function" || instance.__edgeproxyReset) return;
    instance.__edgeproxyReset = true;
    instance.on("reset", function () {
      onReset(resetUrl);
    });
  }

  function makePlugin(sessionLength, store, resetUrl) {
    function stamp(event) {
      var now = Date.now();
      var id = resolveSession(store, now, sessionLength);
      store.set(SESSION_KEY, id);
      store.set(ACCESS_KEY, now);
      var integrations = event.integrations;
      if (integrations === undefined || integrations === null) integrations = event.integrations = {};
      if (typeof integrations !== "object") return; // not ours to repair; the server stamps the event
      // As Segment's plugin: events that switch every destination off keep it off.
      if (integrations.All !== false || integrations[INTEGRATION]) {
        integrations[INTEGRATION] = { session_id: id };
      }
    }
    // Never throws: analytics.js logs a throwing plugin as a plugin error on each event, and
    // the server stamps the session anyway, so an event we cannot enrich goes out as it is.
    function enrich(ctx) {
      try {
        if (ctx && ctx.event) stamp(ctx.event);
      } catch (e) {
        /* frozen or odd event: leave it unchanged */
      }
      return ctx;
    }
    return {
      name: "Amplitude (Actions) sessionId",
      version: "1.0.0",
      type: "enrichment",
      isLoaded: function () {
        return true;
      },
      load: function (ctx, instance) {
        try {
          hookReset(instance, resetUrl);
        } catch (e) {
          /* an analytics object without events: sessions still work */
        }
        return Promise.resolve();
      },
      track: enrich,
      page: enrich,
      identify: enrich,
      group: enrich,
      alias: enrich
    };
  }

  /** PluginFactory: analytics.js calls it with the remote plugin's settings. */
  function factory(settings) {
    var store = makeStore();
    var subs = settings && settings.subscriptions;
    if (typeof subs === "string") {
      try {
        subs = JSON.parse(subs); // Segment's settings may carry subscriptions as a JSON string
      } catch (e) {
        subs = null;
      }
    }
    var resetUrl = settings && settings.resetUrl;
    if (!Array.isArray(subs)) return makePlugin(DEFAULT_SESSION_LENGTH, store, resetUrl);
    var plugins = [];
    for (var i = 0; i < subs.length; i++) {
      var sub = subs[i];
      if (sub && sub.enabled && sub.partnerAction === "sessionId") {
        plugins.push(makePlugin(sessionLengthOf(sub.mapping), store, resetUrl));
      }
    }
    return plugins;
  }
  factory.pluginName = PLUGIN_NAME;

  root[LIBRARY_NAME] = factory;
})(typeof window !== "undefined" ? window : globalThis);
