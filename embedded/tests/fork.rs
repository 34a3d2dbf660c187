//! A worker's machine config derived from a parent machine running in the emulator, as on Fly:
//! the parent's image, config env, guest and region are kept; services, checks, mounts and the
//! process env (the API token above all) are not.

use std::collections::BTreeMap;

use flyjobs::config::{QueueSettings, Secret};
use flyjobs::machines::types::{CreateMachineRequest, MachineConfig};
use flyjobs::machines::{Machines, MachinesClient};
use flyjobs::{Config, fork};
use flyjobs_emulator::{Emulator, EmulatorSettings};

const CANARY: &str = "fm2_canary-5a1d";

#[tokio::test]
async fn worker_config_keeps_image_env_region_and_drops_traffic_and_secrets() {
    let emu = Emulator::start(EmulatorSettings::for_tests().app("shop"))
        .await
        .unwrap();
    let api = MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new(format!("FlyV1 {CANARY}")))
        .build()
        .unwrap();
    // The parent: a web machine as `fly deploy` makes it.
    let parent_config: MachineConfig = serde_json::from_value(serde_json::json!({
        "image": "registry.fly.io/shop:deployment-01",
        "env": {"RAILS_ENV": "production", "PRIMARY_REGION": "ord"},
        "init": {"cmd": ["sleep", "30"]},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
        "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "timeout": "2s"}},
        "mounts": [{"volume": "vol_123", "path": "/data"}],
        "metadata": {"fly_process_group": "app", "fly_release_version": "7"},
        "restart": {"policy": "always"}
    }))
    .unwrap();
    let parent = api
        .create_machine(
            "shop",
            &CreateMachineRequest {
                config: parent_config,
                region: Some("ord".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let config = Config::builder()
        .api_token(format!("FlyV1 {CANARY}"))
        .app_name("shop")
        .machine_id(parent.id.clone())
        .image_ref("registry.fly.io/shop:deployment-01")
        .env_allowlist(vec!["PATH".to_string()])
        .lookup(|_| None)
        .build()
        .unwrap();
    let command = vec!["bin/fly-machine-worker".to_string()];
    let template = fork::template(&config, &api, &command, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(template.region.as_deref(), Some("ord"));
    assert_eq!(template.release, "registry.fly.io/shop:deployment-01");

    let settings = QueueSettings {
        concurrency: 3,
        ..QueueSettings::default()
    };
    let c = template.worker_config("mail", &settings);
    assert_eq!(
        c.image.as_deref(),
        Some("registry.fly.io/shop:deployment-01")
    );
    let env = c.env.clone().unwrap();
    assert_eq!(env.get("RAILS_ENV").map(String::as_str), Some("production"));
    assert_eq!(
        env.get("PATH"),
        std::env::var("PATH").ok().as_ref(),
        "allowlisted process env var"
    );
    assert!(
        env.keys()
            .all(|k| ["RAILS_ENV", "PRIMARY_REGION", "PATH"].contains(&k.as_str())),
        "{env:?}"
    );
    assert!(
        c.services.is_none() && c.checks.is_none() && c.mounts.is_none(),
        "{c:?}"
    );
    assert_eq!(
        c.init.as_ref().unwrap().cmd.as_deref().unwrap(),
        [
            "bin/fly-machine-worker",
            "--queues",
            "mail",
            "--concurrency",
            "3",
            "--wait",
            "600",
            "--pool",
            "none"
        ]
    );
    assert_eq!(c.restart.as_ref().unwrap().policy.as_deref(), Some("no"));
    assert_eq!(c.auto_destroy, Some(true));
    let md = c.metadata.clone().unwrap();
    assert_eq!(md.get("flyjobs_role").map(String::as_str), Some("worker"));
    assert_eq!(md.get("flyjobs_queue").map(String::as_str), Some("mail"));
    assert!(
        !md.contains_key("fly_process_group"),
        "the parent's process group is not the worker's"
    );
    let guest = c.guest.as_ref().unwrap();
    assert_eq!((guest.cpus, guest.memory_mb), (Some(1), Some(256)));

    // Nothing of the token anywhere in what would be sent.
    let request = CreateMachineRequest {
        config: c,
        region: template.region.clone(),
        ..Default::default()
    };
    let wire = serde_json::to_string(&request).unwrap();
    assert!(
        !wire.contains("canary"),
        "token in the create request: {wire}"
    );
    assert!(!wire.contains("FLY_API_TOKEN"));
    emu.shutdown().await;
}

#[tokio::test]
async fn off_fly_the_template_uses_the_embedded_image_and_adds_only_what_is_asked() {
    let emu = Emulator::start(EmulatorSettings::for_tests())
        .await
        .unwrap();
    let api = MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new("t"))
        .build()
        .unwrap();
    let config = Config::builder()
        .api_token("secret-token-x")
        .lookup(|_| None)
        .build()
        .unwrap();
    let extra = BTreeMap::from([(
        "FLYJOBS_DATABASE_URL".to_string(),
        "sqlite:///tmp/q.db".to_string(),
    )]);
    let t = fork::template(&config, &api, &["flyjobs".into(), "worker".into()], extra)
        .await
        .unwrap();
    assert_eq!(t.release, fork::EMBEDDED_IMAGE);
    assert_eq!(
        t.config.env.clone().unwrap(),
        BTreeMap::from([(
            "FLYJOBS_DATABASE_URL".to_string(),
            "sqlite:///tmp/q.db".to_string()
        )])
    );
    assert!(
        !serde_json::to_string(&t.config)
            .unwrap()
            .contains("secret-token-x")
    );
    emu.shutdown().await;
}
