// The Node job of the cross-language test (worker machines or a hand-run flyjobs-worker load
// this file: `flyjobs-worker --require poly_node.js --queues poly-node`), and its tool:
//   node poly_node.js enqueue TOKEN | admin
// admin prints one JSON line: the jobs and stats this language's client sees.
const fs = require("node:fs");
const flyjobs = require("flyjobs");

exports.record = flyjobs.defineJob("poly-node", async (args) => {
  fs.appendFileSync("out.jsonl", JSON.stringify({ lang: "node", token: args.token, pid: process.pid, worker: process.env.FLYJOBS_WORKER ?? null }) + "\n");
}, { queue: "poly-node" });

if (require.main === module) {
  (async () => {
    flyjobs.configure({ scaler: false }); // a tool: FLYJOBS_DATABASE_URL, no scaler
    const client = await flyjobs.getClient();
    try {
      if (process.argv[2] === "enqueue") {
        const handle = await exports.record.enqueue({ token: process.argv[3] });
        console.log(JSON.stringify({ id: handle.id }));
      } else if (process.argv[2] === "admin") {
        console.log(JSON.stringify({ jobs: await client.jobs({ limit: 1000 }), stats: await client.stats() }));
      }
    } finally {
      await flyjobs.reset();
    }
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
