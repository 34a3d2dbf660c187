//! The Machines client end to end against the emulator over real HTTP (and its Unix socket):
//! every endpoint, retries under injected 429/503/capacity faults, a lost create response,
//! a wait that times out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flyjobs::ErrorKind;
use flyjobs::config::Secret;
use flyjobs::machines::types::*;
use flyjobs::machines::{Machines, MachinesClient, RetryConfig};
use flyjobs_emulator::{Emulator, EmulatorHandle, EmulatorSettings, Faults};

const APP: &str = "e2e";
const TOKEN: &str = "fm2_e2e-token";

async fn emulator() -> EmulatorHandle {
    // Client traces show up in a failing test's output (RUST_LOG=flyjobs=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let settings = EmulatorSettings::for_tests().app(APP).token(TOKEN, &["*"]);
    Emulator::start(settings).await.expect("emulator starts")
}

fn client(emu: &EmulatorHandle) -> MachinesClient {
    MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new(format!("FlyV1 {TOKEN}")))
        .retry(RetryConfig {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            deadline: Duration::from_secs(20),
        })
        .request_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn sleeper(secs: u32) -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: Some("local".into()),
            init: Some(MachineInit {
                exec: Some(vec!["sh".into(), "-c".into(), format!("sleep {secs}")]),
                ..MachineInit::default()
            }),
            guest: Some(Guest::preset("shared-cpu-1x").unwrap()),
            restart: Some(RestartPolicy {
                policy: Some("no".into()),
                ..RestartPolicy::default()
            }),
            metadata: Some(BTreeMap::from([(
                "flyjobs_queue".to_string(),
                "mail".to_string(),
            )])),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    }
}

