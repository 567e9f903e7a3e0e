//! Shared by the attestor crate's integration tests (the `attestor-tests` crate has its own
//! `require_root`; these tests need `CARGO_BIN_EXE_attestor`, so they live here).

/// Kernel-facing tests need root: in CI not being root is a failure, elsewhere a skip.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root && std::env::var_os("CI").is_some() {
        panic!("this test needs root; CI runs as root");
    }
    root
}
