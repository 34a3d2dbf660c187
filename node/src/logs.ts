import { native } from "./native";

/** Where the core's log records go (default: `console`). */
export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

let logger: Logger = console;
let started = false;

/** Send the core's log records (scaler warnings, a worker that cannot boot, …) to `l`. */
export function setLogger(l: Logger): void {
  logger = l;
}

const LEVELS: Record<string, keyof Logger> = {
  error: "error",
  warn: "warn",
  info: "info",
  debug: "debug",
  trace: "debug",
};

/** Writes what the core logged since the last call. */
export function drainLogs(): number {
  const batch = native.logsDrain();
  for (const r of batch.records) {
    logger[LEVELS[r.level] ?? "info"](`[flyjobs] ${r.message}`);
  }
  if (batch.dropped > 0) logger.warn(`[flyjobs] ${batch.dropped} log records dropped (logger too slow)`);
  return batch.records.length;
}

/**
 * Captures the core's records (level from FLYJOBS_LOG, else info) and writes them from an
 * unref'd timer, so that logging never keeps the process alive; the rest is written at exit.
 */
export function startLogs(): void {
  if (started) return;
  started = true;
  native.logsInstall(process.env.FLYJOBS_LOG ?? "info");
  setInterval(drainLogs, 250).unref();
  process.on("exit", () => {
    drainLogs();
  });
}
