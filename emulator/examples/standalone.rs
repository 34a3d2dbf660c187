//! Runs the emulator until Ctrl-C: `cargo run -p flyjobs-emulator --example standalone -- 4280`.
//! Machines run in the current directory; any non-empty token is accepted; app `demo` exists.

#[tokio::main]
async fn main() -> Result<(), flyjobs_emulator::EmulatorError> {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok());
    flyjobs_emulator::run_standalone(
        flyjobs_emulator::EmulatorSettings::default().app("demo"),
        port,
    )
    .await
}
