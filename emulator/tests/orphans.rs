//! No orphans: machine processes die with the emulator, even when it is SIGKILLed.
//!
//! The test re-executes this test binary as a helper process that runs an emulator with one
//! `sleep 300` machine, SIGKILLs the helper, and checks that the sleep is gone.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const HELPER_ENV: &str = "FLYJOBS_EMULATOR_ORPHAN_HELPER";

/// Not a test of its own: only does something when started by the test below.
#[test]
fn orphan_helper() {
    if std::env::var(HELPER_ENV).is_err() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (emu, api) = test_emulator().await;
        // `sleep 300` runs directly; the shell's `sleep 301` is a grandchild of the emulator.
        let m = api
            .create(json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}}))
            .await;
        let m2 = api.create(sh("sleep 301; true")).await;
        let id2 = m2["id"].as_str().unwrap();
        api.reach(id2, "started").await;
        let group = std::collections::HashSet::from([pid_of(&emu, id2).unwrap()]);
        assert!(
            eventually(Duration::from_secs(10), || processes_in_groups(&group)
                .len()
                == 2)
            .await
        );
        println!("MACHINE_GROUP {}", pid_of(&emu, id2).unwrap());
        let id = m["id"].as_str().unwrap();
        api.reach(id, "started").await;
        println!("MACHINE_PID {}", pid_of(&emu, id).unwrap());
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

#[tokio::test]
async fn machines_die_when_the_emulator_is_sigkilled() {
    let exe = std::env::current_exe().unwrap();
    let mut helper = Command::new(exe)
        .args([
            "orphan_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut group = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line
                .split_whitespace()
                .skip_while(|w| !w.starts_with("MACHINE_"));
            match (
                words.next(),
                words.next().and_then(|p| p.parse::<i32>().ok()),
            ) {
                (Some("MACHINE_GROUP"), Some(g)) => group = Some(g),
                (Some("MACHINE_PID"), Some(p)) => {
                    let _ = tx.send((p, group.expect("group line first")));
                    return;
                }
                _ => {}
            }
        }
    });
    let (pid, group) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("helper reports its machines");
    assert!(alive(pid), "machine runs");
    let group = std::collections::HashSet::from([group]);
    assert_eq!(processes_in_groups(&group).len(), 2, "shell and its sleep");
    helper.kill().unwrap(); // SIGKILL: no destructor, no shutdown runs in the helper
    helper.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)).await,
        "machine {pid} outlived the emulator"
    );
    // The grandchild too (the watchdog's work: PDEATHSIG reaches only direct children).
    assert!(
        eventually(Duration::from_secs(10), || processes_in_groups(&group)
            .is_empty())
        .await,
        "left behind: {:?}",
        processes_in_groups(&group)
    );
}
