//! napi-rs build set-up (link flags for a Node addon).
fn main() {
    napi_build::setup();
}
