// The dashboard as a Node request handler (`flyjobs.dashboard()`) on a real HTTP server and a
// real store: pages under the mount path, markup escaped, CSRF, a retry, read-only.
const { test, describe, before, after } = require("node:test");
const assert = require("node:assert/strict");
const http = require("node:http");
const flyjobs = require("flyjobs");
const { tempDir, storeUrl, storeName } = require("./helpers");

const dir = tempDir("dashboard");
flyjobs.setLogger({ error() {}, warn() {}, info() {}, debug() {} });
flyjobs.configure({ databaseUrl: storeUrl(dir), scaler: false });
const queue = `node-dash-${process.pid}`;
const boom = flyjobs.defineJob(
  "dashBoom",
  async () => {
    throw new Error("<b>bad</b>");
  },
  { queue, maxAttempts: 1 },
);

/** A server whose /flyjobs prefix is the dashboard (as `app.use("/flyjobs", …)` would be). */
function serve(options) {
  const handler = flyjobs.dashboard({ mount: "/flyjobs", ...options });
  const server = http.createServer(handler);
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

describe(`the dashboard handler on ${storeName()}`, () => {
  let client;
  let dead;
  let server;
  let base;
  before(async () => {
    client = await flyjobs.getClient();
    const handle = await boom.enqueue({ html: "<script>alert(1)</script>" });
    await (await client.worker({ queues: [queue], wait: 1 })).run();
    dead = handle.id;
    assert.equal((await client.job(dead)).state, "dead");
    server = await serve({});
    base = `http://127.0.0.1:${server.address().port}/flyjobs`;
  });
  after(async () => {
    server.close();
    await client.clear(queue);
    await flyjobs.reset();
  });

  test("pages render under the mount with markup escaped", async () => {
    const res = await fetch(`${base}/jobs/${dead}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    const html = await res.text();
    assert.ok(html.includes('href="/flyjobs/dead"'));
    assert.ok(html.includes("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.includes("<script>alert"));
    assert.ok(!html.includes("<b>bad</b>"));
    assert.match(res.headers.get("set-cookie"), /Path=\/flyjobs; HttpOnly; SameSite=Strict/);
    assert.equal((await fetch(`${base}/nope`)).status, 404);
  });

  test("a retry needs the CSRF token, then moves the job to ready", async () => {
    const first = await fetch(`${base}/dead`);
    const token = first.headers.get("set-cookie").match(/flyjobs_csrf=([0-9a-f]+)/)[1];
    const post = (csrf) =>
      fetch(`${base}/jobs/${dead}/retry`, {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie: `flyjobs_csrf=${token}` },
        body: `_csrf=${csrf}`,
      });
    assert.equal((await post("0".repeat(64))).status, 403);
    assert.equal((await client.job(dead)).state, "dead");
    const done = await post(token);
    assert.equal(done.status, 303);
    assert.equal(done.headers.get("location"), `/flyjobs/jobs/${dead}`);
    assert.equal((await client.job(dead)).state, "ready");
    await client.clear(queue);
  });

  test("read-only refuses changes", async () => {
    const ro = await serve({ readOnly: true });
    const roBase = `http://127.0.0.1:${ro.address().port}/flyjobs`;
    const page = await fetch(`${roBase}/dead`);
    assert.ok(!(await page.text()).includes('method="post"'));
    const token = page.headers.get("set-cookie").match(/flyjobs_csrf=([0-9a-f]+)/)[1];
    const res = await fetch(`${roBase}/jobs/${dead}/retry`, {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded", cookie: `flyjobs_csrf=${token}` },
      body: `_csrf=${token}`,
    });
    assert.equal(res.status, 403);
    ro.close();
  });

  test("an oversized body is refused by the core; a plain server passes the full path", async () => {
    const res = await fetch(`${base}/dead/retry_all`, {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "x".repeat(64 * 1024 + 10),
    });
    assert.equal(res.status, 413);
    const page = await fetch(`${base}/dead`);
    assert.equal(page.status, 200);
    assert.ok((await page.text()).includes('href="/flyjobs/jobs'));
  });
});
