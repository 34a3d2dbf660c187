//! The `flyjobs` command.
fn main() {}
