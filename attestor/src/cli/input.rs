//! The files the subcommands read: `--cgroup-file`, `--pods-file`, `--config` and
//! `check-config FILE`. Each is bounded by its kind's cap ([`crate::boundedfile`]) and must be
//! a regular file, or `-` for stdin (bounded too; a file named `-` is `./-`). Errors name the
//! input, the file, what is wrong and what to give instead.

use std::path::Path;

use crate::boundedfile::{self, Kind};
use crate::status::{Code, Status};

/// One kind of input file of the command line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Input {
    /// How the command line names it: the flag, or the subcommand for a positional FILE.
    label: &'static str,
    kind: Kind,
    /// What to give instead, ending the error message.
    hint: &'static str,
}

pub(super) const CGROUP_FILE: Input = Input {
    label: "--cgroup-file",
    kind: boundedfile::CGROUP_FILE,
    hint: "give a copy of the workload's /proc/<pid>/cgroup",
};

pub(super) const PODS_FILE: Input = Input {
    label: "--pods-file",
    kind: boundedfile::POD_LIST,
    hint: "give a file with the kubelet's /pods JSON",
};

pub(super) const CONFIG: Input = Input {
    label: "--config",
    kind: boundedfile::PLUGIN_DATA,
    hint: "give a plugin_data file (HCL, or JSON)",
};

pub(super) const CHECK_CONFIG: Input = Input {
    label: "check-config",
    kind: boundedfile::PLUGIN_DATA,
    hint: "give a plugin_data file (HCL, or JSON)",
};

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Input {
    /// The file's bytes; `-` reads stdin.
    pub(super) fn read(&self, path: &Path) -> Result<Vec<u8>, Status> {
        let read = if is_stdin(path) {
            boundedfile::read_stream(std::io::stdin().lock(), self.kind)
        } else {
            boundedfile::read(path, self.kind)
        };
        read.map_err(|e| self.error(path, &e))
    }

    /// The file as UTF-8 text; `-` reads stdin.
    pub(super) fn read_text(&self, path: &Path) -> Result<String, Status> {
        String::from_utf8(self.read(path)?).map_err(|_| self.error(path, &"is not UTF-8 text"))
    }

    fn error(&self, path: &Path, problem: &dyn std::fmt::Display) -> Status {
        let file = if is_stdin(path) {
            "- (stdin)".to_owned()
        } else {
            path.display().to_string()
        };
        Status::new(
            Code::InvalidArgument,
            format!("{} {file}: {problem}; {}", self.label, self.hint),
        )
    }
}

/// Stdin can be read once: refuses `-` for more than one input.
pub(super) fn at_most_one_stdin(inputs: &[(Input, Option<&Path>)]) -> Result<(), Status> {
    let from_stdin: Vec<&str> = inputs
        .iter()
        .filter(|(_, path)| path.is_some_and(is_stdin))
        .map(|(input, _)| input.label)
        .collect();
    if from_stdin.len() > 1 {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "only one input can read stdin (`-`), not {}; give the others as files",
                from_stdin.join(" and ")
            ),
        ));
    }
    Ok(())
}
