import * as path from "node:path";
import { call, callSync, FlyJobsError } from "./errors";
import { toJson } from "./json";
import { native, packageRoot, type Json, type JsonObject, type NativeClient } from "./native";
import { configured, toCoreOptions, type Options } from "./config";
import { startLogs } from "./logs";
import { Worker, type WorkerOptions } from "./worker";
import { jobFiles } from "./registry";

/** Where a job is. */
export type JobState = "scheduled" | "ready" | "running" | "completed" | "dead" | "discarded";

/** A job's last recorded failure. */
export interface JobError {
  class: string;
  message: string;
  backtrace: string[];
}

/** A stored job. */
export interface JobRecord {
  id: number;
  queue: string;
  name: string;
  payload: Json;
  state: JobState;
  priority: number;
  runAt: string;
  attempts: number;
  maxAttempts: number | null;
  lostLeases: number;
  lastError: JobError | null;
  imageRef: string | null;
  uniqueKey: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  [field: string]: unknown;
}

/** A failed run of a job ({@link Client.attempts}). */
export interface AttemptRecord {
  /** Which attempt it was (1 = the first run). */
  attempt: number;
  /** The worker (machine) that ran it. */
  machine: string | null;
  startedAt: string | null;
  endedAt: string;
  /** The state the job went to: `scheduled` (a retry), `ready`, `dead` or `discarded`. */
  outcome: JobState;
  error: JobError;
}

/** What {@link Client.enqueue} takes. */
export interface NewJob {
  /** Anything JSON can represent (checked: see `toJson`); opaque to the core. */
  payload: unknown;
  queue?: string;
  /** Lower runs first. */
  priority?: number;
  /** Run no earlier than this. */
  runAt?: Date | string;
  /** Runs before the job goes dead (default: the queue's `maxAttempts`). */
  maxAttempts?: number;
  /** Display name (the job's name). */
  name?: string;
  /** While a job with this key is pending, enqueue returns that job instead. */
  uniqueKey?: string;
  /**
   * The machine size this job runs on: a Fly size (`"performance-2x"`, `"shared-cpu-1x:1024"`)
   * or `{ cpus, memory_mb, cpu_kind }`; default: the queue's. A size Fly does not sell is a
   * `config` error at enqueue listing the valid ones.
   */
  machine?: string | { cpus?: number; memory_mb?: number; cpu_kind?: string };
  /** Region code(s) for its machine (`"ams"`, `["ams", "fra"]`); default: the queue's. */
  region?: string | string[];
}

/** A filter for {@link Client.jobs}. */
export interface JobFilter {
  queue?: string;
  state?: JobState;
  name?: string;
  /** Page size (max 10,000; default 100). */
  limit?: number;
  /** The last id of the previous page. */
  afterId?: number;
}

const camelKey = (key: string): string => key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** A record of the core with its top-level keys in camelCase (nested data untouched). */
function camelize<T>(v: Json): T {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return v as T;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[camelKey(k)] = x;
  return out as T;
}

function jobFields(job: NewJob, path: string): JsonObject {
  if (job === null || typeof job !== "object") throw new TypeError(`${path} must be an object with a payload`);
  let runAt: Json = null;
  if (job.runAt instanceof Date) {
    if (Number.isNaN(job.runAt.getTime())) throw new TypeError(`${path}.runAt is an invalid Date`);
    runAt = job.runAt.toISOString();
  } else if (job.runAt !== undefined && job.runAt !== null) {
    runAt = toJson(job.runAt, `${path}.runAt`);
  }
  const fields: JsonObject = {
    payload: toJson(job.payload, `${path}.payload`),
    queue: job.queue ?? "default",
    priority: job.priority ?? 0,
    run_at: runAt,
    max_attempts: job.maxAttempts ?? null,
    name: job.name ?? null,
    unique_key: job.uniqueKey ?? null,
    machine: job.machine === undefined ? null : toJson(job.machine, `${path}.machine`),
    region: job.region === undefined ? null : toJson(job.region, `${path}.region`),
  };
  return fields;
}

/**
 * The command worker machines run unless `workerCommand` (FLYJOBS_WORKER_COMMAND) says
 * otherwise: this node, the package's `flyjobs-worker`, and the app's job files.
 */
