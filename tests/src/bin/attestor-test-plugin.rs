//! The plugin binary the Go host loads in `tests/tests/plugin.rs`: the real plugin server
//! with the test attestor (real tracker, selectors from the cgroup path).

fn main() {
    std::process::exit(attestor::plugin::run(
        attestor_tests::plugin_attestor::TestAttestor::start,
    ));
}
