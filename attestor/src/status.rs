//! The outcome vocabulary shared by every surface (CLI, plugin, library):
//! a gRPC status code and a message, exactly as SPIRE's k8s attestor reports them.
//!
//! Modules keep their own error enums; this is where they meet the outside world.

use std::fmt;

/// gRPC status codes used by SPIRE's k8s attestor (names as gRPC prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    FailedPrecondition,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    /// The gRPC code name, e.g. `FailedPrecondition`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Canceled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::Unauthenticated => "Unauthenticated",
        }
    }

    /// The numeric gRPC code.
    pub fn number(self) -> i32 {
        match self {
            Code::Canceled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::FailedPrecondition => 9,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
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
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Status {}