export function defaultWorkerCommand(files: string[] = jobFiles()): string[] {
  const argv = [process.execPath, path.join(packageRoot, "dist", "cli.js")];
  for (const f of files) {
    const esm = f.startsWith("file:") || f.endsWith(".mjs") || f.endsWith(".mts");
    argv.push(esm ? "--import" : "--require", f);
  }
  return argv;
}

/**
 * The command that serves the app's local Machines API off Fly (`node <flyjobs>/dist/cli.js
 * local-api STATE`): one daemon shared by every process of the app (cluster workers, scripts,
 * the console), started by the first one that needs it. Its machines outlive any one process;
 * when the last process leaves, it stops them with their stop signal and grace, and exits.
 */
export function localApiCommand(): string[] {
  return [process.execPath, path.join(packageRoot, "dist", "cli.js"), "local-api"];
}

/**
 * A connection to the flyjobs queue (PostgreSQL or SQLite) and, when the scaler runs in this
 * process, to the Machines API. Off Fly (no FLY_MACHINE_ID) the core runs a local Machines API
 * whose "machines" are local worker processes.
 */
export class Client {
  private constructor(private readonly native: NativeClient) {}

  /**
   * Opens a client with `options` (camelCase names of the core's options) over the env vars
   * and defaults. Throws a FlyJobsError (code "config") for a bad option.
   */
  static async open(options: Options = {}): Promise<Client> {
    startLogs();
    const core = toCoreOptions(options);
    const command = defaultWorkerCommand(options.jobFiles ?? jobFiles());
    const localApi = options.localApiCommand ?? localApiCommand();
    return new Client(await call(() => native.open(core, command, localApi)));
  }

  /** Enqueues one job; never waits for a machine. Nothing is written if a field is bad. */
  async enqueue(job: NewJob): Promise<JobRecord> {
    const fields = jobFields(job, "job");
    return camelize(await call(() => this.native.enqueue(fields)));
  }

  /** Enqueues many jobs in one transaction: all or nothing. */
  async enqueueMany(jobs: NewJob[]): Promise<JobRecord[]> {
    if (!Array.isArray(jobs)) throw new TypeError("enqueueMany takes an array of jobs");
    const fields = jobs.map((j, i) => jobFields(j, `jobs[${i}]`));
    const stored = await call(() => this.native.enqueueMany(fields));
    return stored.map((j) => camelize<JobRecord>(j));
  }

  /** A job, or null. */
  async job(id: number): Promise<JobRecord | null> {
    return camelize(await call(() => this.native.call("job", id)));
  }

  /** The failed runs of a job, oldest first (what the dashboard's job page shows). */
  async attempts(id: number): Promise<AttemptRecord[]> {
    return camelize(await call(() => this.native.call("attempts", id)));
  }

  /** A page of jobs in id order; pass the last id as `afterId` for the next page. */
  async jobs(filter: JobFilter = {}): Promise<JobRecord[]> {
    const f: JsonObject = {
      queue: filter.queue ?? null,
      state: filter.state ?? null,
      name: filter.name ?? null,
      limit: filter.limit ?? null,
      after_id: filter.afterId ?? null,
    };
    const list = (await call(() => this.native.call("jobs", f))) as Json[];
    return list.map((j) => camelize<JobRecord>(j));
  }

  /** Cancels a job that has not run yet (ready or scheduled); a FlyJobsError "conflict" otherwise. */
  async cancel(id: number): Promise<JobRecord> {
    return camelize(await call(() => this.native.call("cancel", id)));
  }

  /** Discards a waiting or dead job. */
  async discard(id: number): Promise<JobRecord> {
    return camelize(await call(() => this.native.call("discard", id)));
  }

  /** Runs a dead or discarded job again. */
  async retry(id: number): Promise<JobRecord> {
    return camelize(await call(() => this.native.call("retry", id)));
  }

  /** Deletes the waiting (ready and scheduled) jobs of a queue; returns how many. */
  async clear(queue: string): Promise<number> {
    return (await call(() => this.native.call("clear", queue))) as number;
  }

  /** Per-queue counts (`queue`, `ready`, `scheduled`, `running`, `dead`, …). */
  async stats(): Promise<Record<string, unknown>[]> {
    const list = (await call(() => this.native.call("stats"))) as Json[];
    return list.map((s) => camelize<Record<string, unknown>>(s));
  }

