// The web dashboard as a Node request handler, for `http.createServer`, Express, Connect or
// Fastify's middie, behind the app's own auth (as with Sidekiq::Web in Rails):
//
//   app.use("/flyjobs", requireAdmin, dashboard());           // Express
//   http.createServer(dashboard({ mount: "/" }));             // a server of its own
//
// The pages are rendered by the core (the same dashboard as `flyjobs dashboard` and Rails'
// FlyJobs::Dashboard); this handler only hands the request over as plain data and writes the
// answer back. Changes are POSTs carrying the dashboard's own CSRF token (a SameSite=Strict
// cookie scoped to the mount path).
import type { IncomingMessage, ServerResponse } from "node:http";
import { Client, getClient } from "./client";

/** The request headers the dashboard reads. */
const HEADERS = ["cookie", "content-type", "host", "origin", "sec-fetch-site"];
/** Largest body read (the dashboard's forms are a few hundred bytes). */
const MAX_BODY = 64 * 1024;

export interface DashboardOptions {
  /** The client to show (default: the process-wide one, `getClient()`). */
  client?: Client;
  /** Show no actions and refuse every change. */
  readOnly?: boolean;
  /**
   * Where the dashboard is mounted. Default: Express's `req.baseUrl` when mounted with
   * `app.use(path, …)`, else "" (the dashboard is the whole server).
   */
  mount?: string;
}

type Request = IncomingMessage & { baseUrl?: string; originalUrl?: string };

/** A `(req, res)` handler serving the dashboard. */
export function dashboard(options: DashboardOptions = {}): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    serve(req as Request, res, options).catch((e: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      }
      res.end(`flyjobs dashboard: ${e instanceof Error ? e.message : String(e)}\n`);
    });
  };
}

async function serve(req: Request, res: ServerResponse, options: DashboardOptions): Promise<void> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) break;
    chunks.push(chunk as Buffer);
  }
  const url = new URL(req.url ?? "/", "http://dashboard.invalid");
  let mount = (options.mount ?? req.baseUrl ?? "").replace(/\/$/, "");
  let path = url.pathname;
  // Without a framework stripping it, the mount is still on the path.
  if (mount && path.startsWith(mount + "/")) path = path.slice(mount.length);
  else if (mount && path === mount) path = "/";
  if (mount === "/") mount = "";
  const headers: Record<string, string> = {};
  for (const name of HEADERS) {
    const v = req.headers[name];
    if (typeof v === "string") headers[name] = v;
  }
  const client = options.client ?? (await getClient());
  const answer = await client.dashboard({
    method: req.method ?? "GET",
    path,
    mount,
    query: url.search.replace(/^\?/, ""),
    headers,
    body: Buffer.concat(chunks).toString("utf8"),
    readOnly: options.readOnly ?? false,
  });
  for (const [name, value] of answer.headers) res.appendHeader(name, value);
  res.statusCode = answer.status;
  res.end(answer.body);
}
