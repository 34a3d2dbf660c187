// The package over the addon without worker machines: argument checks, the shared vectors,
// errors, the event loop, imports and the TypeScript types. On the store under test (SQLite,
// or PostgreSQL when FLYJOBS_NODE_TEST_DATABASE_URL is set).
const { test, describe, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const flyjobs = require("flyjobs");
const { errorFromView } = require("../dist/errors.js");
const { root, fixtures, tempDir, storeUrl, storeName } = require("./helpers");

const vectors = (name) => JSON.parse(fs.readFileSync(path.join(root, "..", "tests", "vectors", name), "utf8"));
const dir = tempDir("unit");
flyjobs.setLogger({ error() {}, warn() {}, info() {}, debug() {} });
flyjobs.configure({ databaseUrl: storeUrl(dir), scaler: false });
const queue = `node-unit-${process.pid}`;
const job = flyjobs.defineJob("unitJob", async () => {}, { queue });

/** A JSON pointer into a value (RFC 6901, enough of it for the vectors). */
const dig = (doc, pointer) =>
  pointer
    .split("/")
    .slice(1)
    .reduce((d, k) => (d && typeof d === "object" ? d[k.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), doc);

/** The vectors' options (core names) as a JS app writes them (camelCase). */
function camelOptions(options) {
  const out = {};
  for (const [k, v] of Object.entries(options)) {
    if (k === "queues" && v && typeof v === "object" && !Array.isArray(v)) {
      out.queues = Object.fromEntries(
        Object.entries(v).map(([q, s]) => [q, s && typeof s === "object" && !Array.isArray(s) ? Object.fromEntries(Object.entries(s).map(([sk, sv]) => [camel(sk), sv])) : s]),
      );
    } else {
      out[camel(k)] = v;
    }
  }
  return out;
}
const camel = (k) => k.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

describe(`the package on ${storeName()}`, () => {
  let client;
  before(async () => {
    client = await flyjobs.getClient();
    await client.clear(queue);
  });
  after(async () => {
    await flyjobs.reset();
  });

  test("arguments that do not round-trip through JSON are a TypeError naming the path; nothing is written", async () => {
    const cycle = { a: 1 };
    cycle.self = cycle;
    const bad = [
      [{ id: 10n }, /args\.id is a BigInt/],
      [{ cb: () => 1 }, /args\.cb is a function/],
      [{ s: Symbol("x") }, /args\.s is a symbol/],
      [{ list: [1, undefined, 3] }, /args\.list\[1\] is undefined/],
      [{ deep: { c: cycle } }, /args\.deep\.c\.self refers back/],
      [{ n: NaN }, /args\.n is NaN/],
      [{ "odd key": Infinity }, /args\["odd key"\] is Infinity/],
      [new Map([[1, 2]]), /args is a Map/],
    ];
    for (const [args, message] of bad) {
      await assert.rejects(job.enqueue(args), (e) => e instanceof TypeError && message.test(e.message), String(message));
    }
    await assert.rejects(job.enqueueMany([{ ok: 1 }, { x: [undefined] }]), (e) => e instanceof TypeError && /args\[1\]\.x\[0\] is undefined/.test(e.message));
    await assert.rejects(client.enqueue({ payload: { f() {} } }), (e) => e instanceof TypeError && /job\.payload\.f is a function/.test(e.message));
    assert.deepEqual(await client.jobs({ queue }), [], "nothing was written");

    // What JSON keeps: an undefined property is left out, a Date becomes its ISO text.
    const when = new Date("2026-01-02T03:04:05.000Z");
    const ok = await job.enqueue({ a: undefined, when, list: [null] });
    assert.deepEqual(ok.record.payload, { job: "unitJob", args: { when: when.toISOString(), list: [null] } });
    assert.equal(await client.clear(queue), 1);
  });

  test("a bad field is a FlyJobsError from the core; enqueueMany is all or nothing", async () => {
    await assert.rejects(client.enqueue({ payload: 1, queue: "bad queue!" }), (e) => {
      assert.ok(e instanceof flyjobs.FlyJobsError && e instanceof Error);
      assert.equal(e.code, "invalid");
      assert.equal(e.retryable, false);
      assert.match(e.message, /queue/);
      return true;
    });
    await assert.rejects(client.enqueueMany([{ payload: 1, queue }, { payload: 2, queue: "" }]), (e) => e.code === "invalid" && /queue name ""/.test(e.message));
    assert.deepEqual(await client.jobs({ queue }), []);
  });

  test("handles: id and status; cancel; retry of a dead job is refused for a waiting one", async () => {
    const h = await job.enqueueIn(60_000, { n: 1 });
    assert.equal(await h.status(), "scheduled");
    const [a, b] = await job.enqueueMany([{ n: 2 }, { n: 3 }]);
    assert.equal(b.id, a.id + 1);
    assert.equal(await a.status(), "ready");
    assert.equal((await client.cancel(h.id)).state, "discarded");
    await assert.rejects(client.retry(a.id), (e) => e.code === "conflict");
    assert.equal(await client.job(987654321), null);
    assert.equal(await client.clear(queue), 2);
  });

  test("the shared option vectors (tests/vectors/options.json), given in camelCase", () => {
    const { cases } = vectors("options.json");
    assert.ok(cases.length >= 20);
    for (const c of cases) {
      const options = camelOptions(c.options);
      if (c.expect) {
        const got = flyjobs.resolveConfig(options, c.env);
        for (const [pointer, want] of Object.entries(c.expect)) assert.deepEqual(dig(got, pointer), want, `${c.name}: ${pointer}`);
      } else {
        assert.throws(() => flyjobs.resolveConfig(options, c.env), (e) => {
          assert.ok(e instanceof flyjobs.FlyJobsError, `${c.name}: ${e}`);
          assert.equal(e.code, c.error.kind, c.name);
          for (const needle of c.error.contains) assert.ok(e.message.includes(needle), `${c.name}: ${JSON.stringify(e.message)} lacks ${JSON.stringify(needle)}`);
          return true;
        });
      }
    }
  });

  test("every core option has its camelCase name", () => {
    const specs = flyjobs.optionSpecs();
    for (const s of specs.options) {
      const mapped = flyjobs.toCoreOptions({ [camel(s.name)]: s.name === "queues" ? {} : "x" });
      assert.deepEqual(Object.keys(mapped), [s.name]);
    }
    assert.deepEqual(flyjobs.toCoreOptions({ jobFiles: ["a.js"], scaler: false, queues: { My_Queue: { maxMachines: 2 } } }), {
      queues: { My_Queue: { max_machines: 2 } },
    });
  });

  test("the shared error vectors (tests/vectors/errors.json): FlyJobsError with the core's fields", () => {
    const { kinds, cases } = vectors("errors.json");
    for (const k of kinds) {
      const e = errorFromView({ kind: k.kind, message: "m", retryable: k.retryable, status: null, request_id: null, job_id: null, causes: [] });
      assert.ok(e instanceof flyjobs.FlyJobsError && e instanceof Error, k.kind);
      assert.equal(e.code, k.kind);
      assert.equal(e.retryable, k.retryable);
      assert.equal(e.name, "FlyJobsError");
    }
    for (const { view } of cases) {
      const e = errorFromView(view);
      assert.equal(e.code, view.kind);
      assert.equal(e.message, view.message);
      assert.equal(e.retryable, view.retryable);
      assert.equal(e.status, view.status);
      assert.equal(e.requestId, view.request_id);
      assert.equal(e.jobId, view.job_id);
      assert.deepEqual(e.causes, view.causes);
    }
  });

  test("the event loop stays free while a worker waits", async () => {
    const worker = await client.worker({ queues: [`${queue}-idle`], wait: 2, concurrency: 2 });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 20);
    const t0 = Date.now();
    await worker.run();
    clearInterval(timer);
    const waited = Date.now() - t0;
    assert.ok(waited >= 1500, `run() returned after ${waited} ms: it should wait for the idle time`);
    assert.ok(ticks >= waited / 20 / 4, `a 20 ms timer fired ${ticks} times in ${waited} ms`);
  });

  test("the event loop stays free while enqueue runs", async () => {
    for (const enqueue of [() => job.enqueue({ n: 1 }), () => job.enqueueMany(Array.from({ length: 500 }, (_, i) => ({ i })))]) {
      let turned = false;
      setImmediate(() => (turned = true));
      const promise = enqueue();
      assert.equal(turned, false);
      await promise;
      assert.equal(turned, true, "the event loop turned before the enqueue resolved: it did not block");
    }
    assert.equal(await client.clear(queue), 501);
  });

  test("ESM import and CommonJS require", () => {
    const esm = JSON.parse(execFileSync(process.execPath, [path.join(fixtures, "esm-import.mjs")], { encoding: "utf8" }));
    assert.deepEqual(esm, { named: true, sameState: true, jobName: "esmImportCheck", maxMachines: 3 });
    const cjs = JSON.parse(execFileSync(process.execPath, [path.join(fixtures, "cjs-require.cjs")], { encoding: "utf8" }));
    assert.deepEqual(cjs, { named: true, jobName: "cjsRequireCheck", jobFiles: [path.join(fixtures, "cjs-require.cjs")], maxMachines: 4 });
  });

  test("tsc --noEmit on a strict TypeScript app", () => {
    const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
    try {
      execFileSync(process.execPath, [tsc, "--noEmit", "-p", path.join(__dirname, "ts-app", "tsconfig.json")], { encoding: "utf8" });
    } catch (e) {
      assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
    }
  });
});
