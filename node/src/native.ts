// The addon (bindings/node, napi-rs) and the types of what it exports. Only this file loads it;
// every other module goes through the public TypeScript API.
import * as fs from "node:fs";
import * as path from "node:path";

/** A JSON value: what crosses into the core. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** A JSON object. */
export type JsonObject = { [key: string]: Json };

export interface NativeLease {
  readonly job: JsonObject;
  complete(): Promise<void>;
  completeLater(): void;
  fail(failure: { class: string; message: string; backtrace: string[] }): Promise<JsonObject>;
  release(): Promise<void>;
}

export interface NativeSlot {
  next(seconds: number): Promise<NativeLease | "pending" | "done">;
}

export interface NativeWorker {
  slot(): NativeSlot;
  readonly concurrency: number;
  readonly shutdownTimeout: number;
  readonly stopping: boolean;
  quiet(): void;
  stop(seconds: number): Promise<void>;
}

export interface NativeClient {
  enqueue(job: JsonObject): Promise<JsonObject>;
  enqueueMany(jobs: JsonObject[]): Promise<JsonObject[]>;
  call(name: string, arg?: Json): Promise<Json>;
  worker(options: JsonObject): Promise<NativeWorker>;
  close(): Promise<void>;
  closeSync(): void;
}

export interface NativeModule {
  /** Largest request body the mounted dashboard accepts. */
  readonly DASHBOARD_MAX_BODY: number;
  open(options: JsonObject, defaultWorkerCommand: string[], localApiCommand?: string[]): Promise<NativeClient>;
  serveLocalApi(stateDir: string): Promise<void>;
  optionSpecs(): {
    options: OptionSpec[];
    queue_settings: OptionSpec[];
    worker_options: OptionSpec[];
  };
  resolveConfig(options: JsonObject, env: Record<string, string>): JsonObject;
  errorKinds(): string[];
  throwErrorView(view: JsonObject): void;
  logsInstall(filter: string): boolean;
  logsDrain(): { records: { level: string; target: string; message: string }[]; dropped: number };
}

/** One setting of the core's vocabulary. */
export interface OptionSpec {
  name: string;
  env: string;
  accepts: string;
  default: string;
  doc: string;
}

/** The package's root (node/): where the addon lies. */
export const packageRoot = path.resolve(__dirname, "..");

function platformName(): string {
  const abi = process.platform === "linux" ? (isMusl() ? "-musl" : "-gnu") : "";
  return `${process.platform}-${process.arch}${abi}`;
}

function isMusl(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return !report?.header?.glibcVersionRuntime;
}

function load(): NativeModule {
  const candidates = [`flyjobs.${platformName()}.node`, "flyjobs.node"].map((f) => path.join(packageRoot, f));
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) {
    throw new Error(
      `flyjobs: the native addon is missing (looked for ${candidates.join(", ")}); ` +
        "build it with `npm install` in the package (it runs `napi build`), or copy " +
        "target/debug/libflyjobs_node.so there as flyjobs." + platformName() + ".node",
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(found) as NativeModule;
}

export const native: NativeModule = load();