  /** Registered workers. */
  async workers(): Promise<Record<string, unknown>[]> {
    const list = (await call(() => this.native.call("workers"))) as Json[];
    return list.map((w) => camelize<Record<string, unknown>>(w));
  }

  /** Worker machines as the Machines API reports them. */
  async machines(): Promise<JsonObject[]> {
    return (await call(() => this.native.call("machines"))) as JsonObject[];
  }

  /**
   * Answers one request to the web dashboard (see `dashboard()`): method, path, mount, query,
   * headers, body (and readOnly) in; status, headers (`[name, value]` pairs) and body out.
   */
  async dashboard(request: DashboardRequest): Promise<DashboardResponse> {
    const { readOnly, ...rest } = request;
    return (await call(() => this.native.call("dashboard", { ...rest, read_only: readOnly ?? false }))) as unknown as DashboardResponse;
  }

  /** The resolved settings under the core's names (token and database password redacted). */
  async config(): Promise<JsonObject> {
    return (await call(() => this.native.call("config"))) as JsonObject;
  }

  /** Starts the embedded scaler in this process (idempotent); refused inside a worker. */
  async startScaler(): Promise<void> {
    await call(() => this.native.call("startScaler"));
  }

  /** The local Machines API's base URL, once this client started it. */
  async localApiUrl(): Promise<string | null> {
    return (await call(() => this.native.call("localApiUrl"))) as string | null;
  }

  /** A worker in this process; options left out come from FLYJOBS_WORKER_* or the queue's settings. */
  async worker(options: WorkerOptions = {}): Promise<Worker> {
    const o: JsonObject = {
      queues: options.queues === undefined ? null : typeof options.queues === "string" ? options.queues : [...options.queues],
      concurrency: options.concurrency ?? null,
      wait: options.wait === undefined ? null : options.wait === Infinity ? "forever" : toJson(options.wait, "wait"),
      pool: options.pool ?? null,
    };
    return new Worker(await call(() => this.native.worker(o)));
  }

  /** Closes the client (its pool; the scaler and the local Machines API if it started them). */
  async close(): Promise<void> {
    await call(() => this.native.close());
  }

  /**
   * `close`, blocking until done: for a `process.on("exit")` handler, which cannot wait for a
   * Promise. The process-wide client (`getClient`) is closed this way at exit.
   */
  closeSync(): void {
    callSync(() => this.native.closeSync());
  }
}

/** A request to the web dashboard, as plain data. */
export interface DashboardRequest {
  method: string;
  /** The request's path, with or without the mount in front (the core takes the mount off). */
  path: string;
  /** Where the app mounted it (`/flyjobs`); links and the CSRF cookie start with it. */
  mount: string;
  /** The query string, without `?`. */
  query: string;
  /** Every request header, names in any case. */
  headers: Record<string, string>;
  /** The body as read: at most one byte past the limit (the core answers 413 past it). */
  body: string;
  /** Show no actions and refuse every change. */
  readOnly?: boolean;
}

/** The dashboard's answer, for the server to send as is. */
export interface DashboardResponse {
  status: number;
  headers: [string, string][];
  body: string;
}

let shared: Promise<Client> | null = null;

/** Whether this process is a worker (flyjobs-worker sets FLYJOBS_WORKER=1): it never scales. */
export function isWorkerProcess(): boolean {
  return process.env.FLYJOBS_WORKER !== undefined;
}

/**
 * The process-wide client, opened on first use with the options of `configure()`; in an app
 * process (not a worker) it also starts the embedded scaler, unless `scaler: false`.
 */
export function getClient(): Promise<Client> {
  if (!shared) {
    const options = configured();
    shared = (async () => {
      const client = await Client.open(options);
      // At exit (a cluster worker disconnected, the script done, process.exit()): the scaler
      // gives back its leader lock at once, so the next process leads without waiting for it
      // to expire, and this process leaves the shared local Machines API.
      process.once("exit", () => client.closeSync());
      if (!isWorkerProcess() && options.scaler !== false) await client.startScaler();
      return client;
    })();
    shared.catch(() => {
      shared = null;
    });
  }
  return shared;
}

/** Closes the process-wide client; the next use opens a new one with the current `configure()`. */
export async function reset(): Promise<void> {
  const s = shared;
  shared = null;
  if (s) await (await s.catch(() => null))?.close();
}

export { FlyJobsError };
