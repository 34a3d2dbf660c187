//! The embedded default: with no Fly environment, an in-process Machines API emulator on a
//! loopback port whose machines are local processes, driven by the very same client, scaler and
//! worker code as production.

use std::sync::Arc;

use flyjobs_emulator::{Emulator, EmulatorHandle, EmulatorSettings};

use crate::config::Secret;
use crate::error::{Error, Result};
use crate::fork::EMBEDDED_IMAGE;
use crate::machines::{Machines, MachinesClient};

/// The app the embedded emulator hosts worker machines in.
pub const EMBEDDED_APP: &str = "flyjobs-local";

/// Emulator settings for the embedded default. `FLYJOBS_EMULATOR_LATENCY=none` turns Fly's
/// boot latencies off (tests); the default (`fly`) keeps them, so local runs feel like Fly.
pub fn settings_from_env() -> Result<EmulatorSettings> {
    let mut s = match std::env::var("FLYJOBS_EMULATOR_LATENCY").as_deref() {
        Ok("none" | "zero" | "0") => EmulatorSettings::for_tests(),
        Ok("fly") | Err(_) => EmulatorSettings::default(),
        Ok(other) => {
            return Err(Error::config(format!(
                "FLYJOBS_EMULATOR_LATENCY must be fly or none, got {other:?}"
            )));
        }
    };
    let dir =
        std::env::current_dir().map_err(|e| Error::config(format!("no current directory: {e}")))?;
    s.images.insert(
        EMBEDDED_IMAGE.to_string(),
        flyjobs_emulator::Image {
            dir,
            cmd: Vec::new(),
        },
    );
    Ok(s)
}

/// Start an emulator with `settings`, create the embedded app, and return a client for it.
pub async fn start(
    settings: EmulatorSettings,
) -> Result<(EmulatorHandle, Arc<dyn Machines>, String)> {
    let handle = Emulator::start(settings)
        .await
        .map_err(|e| Error::config(format!("could not start the embedded emulator: {e}")))?;
    handle.create_app(EMBEDDED_APP);
    // The emulator accepts any token unless configured otherwise; this one is local and
    // throwaway, and it is never handed to a machine.
    let token = format!("embedded-{:x}", rand::random::<u64>());
    let client = MachinesClient::builder()
        .base_url(handle.base_url().to_string())
        .token(Secret::new(token))
        .build()?;
    Ok((handle, Arc::new(client), EMBEDDED_APP.to_string()))
}
