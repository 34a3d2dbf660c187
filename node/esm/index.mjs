// The ESM entry point: the CommonJS build re-exported, so that `import` and `require` share one
// module state (one client, one job registry).
import flyjobs from "../dist/index.js";

export const {
  Client,
  getClient,
  reset,
  defaultWorkerCommand,
  isWorkerProcess,
  localApiCommand,
  configure,
  resolveConfig,
  optionSpecs,
  toCoreOptions,
  FlyJobsError,
  defineJob,
  JobHandle,
  jobFiles,
  Worker,
  setLogger,
  drainLogs,
  toJson,
  dashboard,
} = flyjobs;
export default flyjobs;
