// A Node `cluster` app (test/fixtures/cluster-app.js, 2 workers) on the embedded default: one
// local Machines API daemon for both workers, one scaler acting at a time (the store's leader
// lock), every job run exactly once, the leader lock given back when a worker exits, and the
// daemon's machines stopped when the last worker leaves.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { fixtures, tempDir, storeName, waitFor, lines } = require("./helpers");

const STOP_TIMEOUT_MS = 60_000; // the daemon gives each machine 10 s of grace; a loaded box is slow

/** The app's store: a fresh PostgreSQL schema (its own local API and leader lock), or SQLite. */
function appStore(dir) {
  const server = process.env.FLYJOBS_NODE_TEST_DATABASE_URL;
  if (!server) {
    const file = path.join(dir, "queue.sqlite3");
    return {
      url: `sqlite://${file}?mode=rwc`,
      query: (sql) => execFileSync("sqlite3", ["-cmd", ".timeout 30000", file, sql], { encoding: "utf8" }).trim(),
      drop: () => {},
    };
  }
  // test-node.sh gives a URL with options=-csearch_path=SCHEMA: psql takes the same URL.
  const psql = (url, sql) =>
    execFileSync("psql", ["-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql], {
      encoding: "utf8",
      env: { ...process.env, PGOPTIONS: "--client-min-messages=warning" },
    }).trim();
  const schema = `node_cluster_${process.pid}`;
  const base = server.replace(/[?&]options=[^&]*/, "").replace(/\?$/, "");
  psql(base, `CREATE SCHEMA ${schema}`);
  const sep = base.includes("?") ? "&" : "?";
  const url = `${base}${sep}options=-csearch_path%3D${schema}`;
  return { url, query: (sql) => psql(url, sql), drop: () => psql(base, `DROP SCHEMA IF EXISTS ${schema} CASCADE`) };
}

/** The live local API daemons whose machines run in `dir`. */
function daemons(dir) {
  const found = [];
  for (const name of fs.readdirSync(os.tmpdir())) {
    if (!name.startsWith("flyjobs-local-")) continue;
    const state = path.join(os.tmpdir(), name);
    try {
      if (JSON.parse(fs.readFileSync(path.join(state, "spec.json"), "utf8")).dir !== dir) continue;
      const record = JSON.parse(fs.readFileSync(path.join(state, "api.json"), "utf8"));
      process.kill(record.pid, 0);
      found.push(record);
    } catch {
      // not this app's, not serving, or gone
    }
  }
  return found;
}

/** Processes whose working directory is `dir`, but for `except`: the worker machines. */
function processesIn(dir, except) {
  const pids = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || except.has(Number(entry))) continue;
    try {
      if (fs.readlinkSync(`/proc/${entry}/cwd`) === dir) pids.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

async function startedMachines(api, queue) {
  try {
    const res = await fetch(`${api}/v1/apps/flyjobs-local/machines`, { headers: { Authorization: "Bearer test" } });
    const machines = await res.json();
    return machines.filter((m) => m.state === "started" && m.config?.metadata?.flyjobs_queue === queue).length;
  } catch {
    return 0;
  }
}

test(`a cluster app shares one local Machines API and one scaler (${storeName()})`, { timeout: 600_000 }, async () => {
  const dir = fs.realpathSync(tempDir("cluster"));
  const out = path.join(dir, "out.jsonl");
  const queue = `node-cluster-${process.pid}`;
  const store = appStore(dir);
  const env = { ...process.env, APP_DATABASE_URL: store.url, APP_QUEUE: queue, APP_OUT: out };
  delete env.FLYJOBS_WORKER; // an app process: its workers run the scaler
  const primary = spawn(process.execPath, [path.join(fixtures, "cluster-app.js")], {
    cwd: dir,
    env,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const events = [];
  // The workers' flyjobs log lines go to the same stdout: events are the JSON lines.
  readline.createInterface({ input: primary.stdout }).on("line", (l) => {
    if (l.startsWith("{")) events.push(JSON.parse(l));
    else if (process.env.FLYJOBS_TEST_VERBOSE) process.stderr.write(l + "\n");
  });
  const event = (what, f) => waitFor(what, () => events.find(f));
  const send = (cmd) => primary.stdin.write(JSON.stringify(cmd) + "\n");
  try {
    await waitFor("both cluster workers up", () => events.filter((e) => e.worker).length === 2);
    const [a, b] = events.filter((e) => e.worker);
    assert.ok(a.api && a.api.startsWith("http://"), JSON.stringify(a));
    assert.equal(b.api, a.api, "both workers use the same local Machines API");
    assert.equal(daemons(dir).length, 1, "one local API daemon for the app");

    let maxSeen = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        maxSeen = Math.max(maxSeen, await startedMachines(a.api, queue));
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    send({ enqueue: "first", n: 20 });
    await event("the first jobs enqueued", (e) => e.enqueued === "first");
    await waitFor("40 jobs to run", () => lines(out, "first").length >= 40);
    await new Promise((r) => setTimeout(r, 1000)); // a duplicate would show up here
    sampling = false;
    await sampler;
    for (const w of [a, b]) {
      const ns = lines(out, "first").filter((l) => l.from === w.pid).map((l) => l.n).sort((x, y) => x - y);
      assert.deepEqual(ns, [...Array(20).keys()], `every job of worker ${w.pid} ran exactly once`);
    }
    assert.ok(lines(out, "first").every((l) => l.worker === "1" && l.pid !== a.pid && l.pid !== b.pid));
    assert.ok(maxSeen >= 1 && maxSeen <= 2, `started machines peaked at ${maxSeen} (max_machines 2: one scaler)`);

    const owner = () => store.query("SELECT owner FROM flyjobs_locks WHERE name = 'scaler'") || null;
    const held = owner();
    const leader = [a, b].find((w) => held?.includes(`-${w.pid}-`));
    assert.ok(leader, `the scaler's leader is one of the workers: ${held}`);
    const other = leader === a ? b : a;

    // The leader leaves (disconnect: a normal exit): its client is closed at exit, so the lock
    // is given back at once (not left to expire in 10 s); the other worker takes over.
    send({ leave: leader.pid });
    const gone = await event("the leader to exit", (e) => e.exited === leader.pid);
    assert.equal(gone.code, 0);
    const after = owner();
    assert.ok(!after?.includes(`-${leader.pid}-`), `the leader lock outlived its process: ${after}`);
    await waitFor("the other worker to lead", () => owner()?.includes(`-${other.pid}-`), 30_000);
    assert.deepEqual(daemons(dir).map((d) => d.url), [a.api], "the API outlives the first worker");
    send({ enqueue: "later", n: 3 });
    await waitFor("the later jobs to run", () => lines(out, "later").length >= 3);
    const except = () => new Set([primary.pid, other.pid, ...daemons(dir).map((d) => d.pid)]);
    assert.ok(processesIn(dir, except()).length > 0, "worker machines are still up (their queue waits 60 s idle)");

    // The last worker leaves: the daemon stops the machines and exits.
    primary.stdin.end();
    const [code] = await new Promise((r) => primary.on("exit", (...x) => r(x)));
    assert.equal(code, 0);
    await waitFor("the local API to stop", () => daemons(dir).length === 0, STOP_TIMEOUT_MS);
    await waitFor("the worker machines to stop", () => processesIn(dir, new Set()).length === 0, STOP_TIMEOUT_MS);
    assert.deepEqual(lines(out, "later").map((l) => l.n).sort(), [0, 1, 2]);
  } finally {
    if (primary.exitCode === null) primary.kill("SIGKILL");
    store.drop();
  }
});
