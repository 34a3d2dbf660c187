import { callSync } from "./errors";
import { toJson } from "./json";
import { native, type Json, type JsonObject } from "./native";

/** Per-queue settings (`queues: { mail: {...}, "*": {...} }`); the core checks every value. */
export interface QueueSettings {
  maxMachines?: number;
  minMachines?: number;
  concurrency?: number;
  /** Idle seconds before a worker leaves (`600`, `"10m"`), or `"forever"`. */
  wait?: number | string;
  /** `"none"`, `"stop"` or `"suspend"`. */
  pool?: string;
  /** `"shared-cpu-1x"`, `"performance-2x"`, … */
  size?: string;
  cpuKind?: string;
  cpus?: number;
  memoryMb?: number;
  region?: string | string[];
  maxAttempts?: number;
}

/**
 * The core's options in camelCase (`databaseUrl` is the core's `database_url`, env
 * `FLYJOBS_DATABASE_URL`); every one left out comes from its env var, then its default
 * (`optionSpecs()` lists them all). The core checks the values: a bad one is a
 * {@link FlyJobsError} with code `"config"` naming the option.
 */
export interface CoreOptions {
  apiToken?: string;
  apiHostname?: string;
  appName?: string;
  imageRef?: string;
  machineId?: string;
  region?: string;
  databaseUrl?: string;
  queues?: Record<string, QueueSettings>;
  maxMachines?: number;
  workerApp?: string;
  workerCommand?: string[];
  envAllowlist?: string[];
  maxPayloadBytes?: number;
  requestTimeout?: number | string;
  leaseDuration?: number | string;
  bootTimeout?: number | string;
  shutdownTimeout?: number | string;
  pinFor?: number | string;
  /** Per-second prices overriding Fly's for cost and budgets, e.g. `{ memory_gb_per_s: 0.0000021 }`. */
  prices?: Partial<Record<"shared_cpu_per_s" | "performance_cpu_per_s" | "memory_gb_per_s" | "rootfs_gb_per_s" | "rootfs_gb", number>> | string;
}

/** What {@link configure} and `Client.open` take: the core's options plus the package's own. */
export interface Options extends CoreOptions {
  /**
   * The files that define the app's jobs, given to worker machines as `--require` (CommonJS)
   * or `--import` (ESM, `.mjs` or a `file:` URL). Default: every file that called `defineJob`.
   */
  jobFiles?: string[];
  /** Start the embedded scaler in this process (default: yes, except in a worker). */
  scaler?: boolean;
  /**
   * Off Fly, the command that serves the app's shared local Machines API (default: this
   * package's, `localApiCommand()`); `[]` runs it inside this process instead.
   */
  localApiCommand?: string[];
}

const PACKAGE_KEYS = new Set(["jobFiles", "scaler", "localApiCommand"]);

const snake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
/** `max_machines` -> `maxMachines`. */
export const camel = (key: string): string => key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/**
 * The one mapping from the package's camelCase option names to the core's: top-level keys and
 * the keys of each queue's settings (queue names stay as given). A key the core does not know
 * reaches it in snake_case and is refused there, with the list of known names.
 */
export function toCoreOptions(options: Options): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(options)) {
    if (PACKAGE_KEYS.has(key) || value === undefined || value === null) continue;
    const name = snake(key);
    if (name === "queues" && value !== null && typeof value === "object" && !Array.isArray(value)) {
      const queues: JsonObject = {};
      for (const [queue, settings] of Object.entries(value as Record<string, unknown>)) {
        if (settings !== null && typeof settings === "object" && !Array.isArray(settings)) {
          const s: JsonObject = {};
          for (const [k, v] of Object.entries(settings as Record<string, unknown>)) {
            if (v !== undefined) s[snake(k)] = toJson(v, `queues.${queue}.${k}`);
          }
          queues[queue] = s;
        } else {
          queues[queue] = toJson(settings, `queues.${queue}`);
        }
      }
      out[name] = queues;
    } else {
      out[name] = toJson(value, key);
    }
  }
  return out;
}

let settings: Options = {};

/**
 * Sets the process-wide options used by the shared client (`getClient()`, `defineJob`'s
 * `enqueue`). Call it before the first enqueue; calling it again replaces them and takes effect
 * at the next `reset()`.
 */
export function configure(options: Options): void {
  settings = { ...options };
}

/** @internal The options given to {@link configure}. */
export function configured(): Options {
  return settings;
}

/**
 * The settings `options` resolve to over `env` (a stand-in for `process.env`), under the core's
 * names: what the shared vectors check, and a way to see what a configuration means without
 * opening anything.
 */
export function resolveConfig(options: Options = {}, env: Record<string, string> = {}): JsonObject {
  const core = toCoreOptions(options);
  return callSync(() => native.resolveConfig(core, env));
}

/** The core's settings vocabulary: every option, queue setting and worker option. */
export function optionSpecs(): ReturnType<typeof native.optionSpecs> {
  return native.optionSpecs();
}

export type { Json };
