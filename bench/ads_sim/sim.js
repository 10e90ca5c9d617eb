// Simulated Envoys for bench.ads_fanout (--sim node): the same ADS behaviour as its
// Python Proxy class, on @grpc/grpc-js (Node's HTTP/2), which costs the machine a fraction
// of the CPU per message that grpc.aio's Python layer does. On one small machine the
// proxies' CPU is taken from the controller under test; real Envoys run elsewhere.
//
//   node sim.js <descriptor set> <port> <first index> <count> <gateway>
//
// The message types come from the FileDescriptorSet the benchmark writes from the Python
// xds-protos it runs with. Commands arrive as JSON lines on stdin, each answered by one
// JSON line on stdout:
//   ["synced"]               -> true once every proxy received a RouteConfiguration
//   ["wait", rev, timeout]   -> [[received, acked] per proxy] once all received rev
//   ["count"]                -> [{type: responses}, {type: bytes}] summed over proxies
//   ["stop"]                 -> stream errors, then the process ends
// Times are CLOCK_MONOTONIC seconds, the clock of Python's time.perf_counter.
"use strict";

const fs = require("fs");
const readline = require("readline");
const grpc = require("@grpc/grpc-js");
const protobuf = require("protobufjs");
require("protobufjs/ext/descriptor");

const [descriptorFile, port, firstArg, countArg, gateway] = process.argv.slice(2);
const root = protobuf.Root.fromDescriptor(fs.readFileSync(descriptorFile));
const Request = root.lookupType("envoy.service.discovery.v3.DiscoveryRequest");
const Response = root.lookupType("envoy.service.discovery.v3.DiscoveryResponse");
const Cluster = root.lookupType("envoy.config.cluster.v3.Cluster");
const Listener = root.lookupType("envoy.config.listener.v3.Listener");
const Hcm = root.lookupType(
  "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
);
const EDS = root.lookupEnum("envoy.config.cluster.v3.Cluster.DiscoveryType").values.EDS;

const ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const PREFIX = "type.googleapis.com/envoy.";
const CLUSTER = PREFIX + "config.cluster.v3.Cluster";
const ENDPOINT = PREFIX + "config.endpoint.v3.ClusterLoadAssignment";
const LISTENER = PREFIX + "config.listener.v3.Listener";
const ROUTE = PREFIX + "config.route.v3.RouteConfiguration";
const EXTENSION = PREFIX + "config.core.v3.TypedExtensionConfig";
const HCM_TYPE = "type.googleapis.com/" + Hcm.fullName.slice(1);

const now = () => Number(process.hrtime.bigint()) / 1e9;
const identity = (x) => x;

function revisionOf(version) {
  const head = version.split("-", 1)[0];
  return /^\d+$/.test(head) ? Number(head) : -1;
}

// Every proxy of this process receives the same CDS and LDS bytes for a version: what they
// subscribe to is worked out once per version, not once per proxy.
const needsCache = new Map();

function edsNames(resp) {
  // as Envoy: the endpoints of every EDS cluster, beside the bootstrap's own
  const eds = [];
  for (const any of resp.resources) {
    const cluster = Cluster.decode(any.value);
    if (cluster.type === EDS) {
      const config = cluster.eds_cluster_config;
      eds.push((config && config.service_name) || cluster.name);
    }
  }
  return ["gateway.replicas", ...eds.sort()];
}

function listenerNeeds(resp) {
  const routes = new Set();
  const filters = new Set();
  for (const any of resp.resources) {
    const listener = Listener.decode(any.value);
    for (const chain of listener.filter_chains) {
      for (const f of chain.filters) {
        // protobufjs names google.protobuf.Any's fields in camelCase (its own copy of the type)
        if (!f.typed_config || f.typed_config.typeUrl !== HCM_TYPE) continue;
        const hcm = Hcm.decode(f.typed_config.value);
        if (hcm.rds) routes.add(hcm.rds.route_config_name);
        for (const h of hcm.http_filters) if (h.config_discovery) filters.add(h.name);
      }
    }
  }
  return [[...routes].sort(), [...filters].sort()];
}

function cached(resp, work) {
  const key = resp.type_url + "\0" + resp.version_info;
  let value = needsCache.get(key);
  if (value === undefined) {
    value = work(resp);
    needsCache.set(key, value);
  }
  return value;
}

const sameList = (a, b) => a !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);

