// flyjobs (Node package) vs BullMQ 6 (Redis) and pg-boss 10 (PostgreSQL), side by side in one run
// of one process:
//   - enqueue: µs per job, one at a time from one async caller (100 warm-up, then N timed), as an
//     app's request handler would do it;
//   - throughput: M no-op jobs enqueued in bulk first, then one worker in this process with
//     concurrency C (flyjobs Worker, BullMQ Worker, pg-boss work() with batchSize C) runs them:
//     jobs/s from the worker's start until the last job completed.
// flyjobs runs on SQLite (a temp file) and on PostgreSQL (a fresh schema of
// FLYJOBS_TEST_DATABASE_URL); pg-boss on the same PostgreSQL; BullMQ on a redis-server this
// script starts on a loopback port (no persistence). No scaler, no machines.
//
//   (cd bench/node && npm ci)
//   cargo build --workspace                       # the debug addon the tests use, or:
//   cargo build --release --locked -p flyjobs-node
//   FLYJOBS_BENCH_ADDON=target/release/libflyjobs_node.so scripts/with-postgres.sh node bench/node/bench.js
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const net = require("node:net");
const { spawn } = require("node:child_process");

const root = path.resolve(__dirname, "..", "..");
const addon = path.resolve(root, process.env.FLYJOBS_BENCH_ADDON || "target/debug/libflyjobs_node.so");
fs.copyFileSync(addon, path.join(root, "node", "flyjobs.linux-x64-gnu.node"));
const flyjobs = require(path.join(root, "node"));
const { Queue, Worker: BullWorker } = require("bullmq");
const PgBoss = require("pg-boss");
const { Client: PgClient } = require("pg");

const N = Number(process.env.N || 1000);
const M = Number(process.env.M || 2000);
const C = Number(process.env.C || 10);
const WARMUP = 100;
const pgUrl = process.env.FLYJOBS_TEST_DATABASE_URL;
if (!pgUrl) throw new Error("FLYJOBS_TEST_DATABASE_URL is not set: run me through scripts/with-postgres.sh");

flyjobs.setLogger({ error: console.error, warn: console.error, info() {}, debug() {} });
// The no-op job: counts itself (the handler returns, then the worker records the completion).
let flyjobsOnDone = () => {};
flyjobs.defineJob("noop", async () => flyjobsOnDone());
const results = [];

async function enqueueBench(label, enqueue) {
  for (let i = 0; i < WARMUP; i++) await enqueue(i);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await enqueue(i);
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / N;
  console.log(`${label.padEnd(28)} enqueue ${us.toFixed(1).padStart(8)} µs/job  (${N} one at a time)`);
  results.push({ label, what: "enqueue µs/job", value: us });
}

/** `start(onDone)` starts the worker; resolves with jobs/s once M jobs completed. */
async function throughputBench(label, start) {
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const onDone = () => {
    done += 1;
    if (done === M) finish();
  };
  const t0 = process.hrtime.bigint();
  const stop = await start(onDone);
  await finished;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await stop();
  const rate = M / s;
  console.log(`${label.padEnd(28)} worker  ${rate.toFixed(0).padStart(8)} jobs/s   (${M} no-op jobs, concurrency ${C}, ${s.toFixed(2)} s)`);
  results.push({ label, what: "no-op jobs/s", value: rate });
}

async function benchFlyjobs(label, databaseUrl) {
  const client = await flyjobs.Client.open({ databaseUrl });
  const queue = `bench-${process.pid}`;
  await client.clear(queue);
  await enqueueBench(label, (i) => client.enqueue({ queue, name: "noop", payload: { job: "noop", args: { i } } }));
  await client.clear(queue);
  for (let i = 0; i < M; i += 1000) {
    const chunk = Array.from({ length: Math.min(1000, M - i) }, (_, j) => ({ queue, name: "noop", payload: { job: "noop", args: { i: i + j } } }));
    await client.enqueueMany(chunk);
  }
  await throughputBench(label, async (onDone) => {
    flyjobsOnDone = onDone;
    const worker = await client.worker({ queues: [queue], concurrency: C, wait: "forever" });
    const running = worker.run({ onFailure: (_j, e) => console.error("flyjobs job failed", e) });
    return async () => {
      await worker.stop(5);
      await running;
    };
  });
  await client.close();
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function startRedis() {
  const port = await freePort();
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, "127.0.0.1", () => (s.end(), r(true)));
      s.on("error", () => r(false));
    });
    if (ok) return { port, stop: () => redis.kill("SIGTERM") };
    await new Promise((r) => setTimeout(r, 100));
  }
  redis.kill("SIGKILL");
  throw new Error("redis-server did not start (Debian redis-server; scripts/setup.sh installs it)");
}

