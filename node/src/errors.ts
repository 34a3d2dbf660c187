import { native, type JsonObject } from "./native";

/** Every error kind the core knows (`code` of a {@link FlyJobsError}). */
export type ErrorCode =
  | "config"
  | "auth"
  | "not_found"
  | "conflict"
  | "rate_limited"
  | "capacity"
  | "timeout"
  | "invalid"
  | "api"
  | "transport"
  | "store"
  | "serialization"
  | "shutdown"
  | "internal";

/**
 * Every error flyjobs raises: `code` is the core's error kind (`"not_found"`, `"config"`, …,
 * the same names in Ruby and Python), with the fields the core gives. A job handler's own
 * error is never wrapped in one: it is recorded on the job.
 */
export class FlyJobsError extends Error {
  /** The core's error kind. */
  readonly code: ErrorCode;
  /** Whether the same call may succeed if retried. */
  readonly retryable: boolean;
  /** HTTP status of the Machines API answer behind it, if any. */
  readonly status: number | null;
  /** The Machines API's fly-request-id, if it sent one (quote it to Fly support). */
  readonly requestId: string | null;
  /** The job concerned, if any. */
  readonly jobId: number | null;
  /** Messages of the underlying causes, outermost first. */
  readonly causes: string[];

  constructor(view: {
    kind: string;
    message: string;
    retryable?: boolean;
    status?: number | null;
    request_id?: string | null;
    job_id?: number | null;
    causes?: string[];
  }) {
    super(view.message);
    this.name = "FlyJobsError";
    this.code = view.kind as ErrorCode;
    this.retryable = view.retryable ?? false;
    this.status = view.status ?? null;
    this.requestId = view.request_id ?? null;
    this.jobId = view.job_id ?? null;
    this.causes = view.causes ?? [];
  }
}

const MARK = "\u0001flyjobs-error:";

/** The error a native call threw, as a FlyJobsError when the core made it. */
export function fromNative(e: unknown): unknown {
  if (e instanceof Error && e.message.startsWith(MARK)) {
    const err = new FlyJobsError(JSON.parse(e.message.slice(MARK.length)));
    // The JS caller's stack, not the addon's resolver.
    return err;
  }
  return e;
}

/** Runs a native call, mapping its error. */
export async function call<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw fromNative(e);
  }
}

/** The same for a synchronous native call. */
export function callSync<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw fromNative(e);
  }
}

/** @internal The error the addon throws for an error view (the shared vectors). */
export function errorFromView(view: JsonObject): unknown {
  try {
    native.throwErrorView(view);
  } catch (e) {
    return fromNative(e);
  }
  return undefined;
}
