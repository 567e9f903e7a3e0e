//! The outcome vocabulary shared by every surface (CLI, plugin, library):
//! a gRPC status code and a message, exactly as SPIRE's k8s attestor reports them.
//!
//! The code is gRPC's own ([`tonic::Code`], which the plugin surface sends as is); this
//! module adds only the one spelling our outputs print. Modules keep their own error
//! enums; this is where they meet the outside world.

use std::fmt;

pub use tonic::Code;

/// The code's name as our CLI JSON, logs and metrics label print it (`FailedPrecondition`).
/// gRPC's `CANCELLED` is printed `Canceled`, as Go's `codes.Canceled.String()` does (the
/// SPIRE agent logs that spelling), not as tonic's `Cancelled`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A failed operation as the outside world sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    /// [`code_name`] of this status's code.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }
}

/// SPIRE's give-up: every poll attempt got a pod list and none held the workload
/// (`k8s.go` `Plugin.Attest`: `DeadlineExceeded` "no selectors found after max poll
/// attempts"). The one place these words are written; the poll loop and the replay say it.
pub fn gave_up() -> Status {
    Status::new(Code::DeadlineExceeded, GAVE_UP)
}

const GAVE_UP: &str = "no selectors found after max poll attempts";

/// The caller went away (`Canceled` "attestation canceled"): the one place these words are
/// written.
pub fn cancelled() -> Status {
    Status::new(Code::Cancelled, "attestation canceled")
}

impl Status {
    /// Whether this is [`gave_up`].
    pub fn is_gave_up(&self) -> bool {
        self.code == Code::DeadlineExceeded && self.message == GAVE_UP
    }
}

impl From<Status> for tonic::Status {
    fn from(s: Status) -> Self {
        tonic::Status::new(s.code, s.message)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_name(), self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_gos_spelling() {
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(
            Status::new(Code::FailedPrecondition, "x").to_string(),
            "FailedPrecondition: x"
        );
        // Every code's name is its Debug name except Go's one-L Canceled and OK.
        for n in 0..=16 {
            let code = Code::from_i32(n);
            if !matches!(code, Code::Cancelled | Code::Ok) {
                assert_eq!(code_name(code), format!("{code:?}"));
            }
        }
    }
}