async function benchBullmq() {
  const redis = await startRedis();
  const connection = { host: "127.0.0.1", port: redis.port, maxRetriesPerRequest: null };
  let queue;
  try {
    queue = new Queue("bench", { connection });
    await enqueueBench("BullMQ 6.7 (Redis 7)", (i) => queue.add("noop", { i }, { removeOnComplete: true }));
    await queue.obliterate({ force: true });
    for (let i = 0; i < M; i += 1000) {
      await queue.addBulk(Array.from({ length: Math.min(1000, M - i) }, (_, j) => ({ name: "noop", data: { i: i + j }, opts: { removeOnComplete: true } })));
    }
    await throughputBench("BullMQ 6.7 (Redis 7)", async (onDone) => {
      const worker = new BullWorker("bench", async () => {}, { connection, concurrency: C });
      worker.on("completed", onDone);
      return () => worker.close();
    });
  } finally {
    await queue?.close();
    redis.stop();
  }
}

async function benchPgBoss() {
  const boss = new PgBoss({ connectionString: pgUrl, schema: `pgboss_${process.pid}` });
  boss.on("error", (e) => console.error("pg-boss:", e.message));
  await boss.start();
  const name = "bench";
  await boss.createQueue(name);
  try {
    await enqueueBench("pg-boss 10.4 (PostgreSQL)", (i) => boss.send(name, { i }));
    await boss.purgeQueue(name);
    // batchSize C is the like-for-like setting (C jobs in flight); pg-boss waits
    // pollingIntervalSeconds (0.5 s, its minimum) between fetches, so a bigger batch is also shown.
    for (const batchSize of [C, 10 * C]) {
      const queueName = `${name}_${batchSize}`;
      await boss.createQueue(queueName);
      for (let i = 0; i < M; i += 1000) {
        await boss.insert(Array.from({ length: Math.min(1000, M - i) }, (_, j) => ({ name: queueName, data: { i: i + j } })));
      }
      await throughputBench(`pg-boss 10.4 (batchSize ${batchSize})`, async (onDone) => {
        await boss.work(queueName, { batchSize, pollingIntervalSeconds: 0.5 }, async (jobs) => {
          for (let k = 0; k < jobs.length; k++) onDone();
        });
        return () => boss.offWork(queueName);
      });
    }
  } finally {
    await boss.stop({ graceful: false, wait: true });
  }
}

async function main() {
  console.log(`node ${process.version}, addon ${path.relative(root, addon)}, N=${N} M=${M} C=${C}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flyjobs-node-bench-"));
  const schema = `bench_${process.pid}`;
  const pg = new PgClient({ connectionString: pgUrl });
  await pg.connect();
  await pg.query(`CREATE SCHEMA ${schema}`);
  await pg.end();
  const sep = pgUrl.includes("?") ? "&" : "?";
  await benchFlyjobs("flyjobs (SQLite)", `sqlite://${tmp}/bench.sqlite3?mode=rwc`);
  await benchFlyjobs("flyjobs (PostgreSQL)", `${pgUrl}${sep}options=-csearch_path%3D${schema}`);
  await benchBullmq();
  await benchPgBoss();
  const get = (label, what) => results.find((r) => r.label.startsWith(label) && r.what === what)?.value;
  const enqPg = get("flyjobs (PostgreSQL)", "enqueue µs/job");
  const enqBull = get("BullMQ", "enqueue µs/job");
  const thrPg = get("flyjobs (PostgreSQL)", "no-op jobs/s");
  const thrBoss = get(`pg-boss 10.4 (batchSize ${C})`, "no-op jobs/s");
  const thrBossBig = get(`pg-boss 10.4 (batchSize ${10 * C})`, "no-op jobs/s");
  console.log(`ratios: enqueue flyjobs(PostgreSQL)/BullMQ = ${(enqPg / enqBull).toFixed(2)}x (goal <= 1.0); ` +
    `enqueue flyjobs(SQLite)/BullMQ = ${(get("flyjobs (SQLite)", "enqueue µs/job") / enqBull).toFixed(2)}x; ` +
    `throughput flyjobs(PostgreSQL)/pg-boss = ${(thrPg / thrBoss).toFixed(2)}x (goal >= 1.0), ` +
    `/pg-boss batchSize ${10 * C} = ${(thrPg / thrBossBig).toFixed(2)}x`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
