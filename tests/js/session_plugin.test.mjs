// Tests of the session plugin as a browser runs it: the file is evaluated in a `vm`
// context whose window, document.cookie, localStorage and clock are fakes we control.
// Run by tests/test_cdn.py with the plugin bytes the proxy actually serves:
//   PLUGIN_PATH=<file> PLUGIN_LIBRARY=<libraryName from the settings> node --test <this file>
// Without those variables (`npm test` here) it tests static/edgeproxy-session.js.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import vm from "node:vm";

const PLUGIN_PATH = process.env.PLUGIN_PATH || fileURLToPath(new URL("../../static/edgeproxy-session.js", import.meta.url));
const LIBRARY = process.env.PLUGIN_LIBRARY || "edgeproxySessionPlugin";
const SOURCE = readFileSync(PLUGIN_PATH, "utf8");

const T0 = 1_800_000_000_000; // an epoch-ms "now"
const MIN = 60_000;

/** A fresh browser: returns the window plus handles on its cookie jar, storage and clock. */
function browser({ cookies = {}, storage = {}, storageThrows = false, hostname = "www.shop.example" } = {}) {
  const cookieWrites = [];
  const fetches = [];
  const clock = { now: T0 };
  const store = new Map(Object.entries(storage));
  const localStorage = {
    getItem(k) {
      if (storageThrows) throw new Error("SecurityError");
      return store.has(k) ? store.get(k) : null;
    },
    setItem(k, v) {
      if (storageThrows) throw new Error("QuotaExceededError");
      store.set(k, String(v));
    },
  };
  const document = {
    get cookie() {
      return Object.entries(cookies)
        .map(([k, v]) => `${k}=${v}`)
        .join("; ");
    },
    set cookie(line) {
      cookieWrites.push(line);
      const [pair, ...attrs] = line.split(";");
      const name = pair.split("=")[0].trim();
      if (attrs.some((a) => a.trim().toLowerCase() === "max-age=0")) delete cookies[name];
    },
  };
  const fetch = (url, init) => {
    fetches.push({ url, init });
    return Promise.resolve({ status: 204 });
  };
  const sandbox = { document, localStorage, fetch, location: { hostname }, Date: { now: () => clock.now } };
  sandbox.window = sandbox;
  vm.createContext(sandbox);
  vm.runInContext(SOURCE, sandbox, { filename: "plugin.js" });
  return { window: sandbox, clock, store, cookies, cookieWrites, fetches };
}

/** Objects made inside the vm have that realm's prototypes: compare them as JSON data. */
const plain = (v) => JSON.parse(JSON.stringify(v));

function settings(sessionLength, extra = {}) {
  return {
    versionSettings: { componentTypes: [] },
    subscriptions: [
      { id: "s", name: "Browser Session Tracking", enabled: true, partnerAction: "sessionId", mapping: sessionLength === undefined ? {} : { sessionLength } },
    ],
    ...extra,
  };
}

function onePlugin(win, s) {
  const made = win[LIBRARY](s);
  const list = Array.isArray(made) ? made : [made];
  assert.equal(list.length, 1);
  return list[0];
}

function send(plugin, type = "track", integrations) {
  const ctx = { event: { type, event: "E", integrations } };
  const out = plugin[type](ctx);
  assert.equal(out, ctx);
  return ctx.event;
}

test("defines a PluginFactory under the library name the settings use", async () => {
  const { window } = browser();
  assert.equal(typeof window[LIBRARY], "function");
  assert.equal(window[LIBRARY].pluginName, "Amplitude (Actions)");
  const plugin = onePlugin(window, settings());
  for (const key of ["name", "version", "type", "load", "isLoaded"]) assert.ok(plugin[key] !== undefined, key);
  assert.equal(plugin.type, "enrichment");
  assert.equal(plugin.isLoaded(), true);
  await plugin.load({}, {});
  for (const m of ["track", "page", "identify", "group", "alias"]) assert.equal(typeof plugin[m], "function");
});

