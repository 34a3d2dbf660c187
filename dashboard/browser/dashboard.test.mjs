// The dashboard in a real headless browser: Debian's chromium driven by playwright-core, against
// `flyjobs dashboard` on a SQLite queue whose jobs a real `flyjobs worker` runs. Screenshots of
// every page go to $FLYJOBS_ARTIFACTS (default .build/artifacts/dashboard).
//
// Run by scripts/test-dashboard.sh: FLYJOBS_BIN is the flyjobs binary, CHROMIUM the browser.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const bin = process.env.FLYJOBS_BIN ?? resolve("../../target/debug/flyjobs");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const artifacts = resolve(process.env.FLYJOBS_ARTIFACTS ?? "../../.build/artifacts/dashboard");
const dir = mkdtempSync(join(tmpdir(), "flyjobs-dashboard-"));
const marker = join(dir, "marker");
const env = {
  ...process.env,
  FLYJOBS_DATABASE_URL: `sqlite://${dir}/q.db?mode=rwc`,
  FLYJOBS_LOG: "warn",
  FLYJOBS_DASHBOARD_TOKEN: "",
};
const children = [];
let browser;

function flyjobs(...args) {
  return execFileSync(bin, args, { env, encoding: "utf8" }).trim();
}

/** Start a long-running flyjobs process; resolves with its first stdout line. */
function start(args, extraEnv = {}) {
  const child = spawn(bin, args, { env: { ...env, ...extraEnv }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  return new Promise((ok, fail) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("\n")) ok({ child, line: out.split("\n")[0] });
    });
    child.on("exit", (code) => fail(new Error(`flyjobs ${args.join(" ")} exited ${code}: ${err}`)));
  });
}

async function dashboard(args = ["--no-auth"], extraEnv = {}) {
  const { line } = await start(["dashboard", "--bind", "127.0.0.1:0", ...args], extraEnv);
  const url = line.match(/http:\/\/\S+/)[0];
  return url.replace(/\/$/, "");
}

async function waitFor(what, check, ms = 60_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A page that records console errors, page errors and dialogs. */
async function openPage(context) {
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("dialog", async (d) => {
    if (d.type() !== "confirm") problems.push(`unexpected ${d.type()}: ${d.message()}`);
    await d.accept();
  });
  return { page, problems };
}

async function stateOf(page, base, id) {
  await page.goto(`${base}/jobs/${id}`);
  return (await page.locator("h1 .state").innerText()).trim();
}

let base;
let ids;

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  ids = {
    // fails until the marker exists: dead first, done after a retry from the dashboard
    retry: flyjobs("enqueue", "--queue", "web", "--max-attempts", "1", "--", "sh", "-c", `test -f ${marker}`),
    // payload and error (stderr) carry markup that must never run
    xss: flyjobs(
      "enqueue", "--queue", "web", "--max-attempts", "1", "--",
      "sh", "-c", "echo '<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">' >&2; exit 3",
      "<script>window.__xss=3</script>",
    ),
    scheduled: flyjobs("enqueue", "--queue", "later", "--in", "1h", "--", "true"),
    done: flyjobs("enqueue", "--queue", "web", "--", "true"),
  };
  // a worker process on this machine (no machines: the dashboard only needs jobs to move)
  children.push(spawn(bin, ["worker", "--queues", "web", "--wait", "forever"], { env, stdio: "ignore" }));
  base = await dashboard();
  browser = await chromium.launch({ executablePath: browserPath, headless: true });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
});

test("every page loads with no console error, and screenshots are saved", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const { page, problems } = await openPage(context);
  await waitFor("the failing jobs to go dead", async () => (await stateOf(page, base, ids.xss)) === "dead");
  await waitFor("the good job to complete", async () => (await stateOf(page, base, ids.done)) === "completed");
  const pages = {
    overview: "/",
    jobs: "/jobs",
    job: `/jobs/${ids.xss}`,
    dead: "/dead",
    scheduled: "/scheduled",
    machines: "/machines",
    cost: "/cost",
    boot_failures: "/boot_failures",
  };
  for (const [name, path] of Object.entries(pages)) {
    const resp = await page.goto(`${base}${path}`);
    assert.equal(resp.status(), 200, path);
    assert.ok(await page.locator("header .brand").isVisible(), `${path} renders the layout`);
    // the stylesheet applied (served by the dashboard itself, allowed by its CSP)
    const bg = await page.evaluate(() => getComputedStyle(document.querySelector("header")).backgroundColor);
    assert.equal(bg, "rgb(255, 255, 255)", `${path}: stylesheet applied`);
    await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
  }
  assert.deepEqual(problems, []);
  await context.close();
});

