//! The `attestor` binary: glue around the library (see `cli`).

fn main() {
    std::process::exit(attestor::cli::main());
}
