//! The POST actions: each calls one admin call of the client and redirects back (303), or
//! answers with an error page naming what went wrong.

use std::collections::BTreeMap;

use flyjobs::ErrorKind;
use flyjobs::job::{JobId, JobState};
use flyjobs::store::JobFilter;

use crate::pages::{self, PageError};
use crate::{Dashboard, Request, Response, security};

/// Most jobs one "retry all" / "discard all" touches (the rest stay for another click).
const BULK_LIMIT: usize = 10_000;

pub(crate) async fn post(
    dash: &Dashboard,
    req: &Request,
    form: &BTreeMap<String, String>,
) -> Response {
    let client = &dash.client;
    let path = req.path.trim_end_matches('/');
    let result: Result<String, PageError> = async {
        if let Some(rest) = path.strip_prefix("/jobs/") {
            let (id, action) = rest
                .split_once('/')
                .ok_or_else(|| PageError::not_found(format!("no action at {path:?}")))?;
            let id: i64 = id
                .parse()
                .map_err(|_| PageError::not_found(format!("{id:?} is not a job id")))?;
            let id = JobId(id);
            match action {
                "retry" => client.retry(id).await.map(drop),
                "discard" => client.discard(id).await.map(drop),
                "cancel" => client.cancel(id).await.map(drop),
                "run_now" => client.run_now(id).await.map(drop),
                other => return Err(PageError::not_found(format!("no job action {other:?}"))),
            }
            .map_err(PageError::from)?;
            return Ok(format!("{}/jobs/{}", req.mount, id.0));
        }
        match path {
            "/dead/retry_all" | "/dead/discard_all" => {
                let queue = form.get("queue").filter(|q| !q.is_empty()).cloned();
                let retry = path.ends_with("retry_all");
                bulk(client, queue, retry).await?;
                Ok(format!("{}/dead", req.mount))
            }
            "/boot_failures/reset" => {
                let queue = form
                    .get("queue")
                    .map(String::as_str)
                    .filter(|q| !q.is_empty());
                client
                    .reset_boot_failures(queue)
                    .await
                    .map_err(PageError::from)?;
                Ok(format!("{}/boot_failures", req.mount))
            }
            _ => Err(PageError::not_found(format!("no action at {path:?}"))),
        }
    }
    .await;
    match result {
        Ok(fallback) => Response::redirect(security::return_to(req, form, fallback)),
        Err(e) => {
            let ctx = pages::Ctx {
                mount: &req.mount,
                csrf: "",
                read_only: true,
            };
            Response::html(e.status, pages::error_page(&ctx, &e))
        }
    }
}

/// Retry or discard every dead job (of one queue, or all). Jobs that changed state meanwhile
/// (retried elsewhere) are skipped, not errors.
async fn bulk(
    client: &flyjobs::Client,
    queue: Option<String>,
    retry: bool,
) -> Result<(), PageError> {
    let mut done = 0;
    let mut after = None;
    while done < BULK_LIMIT {
        let page = client
            .jobs(JobFilter {
                state: Some(JobState::Dead),
                queue: queue.clone(),
                after_id: after,
                limit: 500,
                ..Default::default()
            })
            .await
            .map_err(PageError::from)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for job in &page {
            let r = if retry {
                client.retry(job.id).await.map(drop)
            } else {
                client.discard(job.id).await.map(drop)
            };
            match r {
                Ok(()) => done += 1,
                Err(e) if e.kind() == ErrorKind::Conflict => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
