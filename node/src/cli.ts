#!/usr/bin/env node
// `flyjobs-worker`: the process a worker machine of a Node app runs (the default worker command
// the client gives the scaler). Loads the app's job files, then runs the core's worker loop with
// N handlers at once. SIGTERM/SIGINT (what Fly sends on stop): quiet, let running jobs finish
// within shutdownTimeout, give the rest back, exit 0. Exits 0 when the queue stayed empty for
// --wait.
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { getClient, reset } from "./client";
import { call, FlyJobsError } from "./errors";
import { drainLogs, startLogs } from "./logs";
import { native } from "./native";

const USAGE =
  "Usage: flyjobs-worker [--require FILE]... [--import FILE]... [--queues a,b] [--wait SECONDS|forever] " +
  "[--concurrency N] [--pool none|stop|suspend]";

interface Args {
  load: { kind: "require" | "import"; file: string }[];
  queues?: string[];
  wait?: string;
  concurrency?: number;
  pool?: string;
}

class UsageError extends Error {}

function parse(argv: string[]): Args {
  const args: Args = { load: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const eq = arg.indexOf("=");
    const flag = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const value = (): string => {
      if (eq > 0 && arg.startsWith("--")) return arg.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case "-r":
      case "--require":
        args.load.push({ kind: "require", file: value() });
        break;
      case "--import":
        args.load.push({ kind: "import", file: value() });
        break;
      case "-q":
      case "--queues": {
        const q = value().split(",").map((s) => s.trim()).filter(Boolean);
        if (q.length === 0) throw new UsageError("--queues is empty");
        args.queues = q;
        break;
      }
      case "-w":
      case "--wait":
        args.wait = value();
        break;
      case "-c":
      case "--concurrency": {
        const v = value();
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1) throw new UsageError(`--concurrency must be an integer >= 1, got ${JSON.stringify(v)}`);
        args.concurrency = n;
        break;
      }
      case "--pool":
        args.pool = value();
        break;
      case "-h":
      case "--help":
        process.stdout.write(USAGE + "\n");
        process.exit(0);
        break;
      default:
        throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  return args;
}

function log(line: string): void {
  process.stdout.write(`flyjobs-worker ${process.pid}: ${line}\n`);
}

async function load(entry: Args["load"][number]): Promise<void> {
  if (entry.kind === "require") {
    require(path.resolve(entry.file));
  } else {
    const url = entry.file.startsWith("file:") ? entry.file : pathToFileURL(path.resolve(entry.file)).href;
    await import(url);
  }
}

/**
 * `node <flyjobs>/dist/cli.js local-api STATE`: the app's shared local Machines API off Fly,
 * started in a process group of its own by the first process of the app that needs one (see
 * `localApiCommand`). Resolves when no process of the app is left and its machines are stopped.
 */
async function serveLocalApi(state: string | undefined): Promise<number> {
  if (!state) {
    process.stderr.write("flyjobs-worker local-api: the state directory is missing\n");
    return 2;
  }
  startLogs();
  try {
    await call(() => native.serveLocalApi(state));
  } finally {
    drainLogs();
  }
  return 0;
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === "local-api") return serveLocalApi(argv[1]);
  let args: Args;
  try {
    args = parse(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`flyjobs-worker: ${e.message}\n${USAGE}\n`);
      return 2;
    }
    throw e;
  }
  // Before the app's files load: this process never runs the embedded scaler.
  process.env.FLYJOBS_WORKER = "1";
  for (const entry of args.load) await load(entry);

  const client = await getClient();
  const worker = await client.worker({
    queues: args.queues,
    concurrency: args.concurrency,
    wait: args.wait,
    pool: args.pool,
  });
  let signalled = false;
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (signalled) return;
      signalled = true;
      log(`${signal}: finishing running jobs (up to ${worker.shutdownTimeout}s), then leaving`);
      void worker.stop();
    });
  }
  log(`queues=${args.queues?.join(",") ?? "(FLYJOBS_WORKER_QUEUES or default)"} concurrency=${worker.concurrency} wait=${args.wait ?? "the queue's"}`);
  await worker.run({
    onFailure: (job, error, outcome) => {
      const decision = outcome.outcome === "retry" ? `retry at ${String(outcome.at)}` : outcome.outcome;
      const what = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      log(`job ${job.id} (${job.name}) threw ${what} -> ${decision}`);
    },
  });
  await reset();
  drainLogs();
  log("done");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof FlyJobsError) {
      process.stderr.write(`flyjobs-worker: ${e.message} (${e.code})\n${USAGE}\n`);
    } else {
      process.stderr.write(`flyjobs-worker: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    }
    try {
      drainLogs();
    } catch {
      // the addon may be what failed
    }
    process.exit(1);
  },
);
