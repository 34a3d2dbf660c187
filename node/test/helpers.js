// Shared by the test files: where the queue lives, waiting, reading what jobs wrote.
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const cli = path.join(root, "dist", "cli.js");
const fixtures = path.join(__dirname, "fixtures");

/** A temp dir for this test file. */
function tempDir(label) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `flyjobs-node-${label}-`));
}

/**
 * The store under test: PostgreSQL when FLYJOBS_NODE_TEST_DATABASE_URL is set (scripts/
 * test-node.sh sets it to a fresh schema), else a SQLite file in `dir`.
 */
function storeUrl(dir) {
  return process.env.FLYJOBS_NODE_TEST_DATABASE_URL || `sqlite://${dir}/queue.sqlite3?mode=rwc`;
}

function storeName() {
  return process.env.FLYJOBS_NODE_TEST_DATABASE_URL ? "postgres" : "sqlite";
}

const TIMEOUT_MS = Number(process.env.FLYJOBS_TEST_TIMEOUT || 120) * 1000;

/** Polls `f` until it returns a truthy value; fails with `what` and the last value after `ms`. */
async function waitFor(what, f, ms = TIMEOUT_MS) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    last = await f();
    if (last) return last;
    if (Date.now() > until) throw new Error(`timed out after ${ms / 1000}s waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The lines jobs wrote to `out`, parsed; only those with `tag` when given. */
function lines(out, tag) {
  if (!fs.existsSync(out)) return [];
  return fs
    .readFileSync(out, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((l) => tag === undefined || l.tag === tag);
}

module.exports = { root, cli, fixtures, tempDir, storeUrl, storeName, waitFor, lines, TIMEOUT_MS };