class Proxy {
  constructor(index) {
    this.node = `sim-${process.pid}-${index}`;
    this.first = true;
    this.subscribed = new Map();
    this.last = new Map();
    this.routeAcks = new Map(); // revision -> [received, ACK written]
    this.routeRevision = -1;
    this.errors = 0;
    this.responses = {};
    this.bytes = {};
    this.client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      // a connection of its own, as each Envoy has
      "grpc.use_local_subchannel_pool": 1,
    });
  }

  request(typeUrl, names, version = "", nonce = "") {
    const req = {
      type_url: typeUrl,
      resource_names: names,
      version_info: version,
      response_nonce: nonce,
    };
    if (this.first) {
      // the bootstrap's set_node_on_first_message_only, as Envoy does
      this.first = false;
      req.node = {
        id: this.node,
        cluster: gateway,
        user_agent_name: "envoy",
        user_agent_build_version: { version: { major_number: 1, minor_number: 40, patch: 0 } },
      };
    }
    this.call.write(Buffer.from(Request.encode(Request.fromObject(req)).finish()));
  }

  subscribe(typeUrl, names) {
    if (names.length && !sameList(this.subscribed.get(typeUrl), names)) {
      this.subscribed.set(typeUrl, names);
      const [version, nonce] = this.last.get(typeUrl) || ["", ""];
      this.request(typeUrl, names, version, nonce);
    }
  }

  start(onRoute) {
    this.call = this.client.makeBidiStreamRequest(ADS, identity, identity);
    this.call.on("data", (data) => this.onResponse(data, onRoute));
    this.call.on("error", (err) => {
      if (!this.stopping) this.errors += 1;
    });
    this.call.on("end", () => {});
    this.request(CLUSTER, []);
    this.request(LISTENER, []);
    this.subscribe(ENDPOINT, ["gateway.replicas"]);
  }

  onResponse(data, onRoute) {
    const received = now();
    const resp = Response.decode(data);
    const kind = resp.type_url.slice(resp.type_url.lastIndexOf(".") + 1);
    this.responses[kind] = (this.responses[kind] || 0) + 1;
    this.bytes[kind] = (this.bytes[kind] || 0) + data.length;
    this.last.set(resp.type_url, [resp.version_info, resp.nonce]);
    // ACK first, as Envoy does once the resource is applied
    this.request(resp.type_url, this.subscribed.get(resp.type_url) || [], resp.version_info, resp.nonce);
    if (resp.type_url === ROUTE) {
      const revision = revisionOf(resp.version_info);
      if (!this.routeAcks.has(revision)) this.routeAcks.set(revision, [received, now()]);
      const before = this.routeRevision;
      this.routeRevision = Math.max(before, revision);
      onRoute(this, before);
    } else if (resp.type_url === CLUSTER) {
      this.subscribe(ENDPOINT, cached(resp, edsNames));
    } else if (resp.type_url === LISTENER) {
      const [routes, filters] = cached(resp, listenerNeeds);
      this.subscribe(ROUTE, routes);
      this.subscribe(EXTENSION, filters);
    }
  }

  acked(revision) {
    // the first RouteConfiguration at this revision or later (revisions arrive in order)
    let best = null;
    for (const [rev, times] of this.routeAcks) {
      if (rev >= revision && (best === null || times[0] < best[0])) best = times;
    }
    return best;
  }

  stop() {
    this.stopping = true;
    this.call.end();
    this.client.close();
  }
}

const reply = (value) => process.stdout.write(JSON.stringify(value) + "\n");

// one wait at a time: (revision, proxies still short of it, its reply, its timer)
let waiter = null;
let syncWaiter = null;

function onRoute(proxy, before) {
  if (waiter && before < waiter.revision && proxy.routeRevision >= waiter.revision) {
    waiter.remaining -= 1;
    if (waiter.remaining === 0) finishWait();
  }
  if (syncWaiter && before < 0 && proxy.routeRevision >= 0) {
    syncWaiter.remaining -= 1;
    if (syncWaiter.remaining === 0) {
      clearTimeout(syncWaiter.timer);
      syncWaiter = null;
      reply(true);
    }
  }
}

function finishWait() {
  const w = waiter;
  waiter = null;
  clearTimeout(w.timer);
  reply(proxies.map((p) => p.acked(w.revision)));
}

const first = Number(firstArg);
const proxies = [];
for (let i = 0; i < Number(countArg); i++) proxies.push(new Proxy(first + i));
for (const p of proxies) p.start(onRoute);

const fail = (what) => () => {
  process.stderr.write(`proxies did not catch up: ${what}\n`);
  process.exit(3);
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command[0] === "synced") {
    const remaining = proxies.filter((p) => p.routeRevision < 0).length;
    if (remaining === 0) return reply(true);
    syncWaiter = { remaining, timer: setTimeout(fail("first sync"), 120000) };
  } else if (command[0] === "wait") {
    const [, revision, timeout] = command;
    const remaining = proxies.filter((p) => p.routeRevision < revision).length;
    waiter = { revision, remaining, timer: setTimeout(fail(`revision ${revision}`), timeout * 1000) };
    if (remaining === 0) finishWait();
  } else if (command[0] === "count") {
    const total = {};
    const size = {};
    for (const p of proxies) {
      for (const [k, n] of Object.entries(p.responses)) total[k] = (total[k] || 0) + n;
      for (const [k, n] of Object.entries(p.bytes)) size[k] = (size[k] || 0) + n;
    }
    reply([total, size]);
  } else {
    const errors = proxies.reduce((n, p) => n + p.errors, 0);
    for (const p of proxies) p.stop();
    reply(errors);
    setTimeout(() => process.exit(0), 100);
  }
});