test("the server's cookie is the session id, and is mirrored to localStorage", () => {
  const server = T0 - 10 * MIN;
  const { window, store } = browser({
    cookies: { analytics_session_id: String(server), "analytics_session_id.last_access": String(T0 - MIN) },
    storage: { analytics_session_id: String(T0 - 99 * MIN), "analytics_session_id.last_access": String(T0 - 2 * MIN) },
  });
  const event = send(onePlugin(window, settings()), "page");
  assert.deepEqual(plain(event.integrations), { "Actions Amplitude": { session_id: server } });
  assert.equal(store.get("analytics_session_id"), String(server));
  assert.equal(store.get("analytics_session_id.last_access"), String(T0));
});

test("a cookie without last_access is trusted (the server set it)", () => {
  const { window } = browser({ cookies: { other: "x", analytics_session_id: "1700000000000" } });
  assert.equal(send(onePlugin(window, settings())).integrations["Actions Amplitude"].session_id, 1700000000000);
});

test("a stale cookie gives way to a provisional session starting now", () => {
  const { window } = browser({
    cookies: { analytics_session_id: String(T0 - 90 * MIN), "analytics_session_id.last_access": String(T0 - 31 * MIN) },
  });
  assert.equal(send(onePlugin(window, settings())).integrations["Actions Amplitude"].session_id, T0);
});

test("without a cookie: provisional id, kept while active, rotated after sessionLength idle (>=)", () => {
  const { window, clock, store } = browser();
  const plugin = onePlugin(window, settings(MIN)); // mapping.sessionLength = 60 s
  assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, T0);
  clock.now = T0 + MIN - 1;
  assert.equal(send(plugin, "identify").integrations["Actions Amplitude"].session_id, T0);
  const idleFrom = clock.now;
  clock.now = idleFrom + MIN; // exactly sessionLength idle: Segment's rule starts a new one
  assert.equal(send(plugin, "group").integrations["Actions Amplitude"].session_id, idleFrom + MIN);
  assert.equal(store.get("analytics_session_id"), String(idleFrom + MIN));
});

test("default session length is 30 minutes", () => {
  for (const s of [{}, settings(undefined), settings("not a number")]) {
    const { window, clock } = browser();
    const plugin = onePlugin(window, s);
    send(plugin);
    clock.now = T0 + 30 * MIN - 1;
    assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, T0);
    clock.now = T0 + 60 * MIN - 1;
    assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, T0 + 60 * MIN - 1);
  }
});

test("localStorage from an earlier page continues the session when there is no cookie", () => {
  const { window } = browser({ storage: { analytics_session_id: String(T0 - 20 * MIN), "analytics_session_id.last_access": String(T0 - 5 * MIN) } });
  assert.equal(send(onePlugin(window, settings())).integrations["Actions Amplitude"].session_id, T0 - 20 * MIN);
});

test("subscriptions: only enabled sessionId ones make plugins; a JSON string is accepted", () => {
  const { window } = browser();
  const disabled = settings();
  disabled.subscriptions[0].enabled = false;
  assert.deepEqual(plain(window[LIBRARY](disabled)), []);
  const other = settings();
  other.subscriptions[0].partnerAction = "logEvent";
  assert.deepEqual(plain(window[LIBRARY](other)), []);
  const asString = { subscriptions: JSON.stringify(settings(MIN).subscriptions) };
  const { window: w2, clock } = browser();
  const plugin = onePlugin(w2, asString);
  send(plugin);
  clock.now = T0 + MIN;
  assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, T0 + MIN);
});

test("integrations.All = false is respected unless Actions Amplitude is named", () => {
  const { window } = browser({ cookies: { analytics_session_id: "1700000000000" } });
  const plugin = onePlugin(window, settings());
  assert.deepEqual(plain(send(plugin, "track", { All: false }).integrations), { All: false });
  assert.deepEqual(plain(send(plugin, "track", { All: false, "Actions Amplitude": {} }).integrations["Actions Amplitude"]), { session_id: 1700000000000 });
  // a caller's own value is replaced, as Segment's plugin does
  assert.deepEqual(plain(send(plugin, "alias", { "Actions Amplitude": { session_id: 5, x: 1 } }).integrations["Actions Amplitude"]), { session_id: 1700000000000 });
});

