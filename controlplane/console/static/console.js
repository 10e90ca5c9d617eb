"use strict";
// The gateway console: every page is built from the admin API's /v1 answers with DOM
// nodes and textContent only (no HTML strings), so no policy value is ever parsed as markup.
(function () {
  const main = document.getElementById("main");
  let me = null; // {name, role, gateways, csrf}
  let timer = null;

  // -- helpers ------------------------------------------------------------------------
  function h(tag, attrs) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (let i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach((c) => add(el, c)); return; }
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  function put(el) {
    el.replaceChildren();
    for (let i = 1; i < arguments.length; i++) add(el, arguments[i]);
  }
  function canWrite() { return me && (me.role === "editor" || me.role === "admin"); }
  function isAdmin() { return me && me.role === "admin" && me.gateways.length === 0; }
  function utc(epoch) {
    if (epoch === null || epoch === undefined) return "—";
    const d = typeof epoch === "number" ? new Date(epoch * 1000) : new Date(epoch);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }
  function json(v) { return v === null || v === undefined ? "—" : JSON.stringify(v, null, 2); }
  function table(caption, headers, rows, testid) {
    return h("div", { class: "scroll" },
      h("table", { "data-testid": testid },
        h("caption", { text: caption }),
        h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", text: x })))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, text: "none" })))));
  }
  function row(cells, attrs) {
    return h("tr", attrs || {}, cells.map((c) => h("td", {}, c)));
  }
  function notice(kind, text) {
    return h("p", { class: kind, role: kind === "error" ? "alert" : "status", text: text });
  }

  async function api(method, path, body, extra) {
    const headers = {};
    if (method !== "GET") headers["X-CSRF-Token"] = me ? me.csrf : "";
    if (body !== undefined) headers["Content-Type"] = "application/json";
    Object.assign(headers, extra || {});
    const r = await fetch(path, {
      method: method,
      credentials: "same-origin",
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) {
      location.replace("/ui/login?expired=1");
      throw new Error("logged out");
    }
    let data = null;
    const text = await r.text();
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: { message: text } }; }
    const etag = (r.headers.get("ETag") || "").replace(/"/g, "");
    return { ok: r.ok, status: r.status, data: data, revision: etag ? Number(etag) : null };
  }
  function errorOf(r) {
    const e = (r.data && r.data.error) || {};
    return { message: e.message || "HTTP " + r.status, field: e.field || null, code: e.code };
  }

  // -- pages --------------------------------------------------------------------------
  async function overview() {
    const r = await api("GET", "/v1/status");
    if (!r.ok) return [notice("error", errorOf(r).message)];
    const s = r.data;
    const proxies = s.proxies.map((p) => row([
      p.node, p.gateway, p.address || "—", p.envoy || "—", String(p.acked_revision),
      // a proxy that left is listed until it expires: say so, rather than "not in sync"
      p.connected === false ? h("span", { class: "help", text: "disconnected" })
        : h("span", { class: p.in_sync ? "ok" : "bad", text: p.in_sync ? "in sync" : "not in sync" }),
      p.last_nack ? h("span", { class: "bad wide" },
        "revision " + p.last_nack.revision + ": " + (p.last_nack.type ? p.last_nack.type + " of " : "") +
        [].concat(p.last_nack.objects || []).join(", ") +
        (p.last_nack.field ? " (field " + p.last_nack.field + ")" : "") + " — " + p.last_nack.error) : "—",
    ], { "data-node": p.node }));
    const gateways = Object.entries(s.gateways).map(([g, b]) => {
      const mine = s.proxies.filter((p) => p.gateway === g && p.connected !== false);
      const gone = s.proxies.filter((p) => p.gateway === g && p.connected === false).length;
      return row([g, String(b.built_revision), String(b.changed_revision),
        mine.filter((p) => p.in_sync).length + " of " + mine.length + (gone ? " (" + gone + " disconnected)" : ""),
        b.error || "—"]);
    });
    const controllers = s.controllers.map((c) => row([
      c.id, c.xds_address, String(c.built_revision), c.alive ? "alive" : "gone"]));
    return [
      h("h1", { text: "Overview" }),
      h("p", {}, "Current revision: ", h("strong", { "data-testid": "revision", text: String(s.revision) })),
      s.problem ? notice("error", s.problem) : notice("ok", "Every proxy runs the current policy."),
      table("Gateways", ["Gateway", "Built revision", "Changed at revision", "Proxies in sync", "Build error"], gateways, "gateways"),
      table("Proxies", ["Node", "Gateway", "Address", "Envoy", "ACKed revision", "Sync", "Last NACK"], proxies, "proxies"),
      table("Controllers", ["Controller", "xDS address", "Built revision", "State"], controllers, "controllers"),
    ];
  }

  // A form whose change is planned (diff shown), then applied and waited for.
  function changeForm(opts) {
    // opts: {title, kind, plural, fields: [{name, label, field, value, help, type, options}], build(values)}
    const status = h("div", { class: "result", "aria-live": "polite" });
    const inputs = {};
    const errors = {};
    const fieldset = opts.fields.map((f) => {
      const id = "f-" + f.name;
      errors[f.field] = h("span", { class: "field-error", id: id + "-error", role: "alert" });
      let input;
      if (f.options) {
        input = h("select", { id: id, name: f.name, "aria-describedby": id + "-error" },
          f.options.map((o) => h("option", { value: o, text: o, selected: o === f.value })));
      } else if (f.type === "textarea") {
        input = h("textarea", { id: id, name: f.name, rows: 3, "aria-describedby": id + "-error" });
        input.value = f.value || "";
      } else {
        input = h("input", { id: id, name: f.name, type: "text", "aria-describedby": id + "-error",
          readonly: f.readonly || null, autocomplete: "off", spellcheck: "false" });
        input.value = f.value || "";
      }
      inputs[f.name] = input;
      return h("div", { class: "field", "data-field": f.field },
        h("label", { for: id, text: f.label }), input,
        f.help ? h("span", { class: "help", text: f.help }) : null, errors[f.field]);
    });
    let planned = null;
    const applyButton = h("button", { type: "button", class: "primary", hidden: true, text: "Apply" });
    function values() {
      const v = {};
      for (const [k, el] of Object.entries(inputs)) v[k] = el.value;
      return v;
    }
    function showError(e) {
      const key = e.field ? e.field.replace(/^[a-z_]+\[\d+\]\./, "") : null;
      const target = key && (errors[key] || errors[key.split(".")[0]] ||
        Object.entries(errors).find(([k]) => key.startsWith(k + "."))?.[1]);
      if (target) {
        target.textContent = e.message;
        const field = target.closest(".field");
        field.classList.add("invalid");
        field.querySelector("input,select,textarea").setAttribute("aria-invalid", "true");
      }
      put(status, notice("error", e.message));
    }
    function clear() {
      Object.values(errors).forEach((el) => {
        el.textContent = "";
        const field = el.closest(".field");
        field.classList.remove("invalid");
        field.querySelector("input,select,textarea").removeAttribute("aria-invalid");
      });
      put(status);
    }
    async function plan(event) {
      event.preventDefault();
      clear();
      applyButton.hidden = true;
      let obj;
      try { obj = opts.build(values()); } catch (e) { showError({ message: e.message, field: e.field }); return; }
      const doc = {};
      doc[opts.plural] = [obj];
      const r = await api("POST", "/v1/diff", doc);
      if (!r.ok) { showError(errorOf(r)); return; }
      planned = { doc: doc, revision: r.data.revision };
      if (!r.data.changes.length) { put(status, notice("ok", "No change: the policy already says this.")); return; }
      put(status, 
        h("h3", { text: "Plan at revision " + r.data.revision }),
        r.data.changes.map((c) => h("div", { class: "diff", "data-testid": "diff" },
          h("p", {}, h("strong", { text: c.op + " " + c.kind + " " + c.name })),
          h("div", { class: "sides" },
            h("div", {}, h("span", { class: "help", text: "before" }), h("pre", { class: "before", text: json(c.before) })),
            h("div", {}, h("span", { class: "help", text: "after" }), h("pre", { class: "after", text: json(c.after) }))))));
      applyButton.hidden = false;
      applyButton.focus();
    }
    applyButton.addEventListener("click", async () => {
      if (!planned) return;
      applyButton.disabled = true;
      status.appendChild(notice("status", "Applying, waiting for the proxies to ACK…"));
      const r = await api("POST", "/v1/apply?wait=30s", planned.doc, { "If-Match": '"' + planned.revision + '"' });
      applyButton.disabled = false;
      applyButton.hidden = true;
      if (!r.ok) { showError(errorOf(r)); return; }
      const notes = r.data.notes || [];
      put(status, h("p", { class: "ok", role: "status", "data-testid": "applied" },
        "Applied as revision " + r.data.revision + "; " +
        (notes.length ? notes.join("; ") : "every connected proxy ACKed it.")));
      if (opts.done) opts.done();
    });
    return h("section", { class: "card", "aria-label": opts.title },
      h("h2", { text: opts.title }),
      h("form", { onsubmit: plan, novalidate: true }, fieldset,
        h("div", { class: "buttons" }, h("button", { type: "submit", text: "Plan" }), applyButton)),
      status);
  }

  function split(text) { return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean); }

  function listPage(opts) {
    // opts: {title, items, columns: [[header, fn]], filters: [{label, values, get}], form(item)}
    const search = h("input", { id: "search", type: "search", placeholder: "name, path, cluster…" });
    const selects = (opts.filters || []).map((f, i) => h("select", { id: "filter-" + i },
      h("option", { value: "", text: "all" }), f.values.map((v) => h("option", { value: v, text: v }))));
    const body = h("tbody");
    const formSlot = h("div");
    function render() {
      const q = search.value.toLowerCase();
      const shown = opts.items.filter((it) =>
        (!q || JSON.stringify(it).toLowerCase().includes(q)) &&
        (opts.filters || []).every((f, i) => !selects[i].value || f.get(it).includes(selects[i].value)));
      body.replaceChildren(...(shown.length ? shown.map((it) => row([
        ...opts.columns.map(([, fn]) => fn(it)),
        canWrite() ? h("button", { type: "button", text: "Edit", "aria-label": "Edit " + it.name,
          onclick: () => { formSlot.replaceChildren(opts.form(it, refresh)); formSlot.querySelector("input,select")?.focus(); } }) : null,
      ], { "data-name": it.name })) : [h("tr", {}, h("td", { colspan: opts.columns.length + 1, text: "none" }))]));
    }
    // after a change: the list again from the API, the form and its answer left in place
    async function refresh() {
      const r = await api("GET", "/v1/" + opts.kind + "s");
      if (r.ok) { opts.items = r.data.items.map((i) => i.spec); render(); }
    }
    search.addEventListener("input", render);
    selects.forEach((s) => s.addEventListener("change", render));
    render();
    return [
      h("h1", { text: opts.title }),
      h("div", { class: "toolbar" },
        h("span", { class: "pair" }, h("label", { for: "search", text: "Search" }), search),
        (opts.filters || []).map((f, i) => h("span", { class: "pair" }, h("label", { for: "filter-" + i, text: f.label }), selects[i])),
        canWrite() ? h("button", { type: "button", class: "primary", text: "New " + opts.kind,
          onclick: () => { formSlot.replaceChildren(opts.form(null, refresh)); formSlot.querySelector("input")?.focus(); } }) : null),
      h("div", { class: "scroll" }, h("table", { "data-testid": opts.kind + "s" },
        h("caption", { text: opts.title }),
        h("thead", {}, h("tr", {}, opts.columns.map(([x]) => h("th", { scope: "col", text: x })),
          canWrite() ? h("th", { scope: "col", text: "Actions" }) : null)),
        body)),
      formSlot,
    ];
  }

  async function routes() {
    const [r, c] = await Promise.all([api("GET", "/v1/routes"), api("GET", "/v1/clusters")]);
    if (!r.ok) return [notice("error", errorOf(r).message)];
    const items = r.data.items.map((i) => i.spec);
    const clusters = c.ok ? c.data.items.map((i) => i.name) : [];
    const gateways = [...new Set(items.flatMap((i) => i.gateways || []))].sort();
    function form(item, refresh) {
      const spec = item || {};
      return changeForm({
        title: item ? "Edit route " + item.name : "New route", kind: "route", plural: "routes",
        fields: [
          { name: "name", label: "Name", field: "name", value: spec.name, readonly: !!item },
          { name: "gateways", label: "Gateways", field: "gateways", value: (spec.gateways || []).join(", "), help: "comma-separated" },
          { name: "path_prefix", label: "Path prefix", field: "match", value: (spec.match || {}).path_prefix || "" },
          { name: "cluster", label: "Cluster", field: "cluster", value: spec.cluster || "", help: clusters.length ? "one of: " + clusters.join(", ") : null },
        ],
        build: (v) => {
          const obj = Object.assign({}, spec, { name: v.name.trim(), gateways: split(v.gateways), cluster: v.cluster.trim() });
          obj.match = Object.assign({}, spec.match || {}, { path_prefix: v.path_prefix.trim() });
          return obj;
        },
        done: () => refresh(),
      });
    }
    return listPage({
      title: "Routes", kind: "route", items: items,
      columns: [["Name", (i) => i.name], ["Gateways", (i) => (i.gateways || []).join(", ")],
        ["Match", (i) => h("code", { class: "match", text: JSON.stringify(i.match || {}) })], ["Cluster", (i) => i.cluster || "—"]],
      filters: [{ label: "Gateway", values: gateways, get: (i) => i.gateways || [] }],
      form: form,
    });
  }

  async function clusters() {
    const r = await api("GET", "/v1/clusters");
    if (!r.ok) return [notice("error", errorOf(r).message)];
    const items = r.data.items.map((i) => i.spec);
    function form(item, refresh) {
      const spec = item || {};
      return changeForm({
        title: item ? "Edit cluster " + item.name : "New cluster", kind: "cluster", plural: "clusters",
        fields: [
          { name: "name", label: "Name", field: "name", value: spec.name, readonly: !!item },
          { name: "endpoints", label: "Endpoints", field: "endpoints", type: "textarea",
            value: (spec.endpoints || []).map((e) => typeof e === "string" ? e : JSON.stringify(e)).join("\n"), help: "host:port, one per line" },
        ],
        build: (v) => Object.assign({}, spec, { name: v.name.trim(), endpoints: split(v.endpoints) }),
        done: () => refresh(),
      });
    }
    return listPage({
      title: "Clusters", kind: "cluster", items: items,
      columns: [["Name", (i) => i.name], ["Endpoints", (i) => (i.endpoints || []).map((e) => typeof e === "string" ? e : JSON.stringify(e)).join(", ")]],
      form: form,
    });
  }

  async function consumers() {
    const [r, p] = await Promise.all([api("GET", "/v1/consumers"), api("GET", "/v1/plans")]);
    if (!r.ok) return [notice("error", errorOf(r).message)];
    const plans = p.ok ? p.data.items.map((i) => i.spec) : [];
    const out = [h("h1", { text: "Consumers and keys" })];
    out.push(table("Plans", ["Plan", "Limits"], plans.map((pl) => row([pl.name, (pl.limits || []).map((l) =>
      l.requests + " per " + l.per + (l.burst ? " (burst " + l.burst + ")" : "")).join(", ") || "none"])), "plans"));
    for (const item of r.data.items) {
      const c = item.spec;
      const slot = h("div", { class: "result", "aria-live": "polite" });
      const keys = await api("GET", "/v1/consumers/" + encodeURIComponent(c.name) + "/keys");
      const keyRows = (keys.ok ? keys.data.items : []).map((k) => row([
        k.name || k.id, k.prefix || k.revoked_prefix || "—", utc(k.expires_at), k.revoked_at ? "revoked " + utc(k.revoked_at) : "active",
        canWrite() && !k.revoked_at ? h("button", { type: "button", text: "Revoke", "aria-label": "Revoke key " + (k.name || k.id),
          onclick: async () => {
            if (!confirm("Revoke key " + (k.name || k.id) + " of " + c.name + "? Requests with it will be refused.")) return;
            const x = await api("DELETE", "/v1/consumers/" + encodeURIComponent(c.name) + "/keys/" + encodeURIComponent(k.name || k.id) + "?wait=30s");
            if (!x.ok) put(slot, notice("error", errorOf(x).message)); else show();
          } }) : null,
      ]));
      const controls = [];
      if (canWrite()) {
        const expiry = h("input", { id: "exp-" + c.name, type: "text", placeholder: "30d (empty: never)" });
        controls.push(h("div", { class: "toolbar" },
          h("span", { class: "pair" }, h("label", { for: "exp-" + c.name, text: "Key expires in" }), expiry),
          h("button", { type: "button", class: "primary", text: "Issue key", "aria-label": "Issue a key for " + c.name,
            onclick: async () => {
              const x = await api("POST", "/v1/consumers/" + encodeURIComponent(c.name) + "/keys?wait=30s",
                { expires: expiry.value.trim() || null });
              if (!x.ok) { put(slot, notice("error", errorOf(x).message)); return; }
              const shown = h("input", { id: "key-" + c.name, type: "text", readonly: true, "data-testid": "new-key", size: 50 });
              shown.value = x.data.key;
              put(slot, h("div", { class: "card" },
                h("p", { class: "ok", text: "Key " + x.data.id + " issued. Copy it now: it is shown this once." }),
                h("label", { for: "key-" + c.name, text: "New key" }), shown,
                h("button", { type: "button", text: "Copy", onclick: async () => {
                  shown.select();
                  try { await navigator.clipboard.writeText(shown.value); } catch (e) { document.execCommand("copy"); }
                } })));
            } })));
        const choice = h("select", { id: "plan-" + c.name },
          h("option", { value: "", text: "(no plan)" }),
          plans.map((pl) => h("option", { value: pl.name, text: pl.name, selected: pl.name === c.plan })));
        controls.push(h("div", { class: "toolbar" },
          h("span", { class: "pair" }, h("label", { for: "plan-" + c.name, text: "Plan" }), choice),
          h("button", { type: "button", text: "Move to plan", onclick: async () => {
            const x = await api("PATCH", "/v1/consumers/" + encodeURIComponent(c.name) + "?wait=30s", { plan: choice.value || null });
            put(slot, x.ok ? notice("ok", "Revision " + x.data.revision + ": " + c.name + " is on plan " + (choice.value || "none") + ".")
              : notice("error", errorOf(x).message));
          } })));
      }
      let used = null;
      if (!me.gateways.length) {
        const u = await api("GET", "/v1/analytics/usage?consumer=" + encodeURIComponent(c.name));
        if (u.ok && (u.data.items.length || u.data.warnings.length)) {
          // each limit against the requests it let through; throttled ones beside, never counted as used
          const period = { minute: "this minute", hour: "this hour", day: "today" };
          used = h("div", {},
            h("ul", { "data-testid": "plan-usage", "aria-label": "Usage of " + c.name + " against its limits" },
              u.data.items.map((e) => h("li", { text: (e.per === "second"
                ? e.used + " requests this minute against " + e.limit + " per second"
                : e.used + " of " + e.limit + " requests " + (period[e.per] || "this " + e.per)) +
                (e.throttled ? ", " + e.throttled + " throttled" : "") +
                (e.upstream_errors ? " (" + e.upstream_errors + " of them upstream errors)" : "") }))),
            u.data.warnings.map((w) => h("p", { class: "help", text: w })));
        }
      }
      out.push(h("section", { class: "card", "aria-label": "Consumer " + c.name, "data-consumer": c.name },
        h("h2", { text: c.name }), h("p", { text: "Plan: " + (c.plan || "none") }), used,
        h("p", {}, h("a", { href: "#/usage?consumer=" + encodeURIComponent(c.name), text: "Usage charts of " + c.name })),
        table("Keys of " + c.name, ["Key", "Prefix", "Expires", "State", ""], keyRows, "keys"),
        controls, slot));
    }
    if (!r.data.items.length) out.push(h("p", { text: "No consumers." }));
    return out;
  }

  // Every leaf of an object by its dotted path, as JSON text.
  function flatten(value, prefix, out) {
    if (value !== null && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      for (const [k, v] of Object.entries(value)) flatten(v, prefix ? prefix + "." + k : k, out);
    } else if (prefix) {
      out[prefix] = JSON.stringify(value);
    }
    return out;
  }
  // [path, old, new] for each field that differs ("—": absent).
  function fieldDiff(before, after) {
    const a = flatten(before || {}, "", {});
    const b = flatten(after || {}, "", {});
    const paths = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return paths.filter((p) => a[p] !== b[p]).map((p) => [p, a[p] === undefined ? "—" : a[p], b[p] === undefined ? "—" : b[p]]);
  }

  async function activity() {
    const out = [h("h1", { text: "Activity" })];
    const hist = await api("GET", "/v1/history?limit=25");
    const slot = h("div", { class: "result", "aria-live": "polite" });
    if (hist.ok) {
      const current = hist.revision;
      out.push(slot, table("Revision history (times in UTC)", ["Revision", "Time (UTC)", "Actor", "Changes", ""],
        hist.data.items.map((it) => row([
          String(it.revision), utc(it.at), it.actor || "—",
          it.changes.map((c) => c.op + " " + c.kind + " " + c.name).join("; "),
          canWrite() && it.revision !== current ? h("button", { type: "button", text: "Roll back to " + it.revision,
            "aria-label": "Roll back to revision " + it.revision,
            onclick: async () => {
              if (!confirm("Roll back the policy to revision " + it.revision + "? This writes a new revision and waits for the proxies.")) return;
              put(slot, notice("status", "Rolling back, waiting for the proxies…"));
              const x = await api("POST", "/v1/rollback?wait=30s", { revision: it.revision });
              if (!x.ok) { put(slot, notice("error", errorOf(x).message)); return; }
              put(slot, h("p", { class: "ok", role: "status", "data-testid": "rolled-back",
                text: "Rolled back to revision " + it.revision + " as revision " + x.data.revision + "; " +
                  ((x.data.notes || []).length ? x.data.notes.join("; ") : "every connected proxy ACKed it.") }),
                (x.data.skipped || []).length ? h("ul", { "aria-label": "Not rolled back" },
                  x.data.skipped.map((k) => h("li", { text: k.kind + " " + k.name + " kept: " + k.reason }))) : null);
            } }) : null,
        ], { "data-revision": it.revision })), "history"));
    } else {
      out.push(notice("error", errorOf(hist).message));
    }
    if (isAdmin()) {
      const audit = await api("GET", "/v1/audit?limit=25");
      if (audit.ok) {
        out.push(table("Audit trail (times in UTC)", ["Revision", "Time (UTC)", "Actor", "Object", "Old → new"],
          audit.data.items.map((a) => row([String(a.revision), utc(a.at), a.actor || "—", a.op + " " + a.kind + " " + a.name,
            h("ul", { class: "changes wide" }, fieldDiff(a.before, a.after).map(([path, was, now]) =>
              h("li", {}, h("code", { text: path }), ": ", h("del", { text: was }), " → ", h("ins", { text: now }))))])), "audit"));
      }
    } else {
      out.push(h("p", { class: "help", text: "The audit trail is shown to admin tokens only." }));
    }
    const ev = await api("GET", "/v1/events?limit=200");
    if (ev.ok) {
      const items = ev.data.items.slice(-25).reverse();
      out.push(table("Proxy events: pushes, ACKs, NACKs (times in UTC)", ["Time (UTC)", "Event", "Detail"],
        items.map((e) => row([utc(e.at || e.time), [e.kind, e.node, e.gateway, e.revision ? "revision " + e.revision : null].filter(Boolean).join(" "), e.detail || e.error || JSON.stringify(e)])), "events"));
    }
    return out;
  }

  async function usage() {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const [g, r, c] = await Promise.all([api("GET", "/v1/gateways"), api("GET", "/v1/routes"), api("GET", "/v1/consumers")]);
    const names = (x) => (x.ok ? x.data.items.map((i) => i.name) : []);
    const ranges = [["15m", "last 15 minutes"], ["1h", "last hour"], ["6h", "last 6 hours"],
      ["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]];
    const pick = (id, label, values, all) => {
      const sel = h("select", { id: id, name: id },
        all ? h("option", { value: "", text: all }) : null,
        values.map(([v, t]) => h("option", { value: v, text: t, selected: v === (params.get(id) || (all ? "" : "1h")) })));
      return h("span", { class: "pair" }, h("label", { for: id, text: label }), sel);
    };
    const controls = [
      pick("range", "Time range", ranges, null),
      pick("gateway", "Gateway", names(g).map((n) => [n, n]), "all gateways"),
      pick("route", "Route", names(r).map((n) => [n, n]), "all routes"),
      pick("consumer", "Consumer", names(c).map((n) => [n, n]), "all consumers"),
    ];
    const form = h("form", { class: "toolbar", "aria-label": "Usage filters", onsubmit: (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const id of ["range", "gateway", "route", "consumer"]) {
        const v = document.getElementById(id).value;
        if (v) q.set(id, v);
      }
      location.hash = "#/usage?" + q.toString();
    } }, controls, h("button", { type: "submit", class: "primary", text: "Show" }));
    const q = new URLSearchParams();
    q.set("range", params.get("range") || "1h");
    for (const id of ["gateway", "route", "consumer"]) if (params.get(id)) q.set(id, params.get(id));
    // a token limited to gateways sees the figures of one of its gateways at a time
    if (me.gateways.length && !q.get("gateway")) q.set("gateway", me.gateways[0]);
    const data = await api("GET", "/ui/usage.json?" + q.toString());
    if (!data.ok) return [h("h1", { text: "Usage" }), form, notice("error", errorOf(data).message)];
    const d = data.data;
    const pts = d.points;
    const total = (k) => pts.reduce((a, p) => a + (p.status[k] || 0), 0);
    const totalUsage = (k) => pts.reduce((a, p) => a + (p.usage[k] || 0), 0);
    const usageHeads = { admitted: "Admitted", throttled: "Throttled (429)", unauthenticated: "Unauthenticated (401/403)",
      upstream_errors: "Upstream errors (5xx)", refused: "Refused" };
    const ms = (v) => (v === null || v === undefined ? "—" : v.toFixed(1));
    function chart(kind, title, headers, cells, testid) {
      return h("section", { class: "card", "aria-label": title },
        h("h2", { text: title }),
        h("img", { class: "chart", src: "/ui/usage.svg?chart=" + kind + "&" + q.toString(),
          alt: title + ", " + d.range + " to " + d.until.slice(0, 16).replace("T", " ") + " UTC; the table below has the figures" }),
        h("details", {}, h("summary", { text: "Table: " + title }),
          table(title + " (times in UTC)", headers, pts.map((p) => row([p.time.slice(0, 16).replace("T", " "), ...cells(p)])), testid)));
    }
    return [
      h("h1", { text: "Usage" }), form,
      h("p", {}, "From " + d.since.slice(0, 19).replace("T", " ") + " to " + d.until.slice(0, 19).replace("T", " ") +
        " (times in UTC), one point per " + (d.step_s >= 3600 ? d.step_s / 3600 + " h" : d.step_s / 60 + " min") + ". ",
        h("a", { href: "/ui/usage.csv?" + q.toString(), download: "", text: "Download CSV" })),
      h("p", { "data-testid": "totals" }, "Requests: " + pts.reduce((a, p) => a + p.requests, 0) + " — " +
        (d.classes.length ? d.usage_classes.map((k) => k.replace("_", " ") + ": " + totalUsage(k)).join(", ") +
          "; by status: " + d.classes.map((k) => k + ": " + total(k)).join(", ") : "none in this range")),
      h("p", { class: "help", text: "429 and 401/403 are the gateway's own answers (its rate limits, its " +
        "authentication); a backend's 4xx is in 4xx and counts as admitted." }),
      chart("requests", "Requests by status class", ["Time (UTC)", "Requests", ...d.classes],
        (p) => [String(p.requests), ...d.classes.map((k) => String(p.status[k]))], "usage-requests"),
      chart("usage", "Requests by usage class", ["Time (UTC)", "Requests", ...d.usage_classes.map((k) => usageHeads[k] || k)],
        (p) => [String(p.requests), ...d.usage_classes.map((k) => String(p.usage[k]))], "usage-classes"),
      chart("latency", "Latency of admitted requests and upstream errors (ms)", ["Time (UTC)", "p50", "p95", "p99"], (p) => [ms(p.p50_ms), ms(p.p95_ms), ms(p.p99_ms)], "usage-latency"),
      chart("bytes", "Bytes", ["Time (UTC)", "Bytes in", "Bytes out"], (p) => [String(p.bytes_in), String(p.bytes_out)], "usage-bytes"),
    ];
  }

  const pages = { overview: overview, routes: routes, clusters: clusters, consumers: consumers, usage: usage, activity: activity };

  async function show() {
    if (timer) { clearTimeout(timer); timer = null; }
    const name = (location.hash.replace(/^#\//, "") || "overview").split("?")[0];
    const page = pages[name] || overview;
    main.removeAttribute("data-page"); // set again once this page is rendered
    document.querySelectorAll("#nav a").forEach((a) => {
      if (a.getAttribute("href") === "#/" + name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    let content;
    try { content = await page(); } catch (e) { if (e.message === "logged out") return; content = [notice("error", String(e))]; }
    main.replaceChildren(...content.flat(Infinity).filter(Boolean));
    main.setAttribute("data-page", name);
    document.title = (main.querySelector("h1")?.textContent || "Console") + " - Gateway console";
    if (page === overview) {
      timer = setTimeout(() => { if (main.getAttribute("data-page") === "overview") show(); }, 3000);
    }
  }

  async function start() {
    const r = await fetch("/ui/session", { credentials: "same-origin" });
    if (!r.ok) { location.replace("/ui/login"); return; }
    me = await r.json();
    document.getElementById("who").textContent = me.name + " (" + me.role + ")";
    document.body.setAttribute("data-role", me.role);
    document.getElementById("logout").addEventListener("click", async () => {
      await fetch("/ui/session", { method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": me.csrf } });
      location.replace("/ui/login");
    });
    window.addEventListener("hashchange", () => { show().then(() => main.focus()); });
    await show();
  }
  start();
})();
