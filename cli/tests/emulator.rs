//! `flyjobs emulator` as a user runs it: its flags and FLYJOBS_EMULATOR_* variables reach the
//! emulator (tokens, capacity, an image's default command), and the token is never printed.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flyjobs");

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn http(port: u16, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn help_lists_the_fault_capacity_and_token_flags() {
    let out = Command::new(BIN)
        .args(["emulator", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--tokens-file",
        "--capacity",
        "--rate-limits",
        "--fault-429",
        "--fault-5xx",
        "--fault-capacity",
        "--fault-delay",
        "--fault-delay-for",
        "--fault-drop-create",
        "--create-latency",
        "--start-latency",
        "--resume-latency",
        "--image",
        "FLYJOBS_EMULATOR_TOKENS",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn tokens_capacity_and_image_command_from_flags_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "very-secret-token";
    let mut child = Command::new(BIN)
        .args([
            "emulator",
            "--port",
            "0",
            "--latency",
            "none",
            "--app",
            "demo",
            "--capacity",
            "1:256",
            "--image",
            &format!(
                "img={}:sh -c 'echo from-cmd > marker; sleep 60'",
                dir.path().display()
            ),
        ])
        .env("FLYJOBS_EMULATOR_TOKENS", format!("{secret}@demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no URL in {line:?}"));

    let (status, _) = http(port, "GET", "/v1/apps/demo/machines", "another-token", None);
    assert_eq!(status, 401);
    let (status, body) = http(port, "GET", "/v1/apps/demo/machines", secret, None);
    assert_eq!(status, 200, "{body}");

    // An image-only create runs the image's command in the image's directory.
    let create = Some(r#"{"config": {"image": "img"}}"#);
    let (status, body) = http(port, "POST", "/v1/apps/demo/machines", secret, create);
    assert_eq!(status, 200, "{body}");
    let marker = dir.path().join("marker");
    let t0 = Instant::now();
    while !marker.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "from-cmd\n");
    // The started machine fills the 1-CPU region.
    let (status, body) = http(port, "POST", "/v1/apps/demo/machines", secret, create);
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("insufficient_capacity"), "{body}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    for out in [&line, &rest, &err] {
        assert!(!out.contains(secret), "the token was printed: {out}");
    }
}
