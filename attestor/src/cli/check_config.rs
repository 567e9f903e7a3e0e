//! `attestor check-config FILE`: validates a plugin_data file the way the plugin's
//! `Configure`/`Validate` would, without touching the kubelet or any referenced file.
//!
//! Prints `ok` on success; otherwise every problem, the first being the one SPIRE reports.

use std::path::Path;

use super::Failure;
use crate::config::Config;
use crate::status::{Code, Status};

pub(super) fn run(file: &Path) -> Result<(), Failure> {
    let text = super::input::CHECK_CONFIG
        .read_text(file)
        .map_err(Failure::text)?;
    match Config::parse(&text) {
        Ok(_) => {
            println!("ok");
            Ok(())
        }
        Err(errors) => {
            let mut all = errors
                .0
                .iter()
                .map(|e| Status::new(Code::InvalidArgument, e.to_string()));
            let first = all.next().unwrap_or_else(|| Status::from(errors.clone()));
            let mut failure = Failure::text(first);
            failure.notes = all.collect();
            Err(failure)
        }
    }
}
