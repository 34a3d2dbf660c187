//! Machines API figures on the emulator, in one run:
//! - the client's overhead per call: 1,000 `get_machine` calls against 1,000 bare reqwest GETs
//!   of the same URL (body parsed into `serde_json::Value`, and into the typed `Machine`),
//!   interleaved in rounds of 100 so load from other processes hits all three alike;
//! - create → started → exit (`destroyed`, with `auto_destroy`) of a machine running `true`
//!   on the emulator with zero latency, over 50 machines: p50 / p95.
//!
//! `cargo run --release -p flyjobs-bench --bin machines-bench`

use std::time::{Duration, Instant};

use flyjobs::config::Secret;
use flyjobs::machines::types::{CreateMachineRequest, Machine, MachineState, WaitQuery};
use flyjobs::machines::{Machines, MachinesClient};
use flyjobs_emulator::{Emulator, EmulatorSettings};

const APP: &str = "bench";
const TOKEN: &str = "bench-token";

fn machine(argv: &[&str], auto_destroy: bool) -> CreateMachineRequest {
    serde_json::from_value(serde_json::json!({
        "config": {"image": "local", "init": {"exec": argv}, "auto_destroy": auto_destroy,
                   "restart": {"policy": "no"}}
    }))
    .expect("a valid request")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    flyjobs::machines::transport::install_crypto_provider();
    let emu = Emulator::start(EmulatorSettings::for_tests().app(APP))
        .await
        .expect("emulator");
    let c = MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new(TOKEN))
        .build()
        .expect("client");

    // Overhead per call.
    const ROUNDS: u32 = 10;
    const PER_ROUND: u32 = 100;
    let m = c
        .create_machine(APP, &machine(&["sleep", "120"], false))
        .await
        .expect("create");
    let raw = reqwest::Client::new();
    let url = format!("{}/v1/apps/{APP}/machines/{}", emu.base_url(), m.id);
    let fetch = || async {
        raw.get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
    };
    for _ in 0..50 {
        c.get_machine(APP, &m.id).await.expect("warm-up");
        fetch().await;
    }
    let (mut client_t, mut value_t, mut typed_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            c.get_machine(APP, &m.id).await.expect("get");
        }
        client_t += t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let _: serde_json::Value = serde_json::from_slice(&fetch().await).expect("json");
        }
        value_t += t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let _: Machine = serde_json::from_slice(&fetch().await).expect("machine");
        }
        typed_t += t.elapsed();
    }
    let n = f64::from(ROUNDS * PER_ROUND);
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
    println!("get_machine x{n}: µs per call");
    println!("  flyjobs client          {:8.1}", us(client_t));
    println!("  bare reqwest + Value    {:8.1}", us(value_t));
    println!("  bare reqwest + Machine  {:8.1}", us(typed_t));
    println!(
        "  client / bare+Value     {:8.2}x",
        client_t.as_secs_f64() / value_t.as_secs_f64()
    );
    c.destroy_machine(APP, &m.id, true, None)
        .await
        .expect("destroy");

    // Create → started → exit, zero latency.
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let m = c
            .create_machine(APP, &machine(&["true"], true))
            .await
            .expect("create");
        let q = WaitQuery {
            states: vec![MachineState::Destroyed],
            timeout: Some(Duration::from_secs(30)),
            ..WaitQuery::default()
        };
        c.wait_machine(APP, &m.id, &q)
            .await
            .expect("wait destroyed");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!("create → started → exit → destroyed (zero latency, 50 machines running `true`): ms");
    println!(
        "  p50 {:.1}   p95 {:.1}   max {:.1}",
        p(0.5),
        p(0.95),
        p(1.0)
    );
    emu.shutdown().await;
}
