import { call, callSync } from "./errors";
import type { NativeLease, NativeWorker } from "./native";
import { definedNames, lookup, type JobContext } from "./registry";

/** What a worker serves and how (each left out: FLYJOBS_WORKER_*, else the queue's settings). */
export interface WorkerOptions {
  /** Queues to serve (`"a,b"` or `["a", "b"]`). */
  queues?: string | string[];
  /** Jobs run at once. */
  concurrency?: number;
  /** Idle seconds before `run()` returns (`600`, `"10m"`), or `"forever"` / `Infinity`. */
  wait?: number | string;
  /** `"none"`, `"stop"` or `"suspend"`. */
  pool?: string;
}

/** The outcome of a failed job, as the core's retry policy decided it. */
export type Outcome = { outcome: "retry"; at: string } | { outcome: "dead" } | { outcome: string; [k: string]: unknown };

/** Hooks of {@link Worker.run}. */
export interface RunOptions {
  /** Called after a job threw and the failure was recorded. */
  onFailure?: (job: JobContext, error: unknown, outcome: Outcome) => void;
}

/** Longest one poll of the core waits before the loop looks again (nothing blocks meanwhile). */
const POLL_SECONDS = 10;

/** A failure as the core records it: the error's name, message and stack. */
function failureOf(e: unknown): { class: string; message: string; backtrace: string[] } {
  if (e instanceof Error) {
    const stack = (e.stack ?? "").split("\n").slice(1).map((l) => l.trim()).filter(Boolean);
    return { class: e.name || e.constructor.name || "Error", message: e.message, backtrace: stack };
  }
  return { class: typeof e, message: String(e), backtrace: [] };
}

/**
 * Pulls jobs from the queue and runs the handlers of `defineJob`, `concurrency` at once. The
 * core claims jobs, keeps their leases alive and applies the retry policy; JS only runs them.
 */
export class Worker {
  private stopped: Promise<void> | null = null;
  private running = 0;
  private onStopped: () => void = () => {};
  /** Resolves once stop() has given back what was still running: run() returns then. */
  private readonly stoppedSignal = new Promise<void>((resolve) => (this.onStopped = resolve));

  /** @internal */
  constructor(private readonly native: NativeWorker) {}

  /** Jobs at once. */
  get concurrency(): number {
    return this.native.concurrency;
  }

  /** Seconds a stopping worker gives running jobs (the shutdownTimeout option). */
  get shutdownTimeout(): number {
    return this.native.shutdownTimeout;
  }

  /** Whether the worker was asked to quiet or stop. */
  get stopping(): boolean {
    return this.native.stopping;
  }

  /** Jobs running now. */
  get active(): number {
    return this.running;
  }

  /**
   * Runs jobs until none is left to run: the queue stayed empty for `wait`, or `quiet()`/
   * `stop()` was called. A handler that returns completes its job; one that throws fails it
   * (name, message, stack recorded) and the retry policy decides what comes next.
   */
  async run(options: RunOptions = {}): Promise<void> {
    const loops = Array.from({ length: this.concurrency }, () => this.loop(this.native.slot(), options));
    const done = Promise.all(loops).then(() => undefined);
    try {
      await Promise.race([done, this.stoppedSignal]);
    } finally {
      // Nothing is running, or stop() gave the rest back: this only leaves the registry.
      await call(() => this.native.stop(0));
    }
  }

  /** Claims nothing new; running jobs finish, then `run()` returns. Safe in a signal handler. */
  quiet(): void {
    this.native.quiet();
  }

  /**
   * Quiets, waits up to `timeout` seconds (default: shutdownTimeout) for running jobs, then gives
   * back (releases) the jobs still running: they run again elsewhere, untouched. `run()` returns.
   */
  stop(timeout: number = this.shutdownTimeout): Promise<void> {
    this.native.quiet();
    if (!this.stopped) {
      this.stopped = (async () => {
        const until = Date.now() + timeout * 1000;
        while (this.running > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
        try {
          await call(() => this.native.stop(0));
        } finally {
          this.onStopped();
        }
      })();
    }
    return this.stopped;
  }

  private async loop(slot: ReturnType<NativeWorker["slot"]>, options: RunOptions): Promise<void> {
    for (;;) {
      const next = await call(() => slot.next(POLL_SECONDS));
      if (next === "pending") continue;
      if (next === "done") return;
      this.running++;
      try {
        await this.perform(next, options);
      } finally {
        this.running--;
      }
    }
  }

  private async perform(lease: NativeLease, options: RunOptions): Promise<void> {
    const job = lease.job;
    const payload = job.payload as { job?: unknown; args?: unknown } | null;
    const name = typeof payload?.job === "string" ? payload.job : String(job.name ?? "");
    const ctx: JobContext = {
      id: job.id as number,
      queue: job.queue as string,
      name,
      attempts: job.attempts as number,
      stopping: () => this.native.stopping,
    };
    let error: unknown;
    try {
      const def = lookup(name);
      if (!def) {
        const known = definedNames();
        const e = new Error(
          `no job named ${JSON.stringify(name)} is defined in this worker (defined: ${known.length ? known.join(", ") : "none"}); ` +
            "define it with defineJob in a file given to flyjobs-worker --require or --import",
        );
        e.name = "UnknownJobError";
        throw e;
      }
      await (def.handler as (args: unknown, job: JobContext) => unknown)(payload?.args, ctx);
    } catch (e) {
      error = e ?? new Error(String(e));
    }
    try {
      if (error === undefined) {
        // Written by the worker's group commit while this slot takes its next job.
        callSync(() => lease.completeLater());
      } else {
        const outcome = (await call(() => lease.fail(failureOf(error)))) as Outcome;
        try {
          options.onFailure?.(ctx, error, outcome);
        } catch (hookError) {
          // A broken hook must not stop the worker: the failure is already recorded.
          console.error("flyjobs: onFailure threw", hookError);
        }
      }
    } catch (e) {
      // The lease was given back by stop() while the handler ran: the job runs again elsewhere.
      if (!this.stopped) throw e;
    }
  }
}