test("markup in payloads and errors is shown, never run", async () => {
  const context = await browser.newContext();
  const { page, problems } = await openPage(context);
  for (const path of [`/jobs/${ids.xss}`, "/dead", "/jobs?queue=web"]) {
    await page.goto(`${base}${path}`);
    assert.equal(await page.evaluate(() => window.__xss), undefined, `${path} ran injected code`);
    assert.equal(await page.locator("main script, main img").count(), 0, `${path} has injected elements`);
  }
  await page.goto(`${base}/jobs/${ids.xss}`);
  const text = await page.locator("main").innerText();
  assert.ok(text.includes("<script>window.__xss=1</script>"), "the error's markup is shown as text");
  assert.ok(text.includes("<script>window.__xss=3</script>"), "the payload's markup is shown as text");
  assert.deepEqual(problems, []);
  await context.close();
});

test("retrying a dead job moves it to ready, then the worker finishes it", async () => {
  const context = await browser.newContext();
  const { page, problems } = await openPage(context);
  assert.equal(await stateOf(page, base, ids.retry), "dead");
  writeFileSync(marker, "");
  await page.goto(`${base}/dead`);
  const row = page.locator("tr", { has: page.locator(`a[href$="/jobs/${ids.retry}"]`) });
  await Promise.all([page.waitForURL(`${base}/dead`), row.getByRole("button", { name: "Retry" }).click()]);
  const after = await stateOf(page, base, ids.retry);
  assert.ok(["ready", "running", "completed"].includes(after), `after retry: ${after}`);
  await waitFor("the retried job to complete", async () => (await stateOf(page, base, ids.retry)) === "completed");
  assert.deepEqual(problems, []);
  await context.close();
});

test("cancelling a scheduled job removes it from the scheduled list", async () => {
  const context = await browser.newContext();
  const { page, problems } = await openPage(context);
  await page.goto(`${base}/scheduled`);
  const link = page.locator(`a[href$="/jobs/${ids.scheduled}"]`);
  assert.equal(await link.count(), 1);
  const row = page.locator("tr", { has: link });
  // the confirm() dialog is accepted by openPage
  await Promise.all([page.waitForURL(`${base}/scheduled`), row.getByRole("button", { name: "Cancel" }).click()]);
  assert.equal(await page.locator(`a[href$="/jobs/${ids.scheduled}"]`).count(), 0);
  assert.equal(await stateOf(page, base, ids.scheduled), "discarded");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a login is required unless --no-auth on loopback", async () => {
  const token = "browser-test-token-0123456789";
  assert.throws(
    () => execFileSync(bin, ["dashboard", "--bind", "0.0.0.0:0", "--no-auth"], { env, stdio: "pipe" }),
    (e) => String(e.stderr).includes("loopback"),
  );
  assert.throws(
    () => execFileSync(bin, ["dashboard", "--bind", "127.0.0.1:0"], { env, stdio: "pipe" }),
    (e) => String(e.stderr).includes("FLYJOBS_DASHBOARD_TOKEN"),
  );
  const guarded = await dashboard([], { FLYJOBS_DASHBOARD_TOKEN: token });
  // (chromium aborts a navigation answered 401 without credentials, so ask over plain HTTP)
  const denied = await fetch(`${guarded}/`);
  assert.equal(denied.status, 401);
  assert.match(denied.headers.get("www-authenticate"), /^Basic/);
  const basic = (pass) => ({ authorization: `Basic ${Buffer.from(`ops:${pass}`).toString("base64")}` });
  assert.equal((await fetch(`${guarded}/`, { headers: basic("nope-nope-nope-nope") })).status, 401);
  const authed = await browser.newContext({ httpCredentials: { username: "ops", password: token } });
  const { page, problems } = await openPage(authed);
  const ok = await page.goto(`${guarded}/dead`);
  assert.equal(ok.status(), 200);
  assert.ok(!(await page.content()).includes(token), "the token never appears on a page");
  await page.screenshot({ path: join(artifacts, "login-ok.png") });
  assert.deepEqual(problems, []);
  await authed.close();
});
