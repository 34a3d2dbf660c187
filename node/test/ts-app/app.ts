// A small strict TypeScript app over the package's public types (checked with tsc --noEmit).
// The @ts-expect-error lines are misuses the types must reject.
import { Client, configure, defineJob, FlyJobsError, getClient, type JobRecord, type JobState } from "flyjobs";

configure({ databaseUrl: "sqlite://jobs.db", queues: { mail: { maxMachines: 2, wait: "forever", pool: "suspend" } } });

interface Welcome {
  userId: number;
  locale?: string;
}

export const sendWelcome = defineJob<Welcome>(
  "sendWelcome",
  async ({ userId, locale }, job) => {
    const attempt: number = job.attempts;
    if (job.stopping()) return;
    console.log(userId, locale ?? "en", attempt);
  },
  { queue: "mail", priority: 1, maxAttempts: 5 },
);

export async function main(): Promise<void> {
  const handle = await sendWelcome.enqueue({ userId: 42 });
  const id: number = handle.id;
  const state: JobState = await handle.status();
  await sendWelcome.enqueueAt(new Date(Date.now() + 60_000), { userId: 1 });
  await sendWelcome.enqueueIn(5_000, { userId: 2 });
  const many = await sendWelcome.enqueueMany([{ userId: 3 }, { userId: 4, locale: "fr" }]);
  const client: Client = await getClient();
  const job: JobRecord | null = await client.job(id);
  const dead: JobRecord[] = await client.jobs({ queue: "mail", state: "dead", limit: 10 });
  const cleared: number = await client.clear("mail");
  console.log(state, many.length, job?.maxAttempts, dead.length, cleared);
  try {
    await client.cancel(id);
  } catch (e) {
    if (e instanceof FlyJobsError) {
      const code: string = e.code;
      const retry: boolean = e.retryable;
      console.log(code, retry, e.status, e.requestId, e.jobId);
    }
  }
  const other = await Client.open({ databaseUrl: "sqlite://other.db", maxMachines: 3 });
  await other.close();

  // @ts-expect-error userId must be a number
  await sendWelcome.enqueue({ userId: "42" });
  // @ts-expect-error enqueueAt takes a Date
  await sendWelcome.enqueueAt("tomorrow", { userId: 1 });
  // @ts-expect-error not an option
  configure({ maxMachine: 3 });
  // @ts-expect-error the states are a closed set
  const wrong: JobState = "sleeping";
  console.log(wrong);
}