test("garbage cookies and storage are ignored", () => {
  const { window } = browser({
    cookies: { analytics_session_id: "abc", "analytics_session_id.last_access": "1e12" },
    storage: { analytics_session_id: "-5", "analytics_session_id.last_access": String(T0) },
  });
  assert.equal(send(onePlugin(window, settings())).integrations["Actions Amplitude"].session_id, T0);
});

test("works when localStorage throws (private mode): memory keeps the session", () => {
  const { window, clock } = browser({ storageThrows: true });
  const plugin = onePlugin(window, settings());
  send(plugin);
  clock.now = T0 + 10 * MIN;
  assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, T0);
});

test("never throws: integrations that cannot take a session id leave the event as it was", () => {
  const { window } = browser({ cookies: { analytics_session_id: "1700000000000" } });
  const plugin = onePlugin(window, settings());
  for (const odd of ["junk", 5, true, Object.freeze({})]) {
    assert.equal(send(plugin, "track", odd).integrations, odd);
  }
  const frozen = { event: Object.freeze({ type: "page" }) };
  assert.equal(plugin.page(frozen), frozen);
  assert.equal(frozen.event.integrations, undefined);
  // and the next ordinary event is enriched as usual
  assert.equal(send(plugin).integrations["Actions Amplitude"].session_id, 1700000000000);
});

/** The part of analytics.js's instance the plugin uses: on(event, fn), emit(event). */
function fakeAnalytics() {
  const handlers = {};
  return {
    on(name, fn) {
      (handlers[name] = handlers[name] || []).push(fn);
    },
    emit(name) {
      for (const fn of handlers[name] || []) fn();
    },
    count: (name) => (handlers[name] || []).length,
  };
}

test("analytics.reset() deletes the ajs cookies at every domain level and calls resetUrl", async () => {
  const { window, cookies, cookieWrites, fetches } = browser({
    cookies: { ajs_anonymous_id: "old-anon", ajs_user_id: "u-1", analytics_session_id: String(T0) },
  });
  const made = onePlugin(window, settings(undefined, { resetUrl: "https://www.shop.example/_e/reset" }));
  const analytics = fakeAnalytics();
  await made.load({}, analytics);
  await made.load({}, analytics); // loaded twice (several subscriptions): one listener
  assert.equal(analytics.count("reset"), 1);
  analytics.emit("reset");
  assert.equal(cookies.ajs_anonymous_id, undefined);
  assert.equal(cookies.ajs_user_id, undefined);
  assert.equal(cookies.analytics_session_id, String(T0)); // the server's cookies are the server's to expire
  const domains = cookieWrites.filter((w) => w.startsWith("ajs_anonymous_id=")).map((w) => (w.match(/domain=([^;]+)/) || [])[1] || "");
  assert.deepEqual(domains, ["", "www.shop.example", "shop.example"]);
  assert.equal(fetches.length, 1);
  assert.equal(fetches[0].url, "https://www.shop.example/_e/reset");
  assert.deepEqual(plain(fetches[0].init), { method: "POST", credentials: "include", keepalive: true });
});

test("without resetUrl or analytics events the plugin still loads and stamps", async () => {
  const { window, fetches } = browser();
  const plugin = onePlugin(window, settings());
  await plugin.load({}, {}); // no on(): nothing to hook
  await plugin.load({}, undefined);
  const analytics = fakeAnalytics();
  await plugin.load({}, analytics);
  analytics.emit("reset");
  assert.equal(fetches.length, 0);
  assert.ok(send(plugin).integrations["Actions Amplitude"].session_id > 0);
});
