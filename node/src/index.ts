// flyjobs: background jobs on on-demand Fly Machines. A Rust core (queue, retries, scaler,
// worker loop) with this package as its TypeScript face.
export { Client, getClient, reset, defaultWorkerCommand, isWorkerProcess, localApiCommand } from "./client";
export type { AttemptRecord, JobRecord, JobState, JobError, NewJob, JobFilter, DashboardRequest, DashboardResponse } from "./client";
export { dashboard } from "./dashboard";
export type { DashboardOptions } from "./dashboard";
export { configure, resolveConfig, optionSpecs, toCoreOptions } from "./config";
export type { Options, CoreOptions, QueueSettings } from "./config";
export { FlyJobsError } from "./errors";
export type { ErrorCode } from "./errors";
export { defineJob, JobHandle } from "./jobs";
export type { JobDefinition, JobOptions } from "./jobs";
export { jobFiles } from "./registry";
export type { JobContext, Handler } from "./registry";
export { Worker } from "./worker";
export type { WorkerOptions, RunOptions, Outcome } from "./worker";
export { setLogger, drainLogs } from "./logs";
export type { Logger } from "./logs";
export { toJson } from "./json";
export type { Json, JsonObject } from "./native";
