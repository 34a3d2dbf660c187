//! The Machines client never puts its token into an error or a log, even when the API echoes
//! the request back (a 401 quoting the Authorization header, a 500 quoting the body).

use std::sync::Arc;

use flyjobs::config::Secret;
use flyjobs::machines::transport::{HttpResponse, MockSender};
use flyjobs::machines::{Machines, MachinesClient, RetryConfig};
use serde_json::json;

const TOKEN: &str = "FlyV1 fm2_lJPECAAAAAAAA5i+xBBc/secret-part-one,fm2_lJPEtwo/secret-part-two";

fn client(mock: &MockSender) -> MachinesClient {
    MachinesClient::builder()
        .base_url("http://127.0.0.1:1")
        .token(Secret::new(TOKEN))
        .retry(RetryConfig::none())
        .transport(Arc::new(mock.clone()))
        .build()
        .unwrap()
}

fn assert_clean(text: &str) {
    for secret in [
        "secret-part-one",
        "secret-part-two",
        "lJPECAAAAAAAA5i",
        "lJPEtwo",
    ] {
        assert!(!text.contains(secret), "secret {secret:?} in {text:?}");
    }
}

#[tokio::test]
async fn echoed_tokens_are_redacted_from_errors() {
    let echoes = vec![
        // A 401 quoting the header as sent.
        HttpResponse::json(
            401,
            &json!({"error": format!("unauthorized: Authorization: {TOKEN} is not valid")}),
        ),
        // A 500 with a plain-text body quoting one macaroon part, JSON-escaped slashes.
        HttpResponse {
            status: 500,
            headers: Default::default(),
            body: "internal error handling token fm2_lJPEtwo\\/secret-part-two"
                .to_string()
                .into(),
        },
        // A 422 with the bare token (no scheme) in `message`.
        HttpResponse::json(
            422,
            &json!({"message": format!("bad token {}", TOKEN.trim_start_matches("FlyV1 "))}),
        ),
    ];
    for answer in echoes {
        let mock = MockSender::sequence(vec![Ok(answer)]);
        let err = client(&mock)
            .get_machine("app", "0123456789abcd")
            .await
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert_clean(&shown);
        assert!(shown.contains("[REDACTED]"), "{shown}");
        // The error chain too (anyhow's `{:#}` prints every source).
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert_clean(&s.to_string());
            source = s.source();
        }
    }
}

#[tokio::test]
async fn a_token_echoed_in_an_undecodable_answer_is_not_quoted() {
    // A 200 whose body does not match the type: serde would quote the offending value.
    let mock = MockSender::sequence(vec![Ok(HttpResponse::json(
        200,
        &json!({"id": 42, "state": TOKEN}),
    ))]);
    let err = client(&mock)
        .get_machine("app", "0123456789abcd")
        .await
        .unwrap_err();
    assert_clean(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn logs_are_redacted() {
    let mock = MockSender::sequence(vec![Ok(HttpResponse {
        status: 200,
        headers: Default::default(),
        body: format!("booting with FLY_API_TOKEN={TOKEN}\n").into(),
    })]);
    let logs = client(&mock)
        .machine_logs("app", "0123456789abcd")
        .await
        .unwrap()
        .unwrap();
    assert_clean(&logs);
    assert!(
        logs.contains("booting with FLY_API_TOKEN=[REDACTED]"),
        "{logs}"
    );
}
