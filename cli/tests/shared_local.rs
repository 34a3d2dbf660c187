//! The app's local Machines API is one daemon shared by all of its processes (issue 16): every
//! client of one queue uses the same API, machines outlive any one client, and when the last
//! client leaves the daemon stops its machines with SIGTERM and a grace, then exits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flyjobs::machines::types::*;
use flyjobs::{Client, Config};

const BIN: &str = env!("CARGO_BIN_EXE_flyjobs");

async fn client(db: &str) -> Client {
    let config = Config::builder()
        .database_url(db.to_string())
        .lookup(|_| None)
        .build()
        .unwrap();
    flyjobs_embedded::shared_builder(config, vec![BIN.into(), "local-api".into()])
        .open()
        .await
        .unwrap()
}

fn machine(marker: &std::path::Path) -> CreateMachineRequest {
    // A worker stand-in that says whether it got a graceful stop.
    let script = format!(
        "trap 'echo graceful > {m}; exit 0' TERM; while true; do sleep 0.1; done",
        m = marker.display()
    );
    CreateMachineRequest {
        config: MachineConfig {
            image: Some(flyjobs::fork::EMBEDDED_IMAGE.into()),
            init: Some(MachineInit {
                exec: Some(vec!["sh".into(), "-c".into(), script]),
                ..MachineInit::default()
            }),
            metadata: Some(BTreeMap::from([(
                "flyjobs_role".to_string(),
                "worker".to_string(),
            )])),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    }
}

async fn until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_api_per_app_outlives_its_processes_and_stops_machines_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let a = client(&db).await;
    let b = client(&db).await;
    let (api_a, app) = a.machines_api().await.unwrap();
    let (_api_b, _) = b.machines_api().await.unwrap();
    let url = a.local_api_url().await.unwrap();
    assert_eq!(
        b.local_api_url().await.unwrap(),
        url,
        "one API for both clients"
    );

    let marker = dir.path().join("stopped-gracefully");
    let m = api_a.create_machine(&app, &machine(&marker)).await.unwrap();
    until(
        "the machine to start",
        Duration::from_secs(30),
        async || {
            b.machines()
                .await
                .unwrap()
                .iter()
                .any(|x| x.id == m.id && x.state == "started")
        },
    )
    .await;

    // The client that created it leaves: the machine and the API stay for the other one.
    a.shutdown().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = b.machines().await.unwrap();
    assert!(
        seen.iter().any(|x| x.id == m.id && x.state == "started"),
        "{seen:?}"
    );
    assert!(!marker.exists());

    // A third process only looking (flyjobs status) finds the API without keeping it alive.
    let status = std::process::Command::new(BIN)
        .arg("status")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("FLYJOBS_DATABASE_URL", &db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&m.id) && text.contains("started"), "{text}");

    // The last one leaves: the daemon stops the machine with SIGTERM (graceful) and exits.
    b.shutdown().await;
    until("a graceful stop", Duration::from_secs(30), async || {
        marker.exists()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "graceful");
    until("the API to go away", Duration::from_secs(30), async || {
        reqwest_free_probe(&url).is_err()
    })
    .await;

    // A new process starts a new API.
    let c = client(&db).await;
    c.machines_api().await.unwrap();
    assert_ne!(c.local_api_url().await.unwrap(), url);
    c.shutdown().await;
}

/// Connect to the API's port: an error once nothing listens.
fn reqwest_free_probe(url: &str) -> std::io::Result<()> {
    let addr = url.trim_start_matches("http://");
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
        .map(drop)
}
