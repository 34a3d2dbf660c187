// End to end, for real: this process is the app (enqueue + the embedded scaler, which starts
// emulator machines over HTTP); each machine runs flyjobs-worker --require test/fixtures/jobs.js
// as a separate process, against the same SQLite file or PostgreSQL schema.
const { test, describe, before, after } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const flyjobs = require("flyjobs");
const { fixtures, tempDir, storeUrl, storeName, waitFor, lines } = require("./helpers");

process.env.FLYJOBS_EMULATOR_LATENCY ??= "none";
const dir = tempDir("e2e");
const out = path.join(dir, "out.jsonl");
const logs = [];
flyjobs.setLogger({ error: (m) => logs.push(m), warn: (m) => logs.push(m), info: (m) => logs.push(m), debug: () => {} });
flyjobs.configure({
  databaseUrl: storeUrl(dir),
  queues: {
    "*": { maxMachines: 2, wait: 3 },
    "node-conc": { maxMachines: 1, concurrency: 3, wait: 5 },
  },
});
// The jobs are defined in their own file, which worker machines load.
const jobs = require(path.join(fixtures, "jobs.js"));

async function state(id, states) {
  const client = await flyjobs.getClient();
  return waitFor(`job ${id} to be ${states.join(" or ")}`, async () => {
    const job = await client.job(id);
    return job && states.includes(job.state) ? job : null;
  });
}

describe(`end to end on ${storeName()}`, { concurrency: true }, () => {
  before(() => process.chdir(dir));
  after(async () => {
    await flyjobs.reset();
  });

  test("the default worker command is this node, flyjobs-worker and the job file", () => {
    const argv = flyjobs.defaultWorkerCommand();
    assert.equal(argv[0], process.execPath);
    assert.match(argv[1], /dist[/\\]cli\.js$/);
    assert.deepEqual(argv.slice(2), ["--require", path.join(fixtures, "jobs.js")]);
  });

  test("enqueue runs the job in a worker machine", async () => {
    const tag = "echo";
    const args = { out, tag, n: 1, nested: { list: [1, "two", null, true], text: "é" } };
    const handle = await jobs.echo.enqueue(args);
    assert.equal(typeof handle.id, "number");
    assert.equal(handle.record.name, "echo");
    assert.equal(handle.record.queue, "node-echo");
    assert.deepEqual(handle.record.payload, { job: "echo", args });
    const [line] = await waitFor("the echo job to run", () => lines(out, tag)[0] && lines(out, tag));
    assert.deepEqual(line.args, args);
    assert.equal(line.id, handle.id);
    assert.ok(line.machine, "ran in an emulator machine (FLY_MACHINE_ID set)");
    assert.notEqual(line.pid, process.pid);
    await state(handle.id, ["completed"]);
    assert.equal(await handle.status(), "completed");
  });

  test("defineJob's machine size is the machine its runs get; an unknown size writes nothing", async () => {
    const tag = "sized";
    const handle = await jobs.sized.enqueue({ out, tag });
    assert.equal(handle.record.shape, "shared-cpu-1x:512");
    const [line] = await waitFor("the sized job to run", () => lines(out, tag)[0] && lines(out, tag));
    assert.equal(line.memoryMb, "512");
    await assert.rejects(jobs.missized.enqueue({}), (e) => e.code === "config" && /huge-9x/.test(e.message) && /performance-2x/.test(e.message));
  });

  test("a job that throws is retried, then succeeds", async () => {
    const tag = "flaky";
    const handle = await jobs.flaky.enqueue({ out, tag, succeedOn: 2 });
    const failed = await waitFor("the first failure to be recorded", async () => {
      const j = await handle.refresh();
      return j.lastError ? j : null;
    });
    assert.equal(failed.lastError.class, "RangeError");
    assert.equal(failed.lastError.message, "flaky attempt 1");
    assert.ok(failed.lastError.backtrace.some((l) => l.includes("jobs.js")), JSON.stringify(failed.lastError.backtrace));
    const done = await state(handle.id, ["completed"]);
    assert.equal(done.attempts, 2);
    assert.deepEqual(lines(out, tag).map((l) => l.attempts), [1, 2]);
  });

  test("a job that always throws is dead after maxAttempts", async () => {
    const tag = "doomed";
    const handle = await jobs.doomed.enqueue({ out, tag });
    assert.equal(handle.record.maxAttempts, 2);
    const dead = await state(handle.id, ["dead"]);
    assert.equal(dead.attempts, 2);
    assert.equal(dead.lastError.class, "TypeError");
    assert.equal(dead.lastError.message, "doomed to fail");
    const attempts = await (await flyjobs.getClient()).attempts(handle.id);
    assert.deepEqual(attempts.map((a) => [a.attempt, a.outcome, a.error.class]), [[1, "scheduled", "TypeError"], [2, "dead", "TypeError"]]);
    assert.deepEqual(lines(out, tag).map((l) => l.attempts), [1, 2]);
  });

  test("enqueueIn and enqueueAt run no earlier than asked", async () => {
    const t0 = Date.now();
    const later = await jobs.echo.enqueueIn(3000, { out, tag: "in" });
    const at = await jobs.echo.enqueueAt(new Date(t0 + 4000), { out, tag: "at" });
    assert.equal(later.record.state, "scheduled");
    assert.equal(await at.status(), "scheduled");
    const [a] = await waitFor("the enqueueIn job", () => lines(out, "in")[0] && lines(out, "in"));
    const [b] = await waitFor("the enqueueAt job", () => lines(out, "at")[0] && lines(out, "at"));
    assert.ok(a.at >= t0 + 3000, `ran ${a.at - t0} ms after enqueue`);
    assert.ok(b.at >= t0 + 4000, `ran ${b.at - t0} ms after enqueue`);
  });

  test("concurrency: N jobs at once in one worker, never N+1", async () => {
    const tag = "conc";
    const n = 3;
    await jobs.slow.enqueueMany(Array.from({ length: 3 * n }, (_, i) => ({ out, tag, i, ms: 700 })));
    const events = await waitFor("the 9 slow jobs", () => {
      const l = lines(out, tag);
      return l.filter((e) => e.event === "end").length === 3 * n ? l : null;
    });
    let running = 0;
    let most = 0;
    for (const e of events) {
      running += e.event === "start" ? 1 : -1;
      most = Math.max(most, running);
    }
    assert.equal(most, n, `at most ${n} at once, and ${n} reached`);
    assert.equal(new Set(events.map((e) => e.machine)).size, 1, "one worker machine (maxMachines 1)");
  });

  test("the admin calls see the jobs", async () => {
    const client = await flyjobs.getClient();
    const h = await jobs.echo.enqueueIn(3_600_000, { out, tag: "admin" });
    const listed = await client.jobs({ queue: "node-echo", state: "scheduled" });
    assert.ok(listed.some((j) => j.id === h.id));
    const cancelled = await client.cancel(h.id);
    assert.equal(cancelled.state, "discarded");
    const stats = await client.stats();
    assert.ok(stats.some((s) => s.queue === "node-echo"));
    await assert.rejects(client.cancel(h.id), (e) => e instanceof flyjobs.FlyJobsError && e.code === "conflict");
    const config = await client.config();
    assert.equal(config.queues["node-conc"].concurrency, 3);
  });
});
