import { packageRoot } from "./native";

/** What a handler gets besides its arguments. */
export interface JobContext {
  /** The flyjobs job id. */
  id: number;
  queue: string;
  name: string;
  /** Runs so far, this one included. */
  attempts: number;
  /** Whether the worker was asked to stop (SIGTERM): a long job may cut its work short. */
  stopping(): boolean;
}

/** A job handler: an async function of the arguments given to `enqueue`. */
export type Handler<A> = (args: A, job: JobContext) => unknown;

/** @internal A defined job, as the worker finds it by name. */
export interface Definition {
  name: string;
  handler: Handler<never>;
}

const definitions = new Map<string, Definition>();
const files: string[] = [];

/** @internal */
export function register(def: Definition, file: string | undefined): void {
  if (definitions.has(def.name)) {
    throw new Error(`flyjobs: a job named ${JSON.stringify(def.name)} is already defined`);
  }
  definitions.set(def.name, def);
  if (file && !files.includes(file)) files.push(file);
}

/** @internal The job named `name`, if this process defined it. */
export function lookup(name: string): Definition | undefined {
  return definitions.get(name);
}

/** @internal The names of the jobs this process defined. */
export function definedNames(): string[] {
  return [...definitions.keys()];
}

/** The files that called `defineJob`, in order: what worker machines load by default. */
export function jobFiles(): string[] {
  return [...files];
}

/** @internal The file of the first caller outside this package (where `defineJob` was called). */
export function callerFile(): string | undefined {
  const original = Error.prepareStackTrace;
  let frames: NodeJS.CallSite[] = [];
  try {
    Error.prepareStackTrace = (_e, stack) => stack;
    const holder: { stack?: unknown } = {};
    Error.captureStackTrace(holder, callerFile);
    frames = (holder.stack as NodeJS.CallSite[] | undefined) ?? [];
  } finally {
    Error.prepareStackTrace = original;
  }
  for (const frame of frames) {
    const f = frame.getFileName();
    if (!f || f.startsWith("node:")) continue;
    const local = f.startsWith("file:") ? new URL(f).pathname : f;
    if (local.startsWith(packageRoot + "/dist/") || local.startsWith(packageRoot + "/esm/")) continue;
    return f;
  }
  return undefined;
}