async fn wait_for(
    c: &MachinesClient,
    id: &str,
    state: MachineState,
    version: Option<&str>,
) -> WaitResponse {
    let q = WaitQuery {
        states: vec![state],
        timeout: Some(Duration::from_secs(10)),
        version: version.map(str::to_string),
        from_event_id: None,
    };
    c.wait_machine(APP, id, &q).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint() {
    let emu = emulator().await;
    let c = client(&emu);

    // Apps.
    let req = CreateAppRequest {
        name: "e2e-other".into(),
        org_slug: "personal".into(),
        ..Default::default()
    };
    let app = c.create_app(&req).await.unwrap();
    assert_eq!(app.name.as_deref(), Some("e2e-other"));
    let e = c.create_app(&req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(c.get_app(APP).await.unwrap().name.as_deref(), Some(APP));
    assert_eq!(
        c.get_app("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Create, wait, get, list with filters.
    let m = c.create_machine(APP, &sleeper(60)).await.unwrap();
    assert!(m.name.as_deref().unwrap().starts_with("flyjobs-"));
    let w = wait_for(&c, &m.id, MachineState::Started, None).await;
    assert_eq!(w.state, Some(MachineState::Started));
    let got = c.get_machine(APP, &m.id).await.unwrap();
    assert_eq!(got.state, Some(MachineState::Started));
    let cfg = got.config.clone().unwrap();
    assert_eq!(cfg.guest.as_ref().unwrap().memory_mb, Some(256));
    let q = ListMachinesQuery {
        states: vec![MachineState::Started],
        metadata: BTreeMap::from([("flyjobs_queue".into(), "mail".into())]),
        ..Default::default()
    };
    assert_eq!(c.list_machines(APP, &q).await.unwrap().len(), 1);
    let q = ListMachinesQuery {
        metadata: BTreeMap::from([("flyjobs_queue".into(), "other".into())]),
        summary: true,
        ..Default::default()
    };
    assert!(c.list_machines(APP, &q).await.unwrap().is_empty());
    let ev = c.machine_events(APP, &m.id, Some(10)).await.unwrap();
    assert!(
        ev.iter().any(|e| e.kind.as_deref() == Some("launch")),
        "{ev:?}"
    );

    // Leases guard mutations.
    let lease = c
        .acquire_lease(
            APP,
            &m.id,
            &CreateLeaseRequest {
                ttl: Some(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!lease.nonce.is_empty());
    let e = c
        .acquire_lease(APP, &m.id, &CreateLeaseRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let stop = StopRequest::default()
        .with_signal("SIGTERM")
        .with_timeout(Duration::from_secs(2));
    let e = c.stop_machine(APP, &m.id, &stop, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let refreshed = c
        .refresh_lease(APP, &m.id, &lease.nonce, Some(60))
        .await
        .unwrap();
    assert_eq!(refreshed.nonce, lease.nonce);
    assert_eq!(c.get_lease(APP, &m.id).await.unwrap().nonce, lease.nonce);
    let n = Some(lease.nonce.as_str());

    // Stop, start, suspend, resume, update under the lease.
    c.stop_machine(APP, &m.id, &stop, n).await.unwrap();
    let version = got.current_version().map(str::to_string);
    wait_for(&c, &m.id, MachineState::Stopped, version.as_deref()).await;
    let s = c.start_machine(APP, &m.id, n).await.unwrap();
    assert_eq!(s.previous_state, Some(MachineState::Stopped));
    wait_for(&c, &m.id, MachineState::Started, None).await;
    c.suspend_machine(APP, &m.id, n).await.unwrap();
    wait_for(&c, &m.id, MachineState::Suspended, None).await;
    let s = c.start_machine(APP, &m.id, n).await.unwrap();
    assert_eq!(s.previous_state, Some(MachineState::Suspended));
    wait_for(&c, &m.id, MachineState::Started, None).await;

    let mut new_cfg = cfg.clone();
    new_cfg.env = Some(BTreeMap::from([("A".into(), "1".into())]));
    let upd = UpdateMachineRequest {
        config: new_cfg,
        current_version: version.clone(),
        ..Default::default()
    };
    let updated = c.update_machine(APP, &m.id, &upd, n).await.unwrap();
    assert_ne!(
        updated.current_version(),
        version.as_deref(),
        "update makes a new version"
    );
    let e = c.update_machine(APP, &m.id, &upd, n).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "stale current_version: {e}");

    // Metadata.
    c.set_metadata(APP, &m.id, "role", "worker").await.unwrap();
    assert_eq!(
        c.get_metadata(APP, &m.id)
            .await
            .unwrap()
            .get("role")
            .map(String::as_str),
        Some("worker")
    );
    c.delete_metadata(APP, &m.id, "role").await.unwrap();
    assert!(
        !c.get_metadata(APP, &m.id)
            .await
            .unwrap()
            .contains_key("role")
    );

    // Release, destroy, see it destroyed.
    c.release_lease(APP, &m.id, &lease.nonce).await.unwrap();
    c.destroy_machine(APP, &m.id, true, None).await.unwrap();
    wait_for(&c, &m.id, MachineState::Destroyed, None).await;
    let all = c
        .list_machines(
            APP,
            &ListMachinesQuery {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        c.get_machine(APP, "0000000000dead")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_under_injected_faults_still_finish() {
    let emu = emulator().await;
    let c = client(&emu);
    emu.set_faults(Faults {
        rate_limited: 0.3,
        unavailable: 0.3,
        capacity: 0.3,
        ..Faults::default()
    });
    let mut ids = Vec::new();
    for _ in 0..5 {
        let m = c.create_machine(APP, &sleeper(60)).await.unwrap();
        ids.push(m.id);
    }
    for id in &ids {
        for _ in 0..4 {
            c.get_machine(APP, id).await.unwrap();
        }
        wait_for(&c, id, MachineState::Started, None).await;
        c.destroy_machine(APP, id, true, None).await.unwrap();
    }
    emu.set_faults(Faults::default());
    // 503 on create is ambiguous to the client, yet no create made a second machine.
    assert_eq!(emu.machines(APP).len(), 5);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_responses_yield_exactly_one_machine() {
    let emu = emulator().await;
    let c = client(&emu);
    emu.set_faults(Faults {
        drop_after_create: 2,
        ..Faults::default()
    });
    let m = c.create_machine(APP, &sleeper(60)).await.unwrap();
    let ms = emu.machines(APP);
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(ms[0].id, m.id);

    // A caller-chosen name works the same way.
    emu.set_faults(Faults {
        drop_after_create: 1,
        ..Faults::default()
    });
    let req = CreateMachineRequest {
        name: Some("named-worker".into()),
        ..sleeper(60)
    };
    let m2 = c.create_machine(APP, &req).await.unwrap();
    assert_eq!(m2.name.as_deref(), Some("named-worker"));
    assert_eq!(emu.machines(APP).len(), 2);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_is_a_timeout() {
    let emu = emulator().await;
    let c = client(&emu);
    let m = c.create_machine(APP, &sleeper(60)).await.unwrap();
    let w = wait_for(&c, &m.id, MachineState::Started, None).await;
    let q = WaitQuery {
        states: vec![MachineState::Stopped],
        timeout: Some(Duration::from_secs(1)),
        version: w.version.clone(),
        from_event_id: None,
    };
    let t = Instant::now();
    let e = c.wait_machine(APP, &m.id, &q).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(e.status(), Some(408));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no looping: {:?}",
        t.elapsed()
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_and_the_unix_socket_needs_no_token() {
    let emu = emulator().await;
    let bad = MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new("wrong-token"))
        .build()
        .unwrap();
    let e = bad.get_app(APP).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(!format!("{e} {e:?}").contains("wrong-token"));
    let none = MachinesClient::builder()
        .base_url(emu.base_url())
        .build()
        .unwrap();
    assert_eq!(none.get_app(APP).await.unwrap_err().kind(), ErrorKind::Auth);

    let m = client(&emu)
        .create_machine(APP, &sleeper(60))
        .await
        .unwrap();
    let sock = MachinesClient::builder()
        .base_url(format!("unix:{}", emu.socket_path().display()))
        .build()
        .unwrap();
    assert_eq!(sock.get_machine(APP, &m.id).await.unwrap().id, m.id);
    sock.destroy_machine(APP, &m.id, true, None).await.unwrap();
    emu.shutdown().await;
}
