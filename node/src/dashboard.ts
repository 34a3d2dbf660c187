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
import { native } from "./native";

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
  // One byte past the limit at most, so that the core sees an oversized body and answers 413.
  const limit = native.DASHBOARD_MAX_BODY + 1;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    chunks.push(chunk as Buffer);
    size += (chunk as Buffer).length;
    if (size >= limit) break;
  }
  // The full path (Express keeps it in originalUrl): the core takes off the mount.
  const url = new URL(req.originalUrl ?? req.url ?? "/", "http://dashboard.invalid");
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  const client = options.client ?? (await getClient());
  const answer = await client.dashboard({
    method: req.method ?? "GET",
    path: url.pathname,
    mount: options.mount ?? req.baseUrl ?? "",
    query: url.search.replace(/^\?/, ""),
    headers,
    body: Buffer.concat(chunks).subarray(0, limit).toString("utf8"),
    readOnly: options.readOnly ?? false,
  });
  for (const [name, value] of answer.headers) res.appendHeader(name, value);
  res.statusCode = answer.status;
  res.end(answer.body);
}
