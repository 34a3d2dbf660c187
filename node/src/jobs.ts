import { getClient, type JobRecord, type JobState, type NewJob } from "./client";
import { FlyJobsError } from "./errors";
import { toJson } from "./json";
import { callerFile, register, type Handler } from "./registry";

/** Options of {@link defineJob}: defaults of every enqueue of the job. */
export interface JobOptions {
  /** Default: `"default"`. */
  queue?: string;
  /** Lower runs first (default 0). */
  priority?: number;
  /** Runs before the job goes dead (default: the queue's `maxAttempts`). */
  maxAttempts?: number;
  /** The machine size its runs get (`"performance-2x"`, `"shared-cpu-1x:1024"`); default: the queue's. */
  machine?: NewJob["machine"];
  /** Region code(s) for its machine (`"ams"`, `["ams", "fra"]`); default: the queue's. */
  region?: NewJob["region"];
}

/** An enqueued job. */
export class JobHandle {
  /** @internal */
  constructor(
    /** The flyjobs job id. */
    readonly id: number,
    /** The job as stored when enqueued. */
    readonly record: JobRecord,
  ) {}

  /** The job's state now. */
  async status(): Promise<JobState> {
    const job = await this.refresh();
    if (!job) {
      throw new FlyJobsError({ kind: "not_found", message: `job ${this.id} no longer exists`, job_id: this.id });
    }
    return job.state;
  }

  /** The job as stored now, or null once deleted. */
  async refresh(): Promise<JobRecord | null> {
    return (await getClient()).job(this.id);
  }
}

/** A job defined with {@link defineJob}. */
export interface JobDefinition<A> {
  readonly name: string;
  readonly queue: string;
  /** Enqueue a run with `args` (anything JSON represents; checked before anything is written). */
  enqueue(args: A): Promise<JobHandle>;
  /** Run no earlier than `at`. */
  enqueueAt(at: Date, args: A): Promise<JobHandle>;
  /** Run no earlier than `ms` milliseconds from now. */
  enqueueIn(ms: number, args: A): Promise<JobHandle>;
  /** Enqueue one run per entry, in one transaction (all or nothing). */
  enqueueMany(argsList: A[]): Promise<JobHandle[]>;
}

/**
 * Defines a job: `handler(args, job)` runs in a worker (a worker machine running
 * `flyjobs-worker`, which loads the file that called `defineJob`). The payload stored is
 * `{ job: name, args }`; the job's name is `name`.
 *
 * @example
 *   export const sendWelcome = defineJob("sendWelcome", async ({ userId }: { userId: number }) => {
 *     await mailer.welcome(userId);
 *   }, { queue: "mail", maxAttempts: 5 });
 *   // a bigger machine for every run of this one:
 *   export const render = defineJob("render", renderVideo, { machine: "performance-2x" });
 *   await sendWelcome.enqueue({ userId: 42 });
 */
export function defineJob<A = unknown>(name: string, handler: Handler<A>, options: JobOptions = {}): JobDefinition<A> {
  if (typeof name !== "string" || name.length === 0) throw new TypeError("defineJob: the name must be a non-empty string");
  if (typeof handler !== "function") throw new TypeError(`defineJob(${JSON.stringify(name)}): the handler must be a function`);
  const queue = options.queue ?? "default";
  register({ name, handler: handler as Handler<never> }, callerFile());

  const fields = (args: A, path: string, runAt?: Date): NewJob => ({
    payload: { job: name, args: toJson(args, path) },
    name,
    queue,
    priority: options.priority ?? 0,
    maxAttempts: options.maxAttempts,
    machine: options.machine,
    region: options.region,
    runAt,
  });
  const one = async (args: A, runAt?: Date): Promise<JobHandle> => {
    const job = fields(args, "args", runAt);
    const stored = await (await getClient()).enqueue(job);
    return new JobHandle(stored.id, stored);
  };
  return {
    name,
    queue,
    enqueue: (args) => one(args),
    enqueueAt: (at, args) => {
      if (!(at instanceof Date) || Number.isNaN(at.getTime())) {
        return Promise.reject(new TypeError("enqueueAt: the time must be a valid Date"));
      }
      return one(args, at);
    },
    enqueueIn: (ms, args) => {
      if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
        return Promise.reject(new TypeError(`enqueueIn: the delay must be milliseconds >= 0, got ${String(ms)}`));
      }
      return one(args, new Date(Date.now() + ms));
    },
    enqueueMany: async (argsList) => {
      if (!Array.isArray(argsList)) throw new TypeError("enqueueMany takes an array of arguments");
      const jobs = argsList.map((a, i) => fields(a, `args[${i}]`));
      const stored = await (await getClient()).enqueueMany(jobs);
      return stored.map((j) => new JobHandle(j.id, j));
    },
  };
}
