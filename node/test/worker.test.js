// flyjobs-worker run directly as a child process (no scaler, no machines): graceful stop on
// SIGTERM, and ESM job files (--import). On the store under test.
const { test, describe, before, after } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawn } = require("node:child_process");
const flyjobs = require("flyjobs");
const { cli, fixtures, tempDir, storeUrl, storeName, waitFor, lines } = require("./helpers");

const dir = tempDir("worker");
const out = path.join(dir, "out.jsonl");
flyjobs.setLogger({ error() {}, warn() {}, info() {}, debug() {} });
// No scaler: the worker processes below are the only ones claiming.
flyjobs.configure({ databaseUrl: storeUrl(dir), scaler: false });
const jobs = require(path.join(fixtures, "jobs.js"));

/** Starts flyjobs-worker; resolves `exited` with its exit code and output. */
function startWorker(args, env = {}) {
  const child = spawn(process.execPath, [cli, ...args], {
    cwd: dir,
    env: { ...process.env, FLYJOBS_DATABASE_URL: storeUrl(dir), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal, output })));
  return { child, exited, output: () => output };
}

describe(`flyjobs-worker on ${storeName()}`, () => {
  let client;
  before(async () => {
    client = await flyjobs.getClient();
    await client.clear("node-sleepy");
  });
  after(async () => {
    await flyjobs.reset();
  });

  test("SIGTERM mid-job: the job is released untouched, the worker exits 0", async () => {
    const h = await jobs.sleepy.enqueue({ out, tag: "released", ms: 60_000 });
    const w = startWorker(["--require", path.join(fixtures, "jobs.js"), "--queues", "node-sleepy", "--wait", "forever", "--concurrency", "1"], {
      FLYJOBS_SHUTDOWN_TIMEOUT: "1",
    });
    await waitFor("the job to start", () => lines(out, "released").length > 0 || w.child.exitCode !== null);
    assert.equal((await client.job(h.id)).state, "running", w.output());
    w.child.kill("SIGTERM");
    const { code, output } = await w.exited;
    assert.equal(code, 0, output);
    const job = await client.job(h.id);
    assert.equal(job.state, "ready", "released, to run again elsewhere");
    assert.equal(job.attempts, 0, "a release gives the attempt back");
    assert.equal(job.lastError, null);
    assert.deepEqual(lines(out, "released").map((l) => l.event), ["start"]);
    await client.clear("node-sleepy");
  });

  test("SIGTERM mid-job: a job that ends within shutdownTimeout completes", async () => {
    const h = await jobs.sleepy.enqueue({ out, tag: "finishes", ms: 1500 });
    const w = startWorker(["--require", path.join(fixtures, "jobs.js"), "--queues", "node-sleepy", "--wait", "forever"], {
      FLYJOBS_SHUTDOWN_TIMEOUT: "30",
    });
    await waitFor("the job to start", () => lines(out, "finishes").length > 0 || w.child.exitCode !== null);
    w.child.kill("SIGTERM");
    const { code, output } = await w.exited;
    assert.equal(code, 0, output);
    assert.equal((await client.job(h.id)).state, "completed");
    const events = lines(out, "finishes");
    assert.deepEqual(events.map((l) => l.event), ["start", "end"]);
    assert.equal(events[1].stopping, true, "the job saw the worker stopping");
  });

  test("--import loads an ESM job file; --wait lets the worker leave when idle", async () => {
    const esm = await import(path.join(fixtures, "jobs.mjs"));
    const h = await esm.esmEcho.enqueue({ out, tag: "esm" });
    const w = startWorker(["--import", path.join(fixtures, "jobs.mjs"), "--queues", "node-esm", "--wait", "1"]);
    const { code, output } = await w.exited;
    assert.equal(code, 0, output);
    assert.equal((await client.job(h.id)).state, "completed");
    assert.equal(lines(out, "esm")[0].esm, true);
    assert.deepEqual(flyjobs.defaultWorkerCommand().slice(2), [
      "--require",
      path.join(fixtures, "jobs.js"),
      "--import",
      require("node:url").pathToFileURL(path.join(fixtures, "jobs.mjs")).href,
    ]);
  });

  test("bad arguments print usage and exit 2; a bad setting names it", async () => {
    const a = await startWorker(["--concurrency", "zero"]).exited;
    assert.equal(a.code, 2);
    assert.match(a.output, /--concurrency must be an integer >= 1, got "zero"/);
    assert.match(a.output, /Usage: flyjobs-worker/);
    const b = await startWorker(["--queues", "node-esm", "--wait", "soon"]).exited;
    assert.equal(b.code, 1, b.output);
    assert.match(b.output, /wait/);
    assert.match(b.output, /"soon"/);
  });

  test("a job nobody defined fails with UnknownJobError", async () => {
    const stored = await client.enqueue({ queue: "node-unknown", payload: { job: "nope", args: {} }, name: "nope", maxAttempts: 1 });
    const { code, output } = await startWorker(["--require", path.join(fixtures, "jobs.js"), "--queues", "node-unknown", "--wait", "1"]).exited;
    assert.equal(code, 0, output);
    const job = await client.job(stored.id);
    assert.equal(job.state, "dead");
    assert.equal(job.lastError.class, "UnknownJobError");
    assert.match(job.lastError.message, /no job named "nope"/);
  });
});
